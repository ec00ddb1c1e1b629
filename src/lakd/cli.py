"""The ``lakd`` command line: train, eval, data.

Every user mistake (bad value, missing file, wrong checkpoint) ends as one ``lakd: error: ...`` line on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lakd import __version__
from lakd.errors import LakdError

EXIT_USAGE = 2

TRAIN_EXAMPLES = """examples:
  lakd train --model resnet56 --dataset cifar10 --epochs 30 --out runs/resnet56
  lakd train -c configs/cifar10_teacher.yaml optim.lr=0.05 train.seed=1
  lakd train -c configs/cifar10_teacher.yaml --out runs/resnet56 --resume   # continue an interrupted run
  LAKD_DATA=../shared/data lakd train --model resnet20 --epochs 1 data.train_limit=2000 --out runs/quick
"""

DISTILL_EXAMPLES = """examples:
  lakd distill --method lakd --teacher runs/teacher-resnet56/best.pt --student resnet20 --dataset cifar10 \\
      --epochs 5 --out runs/lakd-r20
  lakd distill -c configs/cifar10_cpu_lakd.yaml distill.params.ndam_weight=2 --out runs/lakd-ndam2
  lakd distill --method kd --teacher runs/teacher-resnet56/best.pt --student resnet20 distill.params.temperature=2
  lakd distill --method lakd --teacher timm:resnet50 --teacher-weights resnet50.safetensors \
      --student torchvision:mobilenet_v3_small --dataset imagefolder data.path=DIR data.image_size=224
  lakd distill --list-methods
"""

EVAL_EXAMPLES = """examples:
  lakd eval --ckpt runs/resnet56/best.pt
  lakd eval --ckpt runs/resnet56/best.pt --split val --json
"""

DATA_EXAMPLES = """examples:
  lakd data download cifar10 --root ~/data        # official URL, MD5-checked, atomic extraction
  lakd data info --root ../shared/data              # which datasets/forms are present, where the cache is
"""

BENCH_EXAMPLES = """examples:
  LAKD_DATA=../shared/data lakd bench cifar10-cpu --methods kd lakd --seeds 0 1
  lakd bench cifar10-cpu --methods lakd lakd-no-ndam lakd-no-sdm --seeds 0 --epochs 3   # ablations, short budget
  lakd bench cifar100-crd --pairs resnet56_resnet20 --methods kd dkd lakd
  lakd bench cifar10-cpu --dry-run          # the plan: which runs are done / resume / new, with their commands
  lakd bench cifar10-cpu --summary-only     # rebuild tables and plots from the results already there
Run the same command again after an interruption: finished runs are skipped, unfinished ones resume.
"""

REPORT_EXAMPLES = """examples:
  lakd report runs/c10cpu-lakd                       # per-epoch table + runs/c10cpu-lakd/curves.png
  lakd report runs/c10cpu-kd runs/c10cpu-lakd --out compare.png
"""

DEMO_EXAMPLES = """examples:
  LAKD_DATA=../shared/data lakd demo               # ~10 min on 2 CPU cores: KD vs LAKD, table + pictures
  lakd demo --out runs/demo2 --epochs 3 --train-limit 45000
"""

EXPORT_EXAMPLES = """examples:
  lakd export --ckpt runs/c10-lakd/best.pt                          # -> runs/c10-lakd/best.safetensors
  lakd export --ckpt runs/c10-lakd/best.pt --format onnx --out student.onnx   # needs pip install "lakd[onnx]"
The student alone is written (projectors, auxiliary heads, memory banks and the teacher are dropped), with its
architecture, classes and normalisation as metadata; lakd.export.load_exported() rebuilds it from a .safetensors.
"""

EXPLAIN_EXAMPLES = """examples:
  lakd explain --teacher benchmarks/teachers/cifar10_resnet56_e8.pt --student runs/c10cpu-lakd/best.pt
  lakd explain --teacher T.pt --student runs/lakd/best.pt --before runs/vanilla/best.pt --images 6 --out maps.png
