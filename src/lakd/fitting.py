"""``lakd.fit``: lakd's trainer as a library call, for any model and any map-style ``Dataset``.

    import lakd
    summary = lakd.fit(student, teacher, train=train_set, val=val_set, test=test_set, method="lakd", epochs=30,
                       out="runs/my-student")
    summary.load_best(student)          # the best-on-validation weights, into your own module

The run folder is the CLI's (``config.yaml``, ``run.json``, metrics, ``last.pt`` / ``best.pt``, the lock, resume,
atomic writes), and so are the checks: the CLI is argv -> config -> :func:`fit_config`, and :func:`fit` is
arguments -> config (+ the objects it was given) -> :func:`fit_config`. Mistakes raise ``LakdError`` before the
run folder is written; a stop signal raises ``TrainingStopped`` once its checkpoint is saved (``resume=True``
continues it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lakd.errors import LakdError
from lakd.run import PYTHON_PREFIX, GivenObjects, check_distill_config, check_model_name, python_name, run_training
from lakd.runfolder import RunFolder, check_resume_config

# data.* keys that describe one of lakd's own datasets, meaningless for a user's Dataset object
_NAMED_DATA_KEYS = ("dataset", "root", "path", "stream", "image_size", "synthetic_size", "synthetic_classes")


@dataclass(frozen=True)
class FitSummary:
    """What a finished run measured (top-1 in %, img/s over training steps, peak memory in MB, seconds) and
    where its files are. ``best_*`` is the epoch with the best validation top-1 (the last epoch without one)."""

    out: Path
    epochs: int
    best_epoch: int
    best_val_top1: float | None
    best_test_top1: float | None
    last_val_top1: float | None
    last_test_top1: float | None
    train_img_per_s: float | None
    peak_mem_mb: float | None
    train_wall_s: float
    fit_wall_s: float

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> FitSummary:
        return cls(**{**{k: summary.get(k) for k in cls.__dataclass_fields__}, "out": Path(summary["out"])})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out)}

    @property
    def best_checkpoint(self) -> Path:
        return self.out / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "last.pt"

    def load_best(self, model: Any) -> Any:
        """Load the best-on-validation weights into ``model`` (the student module you trained) and return it."""
        from lakd.checkpoint import load_checkpoint

        state = load_checkpoint(self.best_checkpoint)["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise LakdError(f"'{self.best_checkpoint}' does not fit {type(model).__name__}: {exc}") from None
        return model


def check_run_config(cfg: Any, given: GivenObjects | None = None) -> Any:
    """Everything about a config that can be checked before any work; returns the teacher's source, if any."""
    if getattr(cfg, "distill", None) is not None:
        return check_distill_config(cfg, given)
    if given is None or given.student is None:
        check_model_name(cfg.model.name)
    weights = cfg.model.init_weights
    if weights and not Path(weights).is_file():
        what = "is a folder, not a weights file" if Path(weights).is_dir() else "does not exist"
        raise LakdError(f"weights file '{weights}' (model.init_weights) {what}")
    return None


def fit_config(
    cfg: Any, out: str | Path, *, command: str, resume: bool = False, force: bool = False,
    given: GivenObjects | None = None, rebuild: Callable[[dict[str, Any]], Any] | None = None,
    log: Callable[[str], None] = print,
) -> FitSummary:
    """Run ``cfg`` into ``out``: the folder is locked and judged first (lakd.runfolder); a resume is checked
    against what its checkpoint records (``rebuild(recorded)`` may first rebuild the config on top of it, as
    the CLI does); then the config is checked and the run trains. ``command`` is recorded in ``run.json``."""
    from lakd.engine.distributed import env_from_torchrun

    with RunFolder(Path(out), resume, force, owner=env_from_torchrun().is_main) as folder:
        if resume:
            recorded, where = folder.recorded_settings()
            if rebuild is not None:
                cfg = rebuild(recorded)
            check_resume_config(cfg, recorded, where)
        teacher_source = check_run_config(cfg, given)
        summary = run_training(cfg, folder, command, teacher_source, given, log)
    return FitSummary.from_dict(summary)


def _is_name(value: Any) -> bool:
    return isinstance(value, str | Path)


