"""Typed run configuration: dataclasses, YAML files (``yaml.safe_load`` only), dotted CLI overrides.

Configs are data. Nothing in a YAML file is ever executed; unknown keys and out-of-range values are refused
with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lakd.errors import LakdError, did_you_mean, short_repr


@dataclass
class ModelConfig:
    name: str = "resnet20"
    init_weights: str | None = None  # start from these weights (.pth/.th/.pt/.safetensors state_dict, read safely)
    init_key_map: Any = None  # rename their keys: a preset ("akamaster") or [[regex, replacement], ...]
    stages: list[str] | None = None  # torchvision:/timm: models: these module paths as stages instead of the preset
    # the constructor's own options, e.g. {drop_path_rate: 0.1} for a timm model (plain values; recorded in
    # checkpoints, which rebuild the model with them)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # init_weights are for another class count: the classifier keeps its fresh initialisation for this data's
    # classes, every other key still loads strictly
    new_head: bool = False


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    root: str | None = None  # None: $LAKD_DATA, then ~/.cache/lakd/data
    path: str | None = None  # imagefolder (or imagenet): folder with train/ and test/ (or val/)
    stream: bool = False  # imagefolder: decode from disk batch by batch instead of into RAM (imagenet always does)
    image_size: int | None = None  # streamed sets: crop side (default 224); in-memory imagefolder: resize to it
    workers: int | None = None  # streamed sets: decode threads (default min(8, cpu count))
    val_size: int | float = 5000  # validation images held out of train: a count, or a fraction in (0, 1)
    split_seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: bool = True
    # auto: CIFAR's pad-crop-flip for images up to 64 px, random-resized-crop + flip above (torchvision's recipes);
    # pad_crop | resized_crop force one (streamed sets always random-resized-crop from the files)
    augmentation: str = "auto"
    crop_padding: int = 4
    train_limit: int | None = None  # keep only this many training images (quick runs)
    test_limit: int | None = None  # keep only this many val/test images
    synthetic_size: int = 512
    synthetic_classes: int = 10
    mean: list[float] | None = None  # normalise with these channel means (0..1) instead of the dataset's ...
    std: list[float] | None = None  # ... and stds, e.g. the ImageNet ones that foreign weights were trained with


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [150.0, 180.0, 210.0])
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 30
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 where fast, else fp32) | bf16 | fp16 | fp32
    channels_last: str = "auto"  # auto | true | false
    label_smoothing: float = 0.0
    threads: int | None = None  # torch intra-op threads on CPU (None: torch default)
    malloc: str = "auto"  # auto (glibc: keep freed host memory for the next step; engine.host_memory) | system
    progress: bool = True
    eval_test: bool = True  # also evaluate on test every epoch (selection always uses val)
    # re-estimate the student's BatchNorm running statistics on this many training batches before each evaluation
    # (0: off); for models whose slow BatchNorm momentum leaves the statistics stale after a short run
    bn_recalibrate: int = 0
    # end every epoch after this many steps (None: a whole pass over the training set). For quick checks and speed
    # measurements on the whole training set: unlike data.train_limit it keeps the state a method sizes by the
    # training set (CRD's memory bank of every sample); the schedule and progress follow the shortened epochs
    max_steps_per_epoch: int | None = None
    tensorboard: bool = False  # also write TensorBoard event files to <out>/tb (needs the tensorboard package)

    def epoch_steps(self, full: int) -> int:
        """The steps an epoch takes when a whole pass over the training set is ``full`` steps."""
        return full if self.max_steps_per_epoch is None else min(full, self.max_steps_per_epoch)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DistillConfig:
    method: str = "lakd"
    # the teacher: a checkpoint written by lakd train (its meta names the architecture), or a model name
    # (zoo, torchvision:<name>, timm:<name>) whose weights come from teacher_weights (a foreign state_dict file)
    teacher: str | None = None
    teacher_weights: str | None = None
    teacher_key_map: Any = None  # rename the keys of teacher_weights: a preset ("akamaster") or [[regex, repl], ...]
    teacher_stages: list[str] | None = None  # a teacher named torchvision:/timm:: its stages instead of the preset
    # torch.compile the frozen teacher's forward and the method's loss arithmetic (never the student; lakd.compiling):
    # auto (where torch.compile can run and the run has 1,000+ steps to repay it) | true | false
    compile: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)  # the method's hyper-parameters (validated by the method)
    # A pair's published per-method settings, e.g. {dkd: {beta: 2.0}, reviewkd: {reviewkd_weight: 0.6}}: the
    # entry of the chosen method applies under `params` (which wins), so one pair config serves every method.
    per_method: dict[str, Any] = field(default_factory=dict)

    def resolved_params(self) -> dict[str, Any]:
        """The chosen method's parameter overrides: its ``per_method`` entry, then ``params`` on top."""
        entry = self.per_method.get(self.method) or {}
        if not isinstance(entry, dict):
            raise LakdError(f"config key 'distill.per_method.{self.method}' must be a mapping of parameters, "
                            f"got {short_repr(entry)}")
        return {**entry, **self.params}