"""

RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "metrics.jsonl", "metrics.csv", "config.yaml", "run.json",
             "summary.json")


def _add_common_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                   help="config file(s), applied in order (later wins)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. optim.lr=0.05 data.batch_size=64")
    p.add_argument("--dataset", help="cifar10 | cifar100 | imagefolder | imagenet | synthetic  (data.dataset)")
    p.add_argument("--data-root", help="folder holding the datasets (data.root; else $LAKD_DATA)")
    p.add_argument("--epochs", type=int, help="number of epochs (train.epochs)")
    p.add_argument("--lr", type=float, help="base learning rate (optim.lr)")
    p.add_argument("--batch-size", type=int, help="training batch size (data.batch_size)")
    p.add_argument("--seed", type=int, help="random seed (train.seed)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (train.device)")
    p.add_argument("--precision", help="auto | bf16 | fp16 | fp32 (train.precision)")
    p.add_argument("--out", help="run folder for checkpoints and metrics (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--force", action="store_true", help="start over in an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (train.progress=false)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakd", description="Knowledge distillation for image classifiers (LAKD and baselines).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `lakd COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"lakd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model with cross-entropy (e.g. a teacher)",
                       description="Train a model from scratch with cross-entropy.", epilog=TRAIN_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="architecture name (model.name), see `lakd train --list-models`")
    p.add_argument("--list-models", action="store_true", help="print the model zoo and exit")
    p.add_argument("--init-weights", metavar="FILE",
                   help="start from these weights: a state_dict .pth/.th/.pt/.safetensors, read without running "
                        "pickled code (model.init_weights; rename keys with model.init_key_map)")
    _add_common_run_flags(p)

    p = sub.add_parser("distill", help="distil a student from a teacher checkpoint (LAKD or a baseline)",
                       description="Distil a student from a frozen teacher with any registered method.",
                       epilog=DISTILL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", help="distillation method (distill.method), see --list-methods")
    p.add_argument("--teacher", help="teacher: a checkpoint from `lakd train`, or a model name (zoo, "
                                     "torchvision:<name>, timm:<name>) with --teacher-weights (distill.teacher)")
    p.add_argument("--teacher-weights", metavar="FILE",
                   help="weights of a teacher given by name: a state_dict .pth/.th/.pt/.safetensors, read without "
                        "running pickled code (distill.teacher_weights; rename keys with distill.teacher_key_map)")
    p.add_argument("--student", help="student architecture (model.name): zoo, torchvision:<name> or timm:<name>")
    p.add_argument("--list-methods", action="store_true", help="print the distillation methods and exit")
    _add_common_run_flags(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate a checkpoint's model.",
                       epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by lakd (last.pt / best.pt)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--dataset", help="override the dataset stored in the checkpoint")
    p.add_argument("--data-root", help="folder holding the datasets (else $LAKD_DATA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("data", help="download or inspect datasets", description="Dataset utilities.",
                       epilog=DATA_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    d = data_sub.add_parser("download", help="download CIFAR-10/100 (python version) with MD5 check",
                            epilog=DATA_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("name", choices=("cifar10", "cifar100"))
    d.add_argument("--root", help="where to put it (default: $LAKD_DATA, else ~/.cache/lakd/data)")
    d.add_argument("--url", help="alternative URL (mirror or file://) of the same archive")
    d.add_argument("--md5", help="expected MD5 of the archive at --url (default: the official archive's)")
    d = data_sub.add_parser("info", help="show which datasets are found under the data root",
                            epilog=DATA_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--root", help="data root (default: $LAKD_DATA, else ~/.cache/lakd/data)")

    p = sub.add_parser("bench", help="run a benchmark protocol for several methods and seeds (resumable)",
                       description="Run a named benchmark protocol (configs/protocols/*.yaml) for several "
                       "methods and seeds; write per-run result JSON, a mean ± std table and plots.",
                       epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", help="protocol name (cifar10-cpu, cifar100-crd, ...) or path of a protocol YAML")
    p.add_argument("--methods", nargs="+", help="methods / ablation entries of the protocol (default: its list)")
    p.add_argument("--seeds", nargs="+", help="seeds (default: the protocol's)")
    p.add_argument("--pairs", nargs="+", help="teacher/student pairs, for protocols that have them")
    p.add_argument("--epochs", type=int, help="override the protocol's epoch budget (results go to <protocol>-eN)")
    p.add_argument("--data-root", help="folder holding the datasets (else $LAKD_DATA)")
    p.add_argument("--runs-dir", default="runs/bench", help="where run folders go (default runs/bench)")
    p.add_argument("--results-dir", default="benchmarks/results",
                   help="where result JSON, tables and plots go (default benchmarks/results)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and commands, run nothing")
    p.add_argument("--summary-only", action="store_true", help="only rebuild tables/plots from existing results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars in the runs")

    p = sub.add_parser("report", help="print a run's metrics table and write its training curves (PNG)",
                       description="Show what a run recorded: per-epoch table and curves PNG.",
                       epilog=REPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) written by lakd train / distill")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png; compare.png for several runs)")

    p = sub.add_parser("demo", help="the 10-minute tour: teacher -> KD and LAKD students, table and pictures",
                       description="Distil a CIFAR-10 student with KD and with LAKD from a small teacher (reused "
                       "or trained), print a comparison table and write pictures and curves.",
                       epilog=DEMO_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="folder holding CIFAR-10 (else $LAKD_DATA)")
    p.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    p.add_argument("--teacher", help="teacher checkpoint to use (default: the committed CIFAR-10 resnet56)")
    p.add_argument("--epochs", type=int, default=2, help="student epochs per method (default 2)")
    p.add_argument("--train-limit", type=int, default=20000,
                   help="training images per epoch (default 20000, a seeded random subset)")
    p.add_argument("--tiny", action="store_true", help="synthetic data and tiny models: a 1-minute smoke run")
    p.add_argument("--force", action="store_true", help="start over in an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("export", help="write the student of a checkpoint as safetensors or ONNX",
                       description="Export the student model of a checkpoint for deployment.",
                       epilog=EXPORT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by lakd (best.pt / last.pt)")
    p.add_argument("--format", default="safetensors", help="safetensors (default) | onnx")
    p.add_argument("--out", help="output file (default: the checkpoint path with .safetensors / .onnx)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")

    p = sub.add_parser("explain", help="PNG grid of teacher/student activation maps (NDAM) per module",
                       description="Show where teacher and student are active, module by module, on test images, "
                       "with a per-module similarity number.",
                       epilog=EXPLAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="student checkpoint (after distillation)")
    p.add_argument("--before", help="a second student checkpoint to show beside it (e.g. before distillation)")
    p.add_argument("--images", type=int, default=4, help="number of test images (default 4)")
    p.add_argument("--seed", type=int, default=0, help="which test images: a seeded random pick (default 0)")
    p.add_argument("--data-root", help="folder holding the datasets (else $LAKD_DATA)")
    p.add_argument("--out", help="PNG path (default: ndam.png beside the student checkpoint)")

    return parser


# -- helpers ------------------------------------------------------------------------------------------------
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


def _prepare_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse to clobber an existing run unless --resume or --force (checked before any work is done)."""
    if resume and force:
        raise LakdError("--resume and --force contradict each other: pick one")
    existing = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / "last.pt").is_file() and not (out / "last.prev.pt").is_file():
            raise LakdError(f"--resume: no '{out / 'last.pt'}' to resume from")
        return
    if out.exists() and not out.is_dir():
        raise LakdError(f"--out '{out}' exists and is not a folder")
    if existing and not force:
        raise LakdError(f"run folder '{out}' already exists and is not empty; use --resume to continue it, "
                        "--force to start over in it, or another --out")


