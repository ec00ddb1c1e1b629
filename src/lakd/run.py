"""Run orchestration, as a library: what `lakd train` / `distill` / `eval`, `bench` and `demo` all call.

The CLI turns argv into a config and calls :func:`run_training` or :func:`evaluate_checkpoint`; this module
builds the data, models, teacher and task, owns the run folder (lock, atomic writes, resume checks) and drives
the trainer. Every user mistake is a ``LakdError`` raised before the run folder is touched.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lakd import __version__
from lakd.config import dump_yaml
from lakd.errors import LakdError, short_repr
from lakd.runfolder import RunFolder


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(runtime: Any = None) -> dict[str, Any]:
    """What a result needs next to it to be reproducible: versions, machine, git commit."""
    import torch

    info = {"lakd": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "git_commit": _git_commit()}
    if runtime is not None:
        info["device"] = runtime.describe()
    return info


def check_model_name(name: str) -> None:
    """Unknown architecture -> LakdError with the registry's did-you-mean message."""
    from lakd.models import is_known_model, list_models

    if not is_known_model(name):
        from lakd.errors import did_you_mean

        raise LakdError(f"unknown model '{name}'{did_you_mean(name, list_models())}; see `lakd train --list-models`,"
                        " or name a torchvision:<name> / timm:<name> model")


def load_teacher_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    from lakd.checkpoint import checkpoint_meta, load_checkpoint

    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    try:
        check_model_name(meta["arch"])
    except LakdError as exc:
        raise LakdError(f"teacher checkpoint '{path}': {exc}") from None
    return ckpt, meta, path


def teacher_source(distill: Any) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """``(checkpoint, meta, where)`` of the teacher: a lakd checkpoint, or a model name with a weights file (then
    the checkpoint is None and the weights are read when the teacher is built, before any file is written)."""
    from lakd.models import is_known_model
    from lakd.resources import locate

    weights = distill.teacher_weights
    teacher = str(locate(distill.teacher))  # as given, or the copy lakd ships of a teacher a config names
    if Path(teacher).is_file() or not is_known_model(teacher):
        if weights:
            raise LakdError(f"distill.teacher_weights is for a teacher given by its architecture name; '{teacher}' "
                            "is a checkpoint, which holds its weights: leave out --teacher-weights")
        if not Path(teacher).exists() and (":" in teacher or teacher.isidentifier()):
            check_model_name(teacher)  # a mistyped name: say so rather than 'checkpoint does not exist'
        return load_teacher_checkpoint(teacher)
    if not weights:
        raise LakdError(f"teacher '{teacher}' is an architecture name: give its weights with --teacher-weights FILE "
                        "(a state_dict file), or pass a checkpoint written by `lakd train`")
    if not Path(weights).is_file():
        raise LakdError(f"teacher weights file '{weights}' does not exist")
    return None, {"arch": teacher, "weights": weights, "key_map": distill.teacher_key_map,
                  "stages": distill.teacher_stages}, weights


def _build_teacher(teacher_ckpt: tuple[dict[str, Any] | None, dict[str, Any], str], splits: Any) -> Any:
    """The teacher model with its weights; class count and dataset must match the distillation data."""

    ckpt, meta, path = teacher_ckpt
    if ckpt is None:  # a model name and a foreign weights file: the head must fit the dataset
        from lakd.models import build_model
        from lakd.models.adapter import user_model
        from lakd.models.weights import load_weights_into

        try:
            teacher = build_model(meta["arch"], splits.num_classes, stages=meta.get("stages"))
        except ValueError as exc:
            raise LakdError(f"teacher '{meta['arch']}': {exc}") from None
        load_weights_into(user_model(teacher), path, meta["key_map"], "teacher")
        return teacher
    if meta["num_classes"] != splits.num_classes:
        raise LakdError(f"teacher '{path}' ({meta['arch']}) predicts {meta['num_classes']} classes but dataset "
                        f"'{splits.name}' has {splits.num_classes}: use a teacher trained on {splits.name}")
    if meta.get("dataset") and meta["dataset"] != splits.name:
        raise LakdError(f"teacher '{path}' was trained on '{meta['dataset']}', not on '{splits.name}'")
    trained_at = meta.get("image_size")
    if trained_at and trained_at != splits.image_size:
        raise LakdError(f"teacher '{path}' was trained on {trained_at}x{trained_at} images, but this data gives "
                        f"{splits.image_size}x{splits.image_size}: a teacher fed another size than it learned on "
                        f"teaches badly. Give the data its size (data.image_size={trained_at} for an image folder) "
                        "or use a teacher trained at this size")
    from lakd.checkpoint import model_from_checkpoint
    from lakd.models.base import feed_with_normalisation

    teacher = model_from_checkpoint(ckpt, meta, f"teacher '{path}'")
    if meta.get("mean") and meta.get("std"):  # a teacher trained with another normalisation sees its own
        feed_with_normalisation(teacher, tuple(splits.mean), tuple(splits.std), tuple(meta["mean"]),
                                tuple(meta["std"]))
    return teacher