@dataclass
class DistillRunConfig(RunConfig):
    """A distillation run: ``model`` is the student; ``distill`` picks the method and the teacher."""

    distill: DistillConfig = field(default_factory=DistillConfig)


# Upper bounds on sizes that allocate memory: a typo must be an error, not a 26 GiB allocation.
MAX_IMAGE_SIZE = 2048
MAX_SYNTHETIC = 1_000_000
MAX_SEED = 2**32 - 1  # what every random generator the run seeds (Python, NumPy, torch, the loader) accepts

CHOICES = {
    "optim.name": ("sgd",),
    "data.augmentation": ("auto", "pad_crop", "resized_crop"),
    "schedule.name": ("cosine", "step", "constant"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "train.channels_last": ("auto", "true", "false"),
    "train.malloc": ("auto", "system"),
    "distill.compile": ("auto", "true", "false"),
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert ``value`` to ``annotation`` (int, float, bool, str, optional, list[float])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # the first type that takes the value (int | float keeps 5000 an int, takes 0.1)
            try:
                return _coerce(value, arg, key)
            except LakdError:
                continue
        return _coerce(value, args[-1], key)
    if origin is dict:
        if not isinstance(value, dict):
            raise LakdError(f"config key '{key}': expected a mapping, got {short_repr(value)}")
        return value
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise LakdError(f"config key '{key}': expected a list, got {short_repr(value)}")
        return [_coerce(v, inner, key) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise LakdError(f"config key '{key}': expected true/false, got {short_repr(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise LakdError(f"config key '{key}': expected an integer, got {short_repr(value)}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise LakdError(f"config key '{key}': expected a number, got {short_repr(value)}")
    if annotation is str:
        if isinstance(value, bool):  # YAML turns true/false into bools; keep them as the words
            return str(value).lower()
        if isinstance(value, str | int | float):
            return str(value)
        raise LakdError(f"config key '{key}': expected a string, got {short_repr(value)}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise LakdError(f"config key '{key}': expected a mapping of sub-keys, got {short_repr(value)}")
        return value
    return value


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    hints = _field_types(type(obj))
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise LakdError(f"unknown config key '{full}'{did_you_mean(str(key), hints)}; "
                            f"valid keys here: {', '.join(hints)}")
        current = getattr(obj, key)
        if isinstance(current, dict) and isinstance(value, dict):
            setattr(obj, key, {**current, **value})  # e.g. distill.params: overrides merge into the file's
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                example = next(iter(_field_types(type(current))))
                raise LakdError(f"config key '{full}' is a section; use sub-keys like '{full}.{example}=...'")
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.lr=0.05'`` -> ``('optim.lr', 0.05)``; the value is parsed as YAML (data only)."""
    if "=" not in text:
        raise LakdError(f"override '{text}' is not KEY=VALUE (e.g. optim.lr=0.05)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise LakdError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.strip(), value


def nest(key: str, value: Any) -> dict[str, Any]:
    """``('a.b.c', 1)`` -> ``{'a': {'b': {'c': 1}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file: ``path`` itself, or the copy lakd ships of a ``configs/...`` path (installed package)."""
    from lakd.resources import locate

    path = locate(path)
    if path.is_dir():
        raise LakdError(f"config file '{path}' is a folder, not a YAML file")
    if not path.is_file():
        raise LakdError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LakdError(f"config file '{path}' is not valid YAML: {str(exc)[:300]}") from None
    except UnicodeDecodeError as exc:
        raise LakdError(f"config file '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
                        "UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LakdError(f"config file '{path}' must hold a mapping of sections (model:, data:, ...)")
    return data


def build_config(
    cls: type = RunConfig,
    files: list[str] | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Any:
    """Defaults <- ``base`` (a mapping, e.g. a run's recorded config) <- YAML files (in order) <- CLI convenience
    flags <- dotted overrides; then validate."""
    cfg = cls()
    if base is not None:
        _apply(cfg, base, "")
    for f in files or []:
        _apply(cfg, load_yaml(f), "")
    for key, value in (flags or {}).items():
        if value is not None:
            _apply(cfg, nest(key, value))
    for text in overrides or []:
        key, value = parse_override(text)
        _apply(cfg, nest(key, value))
    validate(cfg)
    return cfg


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Any) -> None:
    """Range checks; every message names the key, the bad value and the allowed range."""
    for key, allowed in CHOICES.items():
        try:
            value = _get(cfg, key)
        except AttributeError:
            continue
        if value not in allowed:
            raise LakdError(f"config key '{key}': '{value}' is not one of {', '.join(allowed)}"
                            f"{did_you_mean(str(value), allowed)}")

    def check(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise LakdError(f"config key '{key}' = {short_repr(_get(cfg, key))} is out of range: must be {what}")

    check("optim.lr", 0 < cfg.optim.lr <= 100, "> 0, finite and <= 100")  # near the float limit one step makes NaN
    check("optim.momentum", 0 <= cfg.optim.momentum < 1, "in [0, 1)")
    check("optim.weight_decay", 0 <= cfg.optim.weight_decay < math.inf, ">= 0 and finite")
    check("schedule.warmup_epochs", 0 <= cfg.schedule.warmup_epochs <= cfg.train.epochs,
          "in [0, train.epochs]")
    check("schedule.gamma", 0 < cfg.schedule.gamma <= 1, "in (0, 1]")
    check("schedule.min_lr", 0 <= cfg.schedule.min_lr <= cfg.optim.lr, "in [0, optim.lr]")
    check("train.epochs", cfg.train.epochs >= 1, ">= 1")
    check("train.seed", 0 <= cfg.train.seed <= MAX_SEED, f"in [0, {MAX_SEED}]")
    check("data.split_seed", 0 <= cfg.data.split_seed <= MAX_SEED, f"in [0, {MAX_SEED}]")
    check("train.label_smoothing", 0 <= cfg.train.label_smoothing < 1, "in [0, 1)")
    check("data.batch_size", cfg.data.batch_size >= 1, ">= 1")
    check("data.eval_batch_size", cfg.data.eval_batch_size >= 1, ">= 1")
    check("data.val_size", 0 <= cfg.data.val_size < 1 or float(cfg.data.val_size).is_integer(),
          ">= 0: a whole count of images, or a fraction in (0, 1)")
    check("data.crop_padding", 0 <= cfg.data.crop_padding <= 64, "in [0, 64]")  # pixels of padding per side
    check("data.synthetic_size", 2 <= cfg.data.synthetic_size <= MAX_SYNTHETIC, f"in [2, {MAX_SYNTHETIC}]")
    check("data.synthetic_classes", 2 <= cfg.data.synthetic_classes <= 10_000, "in [2, 10000]")
    if cfg.data.image_size is not None:
        check("data.image_size", 1 <= cfg.data.image_size <= MAX_IMAGE_SIZE, f"in [1, {MAX_IMAGE_SIZE}] or null")
    if cfg.data.workers is not None:
        check("data.workers", cfg.data.workers >= 1, ">= 1 or null")
    if cfg.data.train_limit is not None:
        check("data.train_limit", cfg.data.train_limit >= 1, ">= 1 or null")
    if cfg.data.test_limit is not None:
        check("data.test_limit", cfg.data.test_limit >= 1, ">= 1 or null")
    if (cfg.data.mean is None) != (cfg.data.std is None):
        raise LakdError("config keys 'data.mean' and 'data.std' go together: give both (3 values each) or neither")
    if cfg.data.mean is not None:
        check("data.mean", len(cfg.data.mean) == 3 and all(0 <= m <= 1 for m in cfg.data.mean),
              "3 channel means in [0, 1]")
        check("data.std", len(cfg.data.std) == 3 and all(0 < s <= 1 for s in cfg.data.std),
              "3 channel stds in (0, 1]")
    from lakd.models import check_model_kwargs

    check_model_kwargs(cfg.model.kwargs, "config key 'model.kwargs'")
    if cfg.model.new_head and not cfg.model.init_weights:
        raise LakdError("config key 'model.new_head' = true replaces the classifier of model.init_weights: give "
                        "the weights file too (model.init_weights / --init-weights)")
    check("train.bn_recalibrate", 0 <= cfg.train.bn_recalibrate <= 10_000, "in [0, 10000] batches")
    if cfg.train.max_steps_per_epoch is not None:
        check("train.max_steps_per_epoch", cfg.train.max_steps_per_epoch >= 1, ">= 1 or null")
    if cfg.train.threads is not None:
        check("train.threads", 1 <= cfg.train.threads <= 1024, "in [1, 1024] or null")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise LakdError("config key 'optim.nesterov' = true needs optim.momentum > 0")
    if sorted(cfg.schedule.milestones) != list(cfg.schedule.milestones):
        raise LakdError(f"config key 'schedule.milestones' = {cfg.schedule.milestones} must be increasing")


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