def lock_run_folder(out: Path) -> Any:
    """Own ``out`` for this process: an exclusive ``flock`` on ``out/.lock`` (released by the OS on any exit).

    A second run (train, distill, bench's child, --resume or --force) on the same folder gets a ``LakdError``
    naming the owner's pid instead of interleaving its metrics and checkpoints with the first one's.
    """
    import fcntl

    path = out / ".lock"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise LakdError(f"cannot lock run folder '{out}': {exc.strerror} ({path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LakdError(f"run folder '{out}' is in use by another lakd process (pid {owner}); wait for it to "
                        "finish or stop it (it checkpoints on SIGTERM), or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _clear_run_files(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _config_from_args(cls: type, args: argparse.Namespace, command_flags: dict[str, Any]) -> Any:
    """Defaults <- -c files <- convenience flags <- KEY=VALUE overrides. ``--resume`` reuses the run's config."""
    from lakd.config import build_config

    flags = {"data.dataset": args.dataset, "data.root": args.data_root, "train.epochs": args.epochs,
             "optim.lr": args.lr, "data.batch_size": args.batch_size, "train.seed": args.seed,
             "train.device": args.device, "train.precision": args.precision, "out": args.out,
             "train.progress": False if args.no_progress else None, **command_flags}
    files = list(args.config)
    saved = Path(args.out) / "config.yaml" if args.resume and args.out else None
    if saved is not None and saved.is_file() and not files:
        files = [str(saved)]  # resume with the run's own config
    cfg = build_config(cls, files, args.overrides, flags)
    if saved is not None and saved.is_file():
        check_resume_config(cfg, saved)
    return cfg


# Keys a resumed run may change: they do not change what is computed, only how it is shown or run.
RESUME_MAY_CHANGE = ("train.progress", "train.threads", "train.tensorboard", "data.workers", "data.root", "out")


def check_resume_config(cfg: Any, saved: Path) -> None:
    """``--resume`` continues a run exactly as configured: a key that differs from its ``config.yaml`` (another
    epoch count, lr, method parameter, or an edited config file) is refused, naming the keys."""
    import yaml

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("params", "per_method"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    try:
        before = flat(yaml.safe_load(saved.read_text()) or {})
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise LakdError(f"--resume: the run's '{saved}' is unreadable ({type(exc).__name__}); it cannot be "
                        "checked against this command") from None
    now = flat(cfg.to_dict())
    changed = [k for k in sorted(set(before) | set(now))
               if k not in RESUME_MAY_CHANGE and before.get(k) != now.get(k)]
    if "train.epochs" in changed:  # extending (or shortening) a run is allowed, and said
        changed.remove("train.epochs")
        print(f"lakd: note: --resume with train.epochs {before.get('train.epochs')} -> {now.get('train.epochs')}: "
              "the remaining epochs follow the new schedule, so the run is not the same as an uninterrupted one "
              "of the new length", file=sys.stderr)
    if changed:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed[:5])
        raise LakdError(f"--resume continues the run as it was configured, but {len(changed)} setting(s) differ "
                        f"from '{saved}': {shown}{', ...' if len(changed) > 5 else ''}. Resume with the same "
                        "settings, or start a new run (--out elsewhere, or --force) to change them")


# -- commands -----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from lakd.config import RunConfig
    from lakd.models import list_models

    if args.list_models:
        print("\n".join(list_models()))
        return 0
    cfg: RunConfig = _config_from_args(RunConfig, args, {"model.name": args.model,
                                                          "model.init_weights": args.init_weights})
    check_model_name(cfg.model.name)
    out = Path(cfg.out or f"runs/{cfg.model.name}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    _prepare_out_dir(out, args.resume, args.force)
    return _run_training(cfg, out, args.resume, args.force, argv=args.argv)


def cmd_distill(args: argparse.Namespace) -> int:
    from lakd.config import DistillRunConfig
    from lakd.distill import list_methods, make_params, method_class

    if args.list_methods:
        print("\n".join(list_methods()))
        return 0
    flags = {"distill.method": args.method, "distill.teacher": args.teacher, "model.name": args.student,
             "distill.teacher_weights": args.teacher_weights}
    cfg: DistillRunConfig = _config_from_args(DistillRunConfig, args, flags)
    method_class(cfg.distill.method)
    make_params(cfg.distill.method, cfg.distill.resolved_params())  # validate before any work
    check_model_name(cfg.model.name)
    needs_teacher = cfg.distill.method != "vanilla"
    if needs_teacher and not cfg.distill.teacher:
        raise LakdError(f"method '{cfg.distill.method}' needs a teacher: pass --teacher runs/<teacher>/best.pt "
                        "(a checkpoint written by `lakd train`)")
    teacher_ckpt = _teacher_source(cfg.distill) if cfg.distill.teacher else None
    out = Path(cfg.out or f"runs/{cfg.distill.method}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _prepare_out_dir(out, args.resume, args.force)
    return _run_training(cfg, out, args.resume, args.force, argv=args.argv, teacher_ckpt=teacher_ckpt)


def _load_teacher_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    from lakd.engine import load_checkpoint
    from lakd.engine.checkpoint import checkpoint_meta

    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    try:
        check_model_name(meta["arch"])
    except LakdError as exc:
        raise LakdError(f"teacher checkpoint '{path}': {exc}") from None
    return ckpt, meta, path


def _teacher_source(distill: Any) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """``(checkpoint, meta, where)`` of the teacher: a lakd checkpoint, or a model name with a weights file (then
    the checkpoint is None and the weights are read when the teacher is built, before any file is written)."""
    from lakd.models import is_known_model

    teacher, weights = distill.teacher, distill.teacher_weights
    if Path(teacher).is_file() or not is_known_model(teacher):
        if weights:
            raise LakdError(f"distill.teacher_weights is for a teacher given by its architecture name; '{teacher}' "
                            "is a checkpoint, which holds its weights: leave out --teacher-weights")
        if not Path(teacher).exists() and (":" in teacher or teacher.isidentifier()):
            check_model_name(teacher)  # a mistyped name: say so rather than 'checkpoint does not exist'
        return _load_teacher_checkpoint(teacher)
    if not weights:
        raise LakdError(f"teacher '{teacher}' is an architecture name: give its weights with --teacher-weights FILE "
                        "(a state_dict file), or pass a checkpoint written by `lakd train`")
    if not Path(weights).is_file():
        raise LakdError(f"teacher weights file '{weights}' does not exist")
    return None, {"arch": teacher, "weights": weights, "key_map": distill.teacher_key_map}, weights


def _build_teacher(teacher_ckpt: tuple[dict[str, Any] | None, dict[str, Any], str], splits: Any) -> Any:
    """The teacher model with its weights; class count and dataset must match the distillation data."""

    ckpt, meta, path = teacher_ckpt
    if ckpt is None:  # a model name and a foreign weights file: the head must fit the dataset
        from lakd.models import build_model
        from lakd.models.adapter import user_model
        from lakd.models.weights import load_weights_into

        try:
            teacher = build_model(meta["arch"], splits.num_classes)
        except ValueError as exc:
            raise LakdError(f"teacher '{meta['arch']}': {exc}") from None
        load_weights_into(user_model(teacher), path, meta["key_map"], "teacher")
        return teacher
    if meta["num_classes"] != splits.num_classes:
        raise LakdError(f"teacher '{path}' ({meta['arch']}) predicts {meta['num_classes']} classes but dataset "
                        f"'{splits.name}' has {splits.num_classes}: use a teacher trained on {splits.name}")
    if meta.get("dataset") and meta["dataset"] != splits.name:
        raise LakdError(f"teacher '{path}' was trained on '{meta['dataset']}', not on '{splits.name}'")
    from lakd.engine.checkpoint import model_from_checkpoint
    from lakd.models.base import feed_with_normalisation

    teacher = model_from_checkpoint(ckpt, meta, f"teacher '{path}'")
    if meta.get("mean") and meta.get("std"):  # a teacher trained with another normalisation sees its own
        feed_with_normalisation(teacher, tuple(splits.mean), tuple(splits.std), tuple(meta["mean"]),
                                tuple(meta["std"]))
    return teacher


def _run_training(
    cfg: Any, out: Path, resume: bool, force: bool, argv: list[str], teacher_ckpt: Any = None
) -> int:
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
        return _train_in_process(cfg, out, resume, force, argv, teacher_ckpt, runtime, dist_env)
    finally:
        shutdown()


def _train_in_process(
    cfg: Any, out: Path, resume: bool, force: bool, argv: list[str], teacher_ckpt: Any, runtime: Any, dist_env: Any
) -> int:
    import torch
    import torch.distributed as dist

    from lakd.config import dump_yaml
    from lakd.data import load_splits
    from lakd.engine import SupervisedTask, Trainer, seed_everything
    from lakd.engine.trainer import TrainingStopped
    from lakd.models import build_model
    from lakd.models.base import check_input_size

    main_rank = dist_env.is_main
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    d = cfg.data
    splits = load_splits(d.dataset, d.root, d.val_size, d.split_seed, d.path, d.synthetic_size,
                         d.synthetic_classes, d.train_limit, d.test_limit, stream=d.stream, image_size=d.image_size)
    if d.mean is not None:
        splits.mean, splits.std = tuple(d.mean), tuple(d.std)
    teacher = _build_teacher(teacher_ckpt, splits) if teacher_ckpt is not None else None
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model.name, splits.num_classes)
    if cfg.model.init_weights:
        from lakd.models.adapter import user_model
        from lakd.models.weights import load_weights_into

        load_weights_into(user_model(model), cfg.model.init_weights, cfg.model.init_key_map,
                          "student" if teacher is not None else "model")
    input_shape = (3, splits.image_size, splits.image_size)
    check_input_size(model, "student" if teacher is not None else "", input_shape)
    if teacher is not None:
        check_input_size(teacher, "teacher", input_shape)
    distill = getattr(cfg, "distill", None)
    if distill is None:
        task = SupervisedTask(model, cfg.train.label_smoothing)
    else:
        from lakd.distill import build_distiller, params_as_dict

        task = build_distiller(distill.method, model, teacher, distill.resolved_params(),
                               input_shape=input_shape, total_epochs=cfg.train.epochs,
                               train_labels=torch.as_tensor(splits.train.y))
    per_process = d.batch_size // dist_env.world_size
    if per_process < task.min_batch_size:
        raise LakdError(f"data.batch_size = {d.batch_size} gives {per_process} samples per process, but method "
                        f"'{distill.method}' needs at least {task.min_batch_size}: {task.min_batch_reason}")
    task = task.to(runtime.device)
    if runtime.channels_last and teacher is not None:
        teacher.to(memory_format=torch.channels_last)
    meta = {"arch": cfg.model.name, "num_classes": splits.num_classes, "dataset": splits.name,
            "classes": list(splits.train.classes), "mean": list(splits.mean), "std": list(splits.std),
            "image_size": splits.image_size, "val_size": d.val_size, "split_seed": d.split_seed,
            "data": {"dataset": d.dataset, "path": d.path, "val_size": d.val_size, "split_seed": d.split_seed,
                     "synthetic_size": d.synthetic_size, "synthetic_classes": d.synthetic_classes,
                     "stream": d.stream, "image_size": d.image_size},
            "lakd_version": __version__}
    if distill is not None:
        meta["distill"] = {"method": distill.method, "teacher": distill.teacher,
                           "teacher_arch": teacher_ckpt[1]["arch"] if teacher_ckpt else None,
                           # every parameter as resolved (defaults included), so runs made before and after a
                           # default changed can be told apart; the overrides alone are in config.yaml
                           "params": params_as_dict(task.params)}
    trainer = Trainer(task, cfg, splits, runtime, out, meta, log=print if main_rank else (lambda _m: None),
                      dist_env=dist_env)
    if dist_env.enabled:
        dist.barrier()  # every rank has checked its input before rank 0 touches the run folder
    if resume:
        trainer.resume_from(out / "last.pt")
    if not main_rank:
        try:
            trainer.fit()
        except TrainingStopped as stop:
            return 128 + stop.signum
        return 0
    # Everything that can fail on bad input has run; only now touch the run folder.
    out.mkdir(parents=True, exist_ok=True)
    from lakd.atomic import atomic_write_text

    lock = lock_run_folder(out)  # this process owns the folder until it returns; a second writer gets an error
    try:
        if force:
            _clear_run_files(out)
        # on --resume too: only keys check_resume_config allows can differ, and a later resume compares with these
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        run_info = {"command": " ".join(["lakd", *(shlex.quote(a) for a in argv)]), "config": cfg.to_dict(),
                    "env": {k: os.environ[k] for k in ("LAKD_DATA", "LAKD_CACHE") if k in os.environ},
                    "environment": {**environment_info(runtime), "world_size": dist_env.world_size},
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "data": {"train": len(splits.train), "val": len(splits.val) if splits.val else 0,
                             "test": len(splits.test)}}
        atomic_write_text(out / "run.json", json.dumps(run_info, indent=2))
        what = "training "
        if distill is not None:
            what = f"distilling ({distill.method}) {teacher_ckpt[1]['arch'] if teacher_ckpt else 'no teacher'} -> "
        procs = f" x {dist_env.world_size} processes" if dist_env.enabled else ""
        print(f"{what}{cfg.model.name} on {splits.name} ({len(splits.train)} train / "
              f"{run_info['data']['val']} val / {len(splits.test)} test) on {runtime.describe()}{procs} -> {out}")
        try:
            summary = trainer.fit()
        except TrainingStopped as stop:
            print(f"\n{stop}: checkpoint saved to {stop.checkpoint}; continue with the same command plus --resume",
                  file=sys.stderr)
            return 128 + stop.signum
        except KeyboardInterrupt:
            print(f"\ninterrupted: {out / 'last.pt'} holds the last saved state; continue with --resume",
                  file=sys.stderr)
            return 130
        summary["out"] = str(out)
        text = json.dumps({**summary, **run_info}, indent=2).encode()
        from lakd.atomic import atomic_write

        atomic_write(out / "summary.json", lambda f: f.write(text))  # a torn summary would block report/bench
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        os.close(lock)


def evaluate_checkpoint(
    path: str, split: str = "test", dataset: str | None = None, data_root: str | None = None,
    device: str = "auto", precision: str = "auto", batch_size: int = 500,
) -> dict[str, Any]:
    """Top-1/top-5/loss/img/s of a checkpoint's model on one split of its dataset (or ``dataset``)."""
    import torch

    from lakd.data import load_splits
    from lakd.engine import evaluate, load_checkpoint, resolve_runtime
    from lakd.engine.checkpoint import checkpoint_meta, model_from_checkpoint

    ckpt = load_checkpoint(path)
    meta = checkpoint_meta(ckpt, path)
    runtime = resolve_runtime(device, precision, "auto")
    data = dict(meta.get("data") or {"dataset": meta.get("dataset", "cifar10")})
    if dataset and dataset != data.get("dataset"):
        data = {"dataset": dataset}
    dataset = data.pop("dataset")
    if split == "test":
        data["val_size"] = 0  # the test split does not depend on the validation carve-out
    splits = load_splits(dataset, data_root, **data)
    if splits.num_classes != meta["num_classes"]:
        raise LakdError(f"checkpoint '{path}' predicts {meta['num_classes']} classes but dataset "
                        f"'{dataset}' has {splits.num_classes}")
    model = model_from_checkpoint(ckpt, meta, f"checkpoint '{path}'").to(runtime.device)
    from lakd.engine.trainer import non_finite_tensors

    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise LakdError(f"checkpoint '{path}' holds non-finite weights ({', '.join(bad[:3])}); it cannot be "
                        "evaluated — it was not written by a finished lakd run")
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    arrays = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
    if arrays is None:
        raise LakdError("--split val: this checkpoint was trained without a validation split")
    mean = tuple(meta.get("mean", splits.mean))
    std = tuple(meta.get("std", splits.std))
    result = evaluate(model, arrays, mean, std, runtime, batch_size)
    result.update({"ckpt": str(path), "arch": meta["arch"], "dataset": dataset, "split": split,
                   "images": len(arrays), "device": runtime.describe()})
    return result


def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.ckpt, args.split, args.dataset, args.data_root, args.device, args.precision,
                                 args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['arch']} on {result['dataset']}/{args.split} ({result['images']} images, "
              f"{result['device']}): top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"loss {result['loss']:.4f}  {result['img_per_s']:.0f} img/s")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from lakd.data.cifar import CIFAR_NAMES, find_cifar_forms
    from lakd.data.root import decoded_cache_dir, resolve_data_root

    root, how = resolve_data_root(args.root)
    if args.data_command == "download":
        from lakd.data.download import download_cifar

        root.mkdir(parents=True, exist_ok=True)
        path = download_cifar(args.name, root, url=args.url, md5=args.md5)
        print(f"{args.name} is ready in {path} (data root {root}, chosen by {how})")
        return 0
    if args.data_command == "info":
        print(f"data root: {root} (chosen by {how})")
        print(f"decoded cache: {decoded_cache_dir(root)}")
        for name in CIFAR_NAMES:
            forms = find_cifar_forms(name, root) if root.is_dir() else []
            found = ", ".join(f"{form} at {path}" for form, path in forms) or "not found"
            print(f"  {name}: {found}")
        imagenet = root / "imagenet"
        have = [s for s in ("train", "val", "test") if (imagenet / s).is_dir()]
        print(f"  imagenet: {'folders ' + ', '.join(have) + ' at ' + str(imagenet) if have else 'not found'} "
              "(streamed from disk, never cached)")
        return 0
    raise LakdError("lakd data needs an action: download or info (see `lakd data --help`)")


def cmd_bench(args: argparse.Namespace) -> int:
    from lakd.bench import current_command, load_protocol, plan_runs, run_bench, split_list, summarise

    seeds = split_list(args.seeds)
    try:
        seed_list = [int(s) for s in seeds] if seeds else None
    except ValueError:
        raise LakdError(f"--seeds must be integers, got {' '.join(seeds)}") from None
    if args.epochs is not None and args.epochs < 1:
        raise LakdError(f"--epochs must be >= 1, got {args.epochs}")
    if args.summary_only:
        protocol = load_protocol(args.protocol)
        runs = plan_runs(protocol, split_list(args.methods) or None, seed_list, split_list(args.pairs) or None,
                         args.epochs, Path(args.runs_dir), Path(args.results_dir))
        folders = sorted({r.result_path.parent for r in runs})
        for folder in folders:
            print(summarise(folder, title=str(folder.relative_to(Path(args.results_dir))))["table"])
        return 0
    return run_bench(args.protocol, split_list(args.methods) or None, seed_list, split_list(args.pairs) or None,
                     args.epochs, args.runs_dir, args.results_dir, args.data_root, progress=not args.no_progress,
                     dry_run=args.dry_run, bench_command=current_command())


def cmd_report(args: argparse.Namespace) -> int:
    from lakd.report import load_run, loss_terms, metrics_table, plot_curves, summary_line

    records = [load_run(r) for r in args.runs]
    for record in records:
        print(f"== {record.path}  ({record.run.get('command', 'command unknown')})")
        print(metrics_table(record))
        terms = loss_terms(record.epochs)
        if terms and record.epochs:
            last = record.epochs[-1]
            print("last epoch loss terms: " + "  ".join(f"{t[6:]} {last[t]:.4f}" for t in terms if t in last))
        print(summary_line(record) + "\n")
    if args.out:
        out = Path(args.out)
    else:
        out = records[0].path / "curves.png" if len(records) == 1 else Path("compare.png")
    labels = [r.path.name or str(r.path) for r in records]
    if len(set(labels)) < len(labels):
        labels = [str(r.path) for r in records]
    plot_curves({label: r.epochs for label, r in zip(labels, records, strict=True)}, out)
    print(f"curves: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lakd.demo import run_demo

    return run_demo(args)


def cmd_export(args: argparse.Namespace) -> int:
    from lakd.export import export_checkpoint

    result = export_checkpoint(args.ckpt, args.out, args.format, force=args.force)
    print(f"{result['arch']} ({result['params']:,} parameters, {result['num_classes']} classes) -> {result['path']} "
          f"({result['format']}, {result['bytes'] / 1e6:.1f} MB)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from lakd.explain import explain_checkpoints

    result = explain_checkpoints(args.teacher, args.student, before=args.before, images=args.images,
                                 data_root=args.data_root, out=args.out, seed=args.seed)
    for m in result["modules"]:
        before = m.get("similarity_before")
        extra = f"  (before: {before:.3f})" if before is not None else ""
        print(f"module {m['module']} <- teacher stage {m['teacher_stage']}: NDAM similarity "
              f"{m['similarity']:.3f}{extra}")
    print(f"picture: {result['path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (KEY=VALUE) may sit between options: collect the ones argparse left over.
    args, leftover = parser.parse_known_args(argv)
    stray = [a for a in leftover if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if leftover:
        args.overrides = [*args.overrides, *leftover]
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in run.json as the exact command
    handlers = {"train": cmd_train, "distill": cmd_distill, "eval": cmd_eval, "data": cmd_data, "bench": cmd_bench,
                "report": cmd_report, "demo": cmd_demo, "explain": cmd_explain, "export": cmd_export}
    try:
        return handlers[args.command](args)
    except LakdError as exc:
        print(f"lakd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a read-only or full location, a path that is a folder: one line, no traceback
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"lakd: error: cannot use{where}: {exc.strerror or exc}; check the path, its permissions and the free "
              "space", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