PYTHON_PREFIX = "python:"  # how a run records a model or dataset given as a Python object: python:<class name>


def python_name(obj: Any) -> str:
    return f"{PYTHON_PREFIX}{type(obj).__name__}"


@dataclass
class GivenObjects:
    """What a run trains on when its caller gives objects rather than names (``lakd.fit``): the config records
    them as ``python:<class>``, and these are used instead of building them from the config."""

    student: Any = None  # nn.Module
    teacher: Any = None  # nn.Module
    splits: Any = None  # DatasetSplits built from the user's datasets
    student_stages: Any = None
    teacher_stages: Any = None


def check_distill_config(cfg: Any, given: GivenObjects | None = None) -> tuple[Any, ...] | None:
    """A distillation config checked before any work: the method, its parameters, the student's name, a teacher
    when the method needs one. Returns the teacher's source (``teacher_source``) when it is named, else None."""
    from lakd.distill import make_params, method_class

    method = method_class(cfg.distill.method)
    make_params(cfg.distill.method, cfg.distill.resolved_params())  # validate before any work
    if given is None or given.student is None:
        check_model_name(cfg.model.name)
    if given is not None and given.teacher is not None:
        return None
    if method.requires_teacher and not cfg.distill.teacher:
        raise LakdError(f"method '{cfg.distill.method}' needs a teacher: pass --teacher runs/<teacher>/best.pt "
                        "(a checkpoint written by `lakd train`)")
    return teacher_source(cfg.distill) if cfg.distill.teacher else None