def _default_val_size(train_size: int) -> int:
    """A tenth of the training images, at most 5,000 (CIFAR's held-out count), for selection on validation."""
    return min(5000, train_size // 10)


def fit(
    student: Any,
    teacher: Any = None,
    *,
    train: Any,
    out: str | Path,
    val: Any = None,
    test: Any = None,
    method: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    precision: str | None = None,
    augment: bool | None = None,
    val_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    workers: int | None = None,
    student_stages: Any = None,
    teacher_stages: Any = None,
    params: dict[str, Any] | None = None,
    config: str | Path | Sequence[str | Path] | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool | None = None,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> FitSummary:
    """Train ``student`` (on labels, or distilled from ``teacher`` with ``method``) with lakd's trainer.

    * ``student`` / ``teacher``: any ``nn.Module`` (zoo, torchvision and timm models find their stages; another
      module to distil needs ``*_stages=[module paths]``), or a name as the CLI takes it (a teacher name is a
      checkpoint written by ``lakd train``). ``method`` defaults to ``"lakd"`` with a teacher.
    * ``train`` / ``val`` / ``test``: map-style datasets yielding ``(image, label)``, images as your transforms
      make them (PIL / uint8 images are normalised with ``mean``/``std``, default their own statistics; float
      tensors are taken as they are). Without ``val``, ``val_size`` training images (default a tenth, at most
      5,000) are held out for selecting the best epoch. Or ``train`` names a lakd dataset ("cifar100").
    * ``augment``: lakd's pad-crop-and-flip on top (default: off for your datasets, whose transforms augment;
      on for lakd's). ``params``: the method's parameters. ``config``: YAML files as ``lakd train -c``;
      ``settings``: any other config key, dotted (``{"optim.nesterov": True, "schedule.name": "step"}``).
    * ``out``: the run folder; ``resume`` continues it, ``force`` starts over in it.

    Returns a :class:`FitSummary`; raises ``LakdError`` on bad input (before anything is written) and
    ``TrainingStopped`` when a signal stopped the run (its checkpoint saved).
    """
    from lakd.config import DistillRunConfig, RunConfig, build_config

    user_data = not _is_name(train)
    if not user_data and any(x is not None for x in (val, test)):
        raise LakdError(f"train names lakd's dataset '{train}', which has its own validation and test splits: "
                        "leave out val and test (or give all three as datasets)")
    if user_data and test is None and val is None and val_size == 0:
        raise LakdError("with val_size=0 and neither val nor test there is nothing to evaluate the student on: "
                        "give val or test, or hold out training images (val_size)")
    distilled = teacher is not None or method is not None
    if params and not distilled:
        raise LakdError("params are a distillation method's: give a teacher (and a method), or leave out params")
    flags: dict[str, Any] = {
        "train.epochs": epochs, "data.batch_size": batch_size, "optim.lr": lr, "train.seed": seed,
        "train.device": device, "train.precision": precision, "data.augment": augment, "data.workers": workers,
        "data.mean": list(mean) if mean is not None else None, "data.std": list(std) if std is not None else None,
        "train.progress": progress, "out": str(out),
        "model.name": student if _is_name(student) else python_name(student),
        **_source_flags(train, val_size, augment, teacher, method, params, distilled),
    }
    files = [str(config)] if _is_name(config) else [str(f) for f in config or []]
    flags.update(settings or {})
    cfg = build_config(DistillRunConfig if distilled else RunConfig, files, flags=flags)
    given = GivenObjects(None if _is_name(student) else student,
                         None if teacher is None or _is_name(teacher) else teacher,
                         student_stages=student_stages, teacher_stages=teacher_stages)
    if user_data:
        given.splits = _user_splits(cfg, settings or {}, train, val, test, val_size, log)
        cfg.data.val_size = 0 if val is not None else len(given.splits.val or ())
    return fit_config(cfg, out, command=_describe_call(student, teacher, train, val, test, cfg), resume=resume,
                      force=force, given=given, log=log)


def _source_flags(train: Any, val_size: int | None, augment: bool | None, teacher: Any, method: str | None,
                  params: dict[str, Any] | None, distilled: bool) -> dict[str, Any]:
    """The config keys that say where the data and the teacher come from: names as they are, objects as
    ``python:<class>``; a user's dataset is augmented by its own transforms unless ``augment`` says otherwise."""
    flags: dict[str, Any] = {}
    if _is_name(train):
        flags.update({"data.dataset": str(train), "data.val_size": val_size})
    else:
        flags["data.dataset"] = python_name(train)
        if augment is None:
            flags["data.augment"] = False
    if distilled:
        flags["distill.method"] = method or "lakd"
        flags["distill.teacher"] = None if teacher is None else teacher if _is_name(teacher) else python_name(teacher)
        flags["distill.params"] = params
    return flags


def _user_splits(cfg: Any, settings: dict[str, Any], train: Any, val: Any, test: Any, val_size: int | None,
                 log: Callable[[str], None]) -> Any:
    """The run's splits from the user's datasets, with the config's data settings that apply to them."""
    from lakd.data.objects import splits_from_datasets

    named = sorted(k for k in settings if k.split(".", 1)[-1] in _NAMED_DATA_KEYS and k.startswith("data."))
    if named:
        raise LakdError(f"{', '.join(named)} describe(s) one of lakd's datasets, but train is your "
                        f"{type(train).__name__}: leave them out")
    d = cfg.data
    if val is None:
        val_size = _default_val_size(len(train)) if val_size is None else val_size
        transform = getattr(train, "transform", None)
        if val_size and transform is not None:
            log(f"note: the {val_size} validation images are held out of the training dataset and go through its "
                "transform (training augmentation included); pass val= a dataset with your evaluation transform "
                "for a cleaner selection")
    elif val_size:
        raise LakdError("give either val (a dataset) or val_size (images held out of train), not both")
    return splits_from_datasets(train, val, test, val_size=val_size or 0, split_seed=d.split_seed, mean=d.mean,
                                std=d.std, train_limit=d.train_limit, test_limit=d.test_limit, log=log)


def _describe_call(student: Any, teacher: Any, train: Any, val: Any, test: Any, cfg: Any) -> str:
    """How run.json records a ``lakd.fit`` call: the objects by class, the settings in full in its config."""

    def name(x: Any) -> str:
        return repr(str(x)) if _is_name(x) else f"<{type(x).__name__}>"

    parts = [name(student)] + ([name(teacher)] if teacher is not None else [])
    parts += [f"{k}={name(v)}" for k, v in (("train", train), ("val", val), ("test", test)) if v is not None]
    parts.append(f"out={str(cfg.out)!r}")
    return f"lakd.fit({', '.join(parts)})  # settings: see config"


def evaluate(model: Any, dataset: Any, *, batch_size: int = 500, device: str = "auto", precision: str = "auto",
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             workers: int | None = None) -> dict[str, float]:
    """Top-1 / top-5 (%), mean cross-entropy and img/s of ``model`` on a map-style ``dataset`` of
    ``(image, label)``, prepared as ``fit`` prepares its splits (8-bit images normalised with ``mean``/``std``,
    which default to the images' own statistics: give the training run's)."""
    from lakd.config import RunConfig, build_config
    from lakd.data.objects import splits_from_datasets
    from lakd.engine import evaluate as evaluate_split
    from lakd.engine import resolve_runtime

    cfg = build_config(RunConfig, flags={"data.eval_batch_size": batch_size, "train.device": device,
                                         "train.precision": precision, "data.workers": workers,
                                         "data.mean": list(mean) if mean is not None else None,
                                         "data.std": list(std) if std is not None else None})
    splits = splits_from_datasets(dataset, mean=cfg.data.mean, std=cfg.data.std)
    runtime = resolve_runtime(cfg.train.device, cfg.train.precision, "false")
    from lakd.models.base import check_input_size

    check_input_size(model, "", splits.input_shape, splits.num_classes)
    model.to(runtime.device)
    return evaluate_split(model, splits.train, splits.mean, splits.std, runtime, cfg.data.eval_batch_size,
                          cfg.data.workers)


__all__ = ["PYTHON_PREFIX", "FitSummary", "check_run_config", "evaluate", "fit", "fit_config"]