def run_training(cfg: Any, folder: RunFolder, command: str, teacher_ckpt: Any = None,
                 given: GivenObjects | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or distil) into ``folder``, which this process has locked and judged (lakd.runfolder); return the
    summary. A stop signal raises ``TrainingStopped`` after its checkpoint is saved; bad input a ``LakdError``
    before anything is written."""
    import torch

    from lakd.engine import resolve_runtime
    from lakd.engine.distributed import env_from_torchrun, init_process_group, shutdown

    dist_env = env_from_torchrun()  # torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; else one process
    device_name = cfg.train.device
    if dist_env.enabled and device_name in ("auto", "cuda") and torch.cuda.is_available():
        device_name = f"cuda:{dist_env.local_rank}"  # one GPU per process
    runtime = resolve_runtime(device_name, cfg.train.precision, cfg.train.channels_last)
    init_process_group(dist_env, runtime.device)
    try:
        return _train_in_process(cfg, folder, command, teacher_ckpt, given or GivenObjects(), runtime, dist_env,
                                 log)
    finally:
        shutdown()


def prepare_teacher(teacher: Any, input_shape: tuple[int, int, int]) -> tuple[Any, int]:
    """``(teacher with its BatchNorms folded into its convolutions, how many)`` (lakd.models.frozen: exact, each
    fold checked on a random batch)."""
    import torch

    from lakd.models.frozen import fold_batchnorm

    generator = torch.Generator().manual_seed(0)
    return fold_batchnorm(teacher, torch.randn(8, *input_shape, generator=generator))


def _train_in_process(cfg: Any, folder: RunFolder, command: str, teacher_ckpt: Any, given: GivenObjects,
                      runtime: Any, dist_env: Any, log: Callable[[str], None]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from lakd.engine import Trainer
    from lakd.engine.host_memory import keep_freed_host_memory

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    malloc = keep_freed_host_memory(cfg.train.malloc) if runtime.device.type == "cpu" else \
        f"system (train.malloc applies to CPU training; this run is on {runtime.device.type})"
    splits = given.splits if given.splits is not None else _load_data(cfg.data)
    teacher, teacher_arch = _teacher_for(cfg, teacher_ckpt, given, splits, log)
    model, input_shape = _build_student(cfg, splits, teacher, given)
    task, folded, compiled_parts = _build_task(cfg, model, teacher, splits, input_shape, runtime, dist_env)
    meta = _checkpoint_meta(cfg, splits, task, teacher_arch, folded, compiled_parts, input_shape)
    if not dist_env.is_main:
        log = _silent
    trainer = Trainer(task, cfg, splits, runtime, folder.out, meta, log=log, dist_env=dist_env)
    if dist_env.enabled:
        dist.barrier()  # every rank has checked its input before rank 0 touches the run folder
    if folder.resume:
        trainer.resume_from(folder.out / "last.pt")
    if not dist_env.is_main:
        return {**trainer.fit(), "out": str(folder.out)}
    # Everything that can fail on bad input has run; only now write into the run folder (locked since the start).
    if folder.force:
        folder.clear()
    augmentation = None if not cfg.data.augment else "resized_crop (streamed from files)" if splits.streamed else \
        trainer.train_loader.batching.augmentation
    run_info = _run_record(cfg, command, runtime, dist_env, malloc, splits, meta, augmentation)
    folder.write_record(dump_yaml(cfg), run_info)
    what = "training "
    if "distill" in meta:
        how = f"compiled {' + '.join(compiled_parts)}" if compiled_parts else "not compiled"
        arch = f"{teacher_arch} ({how})" if teacher is not None else "no teacher"
        what = f"distilling ({meta['distill']['method']}) {arch} -> "
    procs = f" x {dist_env.world_size} processes" if dist_env.enabled else ""
    test = len(splits.test) if splits.test is not None else 0
    log(f"{what}{cfg.model.name} on {splits.name} ({len(splits.train)} train / {run_info['data']['val']} val / "
        f"{test} test) on {runtime.describe()}{procs} -> {folder.out}")
    summary = trainer.fit()
    summary["out"] = str(folder.out)
    folder.write_summary({**summary, **run_info})
    return summary


def _silent(_message: str) -> None:
    pass


def _teacher_for(cfg: Any, teacher_ckpt: Any, given: GivenObjects, splits: Any,
                 log: Callable[[str], None]) -> tuple[Any, str | None]:
    """``(teacher model or None, its architecture's name)``: the caller's module, or built from its source."""
    if given.teacher is not None:
        from lakd.api import staged

        return staged(given.teacher, given.teacher_stages, "teacher"), python_name(given.teacher)
    if teacher_ckpt is None:
        return None, None
    teacher = _build_teacher(teacher_ckpt, splits)
    meta = teacher_ckpt[1]
    from lakd.data.objects import FLOAT

    if getattr(splits.train, "kind", None) == FLOAT and meta.get("mean"):  # a user's float images, as they made them
        log(f"note: teacher '{teacher_ckpt[2]}' was trained on images normalised with mean {meta['mean']} and std "
            f"{meta['std']}; your dataset yields float tensors, which lakd passes on as they are: normalise them "
            "the same way in your transform")
    return teacher, meta["arch"]


def _load_data(d: Any) -> Any:
    """The run's train / val / test splits, with the normalisation the config may impose."""
    from lakd.data import load_splits

    splits = load_splits(d.dataset, d.root, d.val_size, d.split_seed, d.path, d.synthetic_size,
                         d.synthetic_classes, d.train_limit, d.test_limit, stream=d.stream, image_size=d.image_size)
    if d.mean is not None:
        splits.mean, splits.std = tuple(d.mean), tuple(d.std)
    return splits


def _build_student(cfg: Any, splits: Any, teacher: Any, given: GivenObjects) -> tuple[Any, tuple[int, int, int]]:
    """The model to train (seeded, its initial weights loaded if asked; or the caller's module, staged when it is
    distilled) and the input shape both models take."""
    from lakd.engine import seed_everything
    from lakd.models import build_model
    from lakd.models.adapter import user_model
    from lakd.models.base import check_input_size

    seed_everything(cfg.train.seed)
    distilled = getattr(cfg, "distill", None) is not None
    if given.student is not None:
        from lakd.api import plain_or_staged

        model = plain_or_staged(given.student, given.student_stages, "student", needs_stages=distilled)
    else:
        try:
            model = build_model(cfg.model.name, splits.num_classes, stages=cfg.model.stages, **cfg.model.kwargs)
        except ValueError as exc:
            raise LakdError(f"model.stages: {exc}" if cfg.model.stages else f"model '{cfg.model.name}': {exc}") \
                from None
    if cfg.model.init_weights:
        from lakd.models.weights import load_weights_into

        fresh = load_weights_into(user_model(model), cfg.model.init_weights, cfg.model.init_key_map,
                                  "student" if teacher is not None else "model", new_head=cfg.model.new_head,
                                  num_classes=splits.num_classes)
        if fresh:
            print(f"model.new_head: {', '.join(fresh)} initialised for {splits.num_classes} classes; the rest of "
                  f"'{cfg.model.init_weights}' loaded", file=sys.stderr)
    input_shape = splits.input_shape
    check_input_size(model, "student" if teacher is not None else "", input_shape, splits.num_classes)
    if teacher is not None:
        check_input_size(teacher, "teacher", input_shape, splits.num_classes)
    return model, input_shape


def _build_task(cfg: Any, model: Any, teacher: Any, splits: Any, input_shape: tuple[int, int, int], runtime: Any,
                dist_env: Any) -> tuple[Any, int, list[str]]:
    """The trainer's task on the run's device: supervised, or the distiller with its teacher folded and, where
    it pays, compiled. Returns ``(task, BatchNorms folded into the teacher, compiled parts)``."""
    import torch

    from lakd.engine import SupervisedTask

    distill = getattr(cfg, "distill", None)
    compiled, folded = False, 0
    if teacher is not None:
        from lakd.compiling import resolve_compile

        teacher, folded = prepare_teacher(teacher, input_shape)
        steps = cfg.train.epochs * cfg.train.epoch_steps(max(1, len(splits.train) // cfg.data.batch_size))
        compiled, why_not = resolve_compile(distill.compile, runtime.device, steps)
        if distill.compile == "true" and not compiled:
            print(f"lakd: note: distill.compile = true, but {why_not}: running eagerly", file=sys.stderr)
    if distill is None:
        task = SupervisedTask(model, cfg.train.label_smoothing)
    else:
        from lakd.distill import build_distiller

        task = build_distiller(distill.method, model, teacher, distill.resolved_params(),
                               input_shape=input_shape,  # epochs come with each step (lakd.engine.step)
                               train_labels=torch.as_tensor(splits.train.y))
    per_process = cfg.data.batch_size // dist_env.world_size
    if per_process < task.min_batch_size:
        raise LakdError(f"data.batch_size = {cfg.data.batch_size} gives {per_process} samples per process, but "
                        f"method '{distill.method}' needs at least {task.min_batch_size}: {task.min_batch_reason}")
    task = task.to(runtime.device)
    if runtime.channels_last and teacher is not None:
        teacher.to(memory_format=torch.channels_last)
    compiled_parts = []
    if compiled:
        from lakd.models.frozen import FrozenForward

        if teacher.runs_stage_by_stage:  # a hooked teacher's forward registers hooks: not compiled
            task.set_teacher_inference(FrozenForward(teacher, compile_it=True))
            compiled_parts.append("teacher")
        if task.compile_losses():
            compiled_parts.append("losses")
    return task, folded, compiled_parts


def _checkpoint_meta(cfg: Any, splits: Any, task: Any, teacher_arch: str | None, folded: int,
                     compiled_parts: list[str], input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """What every checkpoint of the run records about its model, data and (for a distillation) method."""
    d = cfg.data
    meta: dict[str, Any] = {
        "arch": cfg.model.name, "stages": cfg.model.stages, "kwargs": dict(cfg.model.kwargs),
        "num_classes": splits.num_classes, "dataset": splits.name,
        "classes": list(splits.train.classes), "mean": list(splits.mean), "std": list(splits.std),
        "image_size": splits.image_size, "input_shape": list(input_shape), "val_size": d.val_size,
        "split_seed": d.split_seed,
        "data": {"dataset": d.dataset, "path": d.path, "val_size": d.val_size, "split_seed": d.split_seed,
                 "synthetic_size": d.synthetic_size, "synthetic_classes": d.synthetic_classes,
                 "stream": d.stream, "image_size": d.image_size},
        "lakd_version": __version__}
    distill = getattr(cfg, "distill", None)
    if distill is not None:
        from lakd.distill import params_as_dict

        meta["distill"] = {"method": distill.method, "teacher": distill.teacher,
                           "teacher_arch": teacher_arch,
                           # every parameter as resolved (defaults included), so runs made before and after a
                           # default changed can be told apart; the overrides alone are in config.yaml
                           "params": params_as_dict(task.params),
                           "teacher_batchnorms_folded": folded,
                           "compiled": compiled_parts}
    return meta


def _run_record(cfg: Any, command: str, runtime: Any, dist_env: Any, malloc: str, splits: Any,
                meta: dict[str, Any], augmentation: str | None) -> dict[str, Any]:
    """What ``run.json`` records: command, config, environment, data sizes, the method's resolved parameters."""
    run_info = {"command": command, "config": cfg.to_dict(),
                "env": {k: os.environ[k] for k in ("LAKD_DATA", "LAKD_CACHE") if k in os.environ},
                "environment": {**environment_info(runtime), "world_size": dist_env.world_size,
                                "malloc": malloc},
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "data": {"train": len(splits.train), "val": len(splits.val) if splits.val else 0,
                         "test": len(splits.test) if splits.test is not None else 0},
                # data.augmentation as resolved (auto: by image size), None without augmentation
                "augmentation": augmentation}
    if "distill" in meta:  # the method's parameters as resolved (defaults included), not only the overrides
        run_info["distill"] = meta["distill"]
    return run_info


RECORDED_DATA_KEYS = ("dataset", "path", "val_size", "split_seed", "synthetic_size", "synthetic_classes", "stream",
                      "image_size")


def recorded_data(meta: dict[str, Any], path: str) -> dict[str, Any]:
    """The data a checkpoint says it was made on (``meta.data``), checked by the config schema itself (types,
    ranges, known keys): a checkpoint is a door for data settings like a config file is."""
    from lakd.config import RunConfig, build_config

    data = meta.get("data") or {"dataset": meta.get("dataset", "cifar10")}
    if not isinstance(data, dict) or set(data) - set(RECORDED_DATA_KEYS):
        extra = sorted(map(str, set(data) - set(RECORDED_DATA_KEYS))) if isinstance(data, dict) else data
        raise LakdError(f"checkpoint '{path}': meta.data must be a mapping of {', '.join(RECORDED_DATA_KEYS)}; got "
                        f"{short_repr(extra)}: it was not written by lakd")
    try:
        cfg = build_config(RunConfig, base={"data": dict(data)})
    except LakdError as exc:
        raise LakdError(f"checkpoint '{path}': meta.data: {exc}") from None
    return {key: getattr(cfg.data, key) for key in RECORDED_DATA_KEYS if key in data or key == "dataset"}


def data_to_read(meta: dict[str, Any], path: str, dataset: str | None = None,
                 data_path: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(dataset name, load_splits settings)`` for a tool that scores a checkpoint on its data (eval, explain):
    ``meta.data`` through the config schema (:func:`recorded_data`), or ``dataset`` instead. A folder the
    checkpoint records is read only when the user names it (``data_path``): a checkpoint from elsewhere must not
    make lakd read any folder on the machine."""
    data = recorded_data(meta, path)
    if dataset and dataset != data["dataset"]:
        data = {"dataset": dataset}
    name = data.pop("dataset")
    if name.startswith(PYTHON_PREFIX):
        raise LakdError(f"checkpoint '{path}' was trained on a Python dataset object ({name[len(PYTHON_PREFIX):]}), "
                        "which lakd cannot rebuild: name a lakd dataset to evaluate it on (--dataset, "
                        "--data-path), or evaluate it from Python with lakd.evaluate(model, dataset)")
    recorded_folder = data.get("path")
    if data_path is not None:
        data["path"] = data_path
    elif recorded_folder:
        raise LakdError(f"checkpoint '{path}' was trained on the folder '{recorded_folder}' (as it records); lakd "
                        f"reads a folder only when you name it: add --data-path {recorded_folder} (or another "
                        "folder with the same classes)")
    return name, data


def evaluate_checkpoint(
    path: str, split: str = "test", dataset: str | None = None, data_root: str | None = None,
    device: str = "auto", precision: str = "auto", batch_size: int = 500, data_path: str | None = None,
) -> dict[str, Any]:
    """Top-1/top-5/loss/img/s of a checkpoint's model on one split of its dataset (or ``dataset``)."""
    import torch

    from lakd.checkpoint import checkpoint_meta, load_checkpoint, model_from_checkpoint
    from lakd.data import load_splits
    from lakd.engine import evaluate, resolve_runtime

    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    runtime = resolve_runtime(device, precision, "auto")
    dataset, data = data_to_read(meta, path, dataset, data_path)
    if split == "test":
        data["val_size"] = 0  # the test split does not depend on the validation carve-out
    splits = load_splits(dataset, data_root, **data)
    if splits.num_classes != meta["num_classes"]:
        raise LakdError(f"checkpoint '{path}' predicts {meta['num_classes']} classes but dataset "
                        f"'{dataset}' has {splits.num_classes}")
    model = model_from_checkpoint(ckpt, meta, f"checkpoint '{path}'").to(runtime.device)  # finite, or an error
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    arrays = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
    if arrays is None:
        raise LakdError("--split val: this checkpoint was trained without a validation split")
    mean = tuple(meta.get("mean", splits.mean))
    std = tuple(meta.get("std", splits.std))
    result = evaluate(model, arrays, mean, std, runtime, batch_size,
                      progress=f"evaluating {split}" if sys.stderr.isatty() else None)
    result.update({"ckpt": str(path), "arch": meta["arch"], "dataset": dataset, "split": split,
                   "images": len(arrays), "device": runtime.describe()})
    return result


