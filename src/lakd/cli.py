"""The ``lakd`` command line: train, eval, data.

Every user mistake (bad value, missing file, wrong checkpoint) ends as one ``lakd: error: ...`` line on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lakd import __version__
from lakd.errors import LakdError
from lakd.run import evaluate_checkpoint

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
  lakd distill -c configs/cifar10_cpu.yaml -c configs/methods/lakd.yaml distill.params.ndam_weight=2 --out runs/ndam2
  lakd distill --method kd --teacher runs/teacher-resnet56/best.pt --student resnet20 distill.params.temperature=2
  lakd distill --method lakd --teacher timm:resnet50 --teacher-weights resnet50.safetensors \\
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

    _add_training_commands(sub)
    _add_checkpoint_and_data_commands(sub)
    _add_benchmark_commands(sub)
    _add_output_commands(sub)
    return parser


def _add_training_commands(sub: Any) -> None:
    """``train`` and ``distill``."""
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


def _add_benchmark_commands(sub: Any) -> None:
    """``bench``, ``report`` and ``demo``."""
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
    p.add_argument("--epochs", type=int, default=None, help="student epochs per method (default 2; 1 with --tiny)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="training images per epoch (default 20000, a seeded random subset; all 192 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="synthetic data and tiny models: a 1-minute smoke run")
    p.add_argument("--force", action="store_true", help="start over in an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_checkpoint_and_data_commands(sub: Any) -> None:
    """``eval`` and ``data``."""
    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate a checkpoint's model.",
                       epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by lakd (last.pt / best.pt)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--dataset", help="override the dataset stored in the checkpoint")
    p.add_argument("--data-root", help="folder holding the datasets (else $LAKD_DATA)")
    p.add_argument("--data-path", help="the image folder to evaluate on (a folder the checkpoint records is read "
                                       "only when named here)")
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


def _add_output_commands(sub: Any) -> None:
    """``export`` and ``explain``."""
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
    p.add_argument("--data-path", help="the image folder the student was trained on (a folder a checkpoint records "
                                       "is read only when named here)")
    p.add_argument("--out", help="PNG path (default: ndam.png beside the student checkpoint)")


# -- helpers ------------------------------------------------------------------------------------------------


def _config_from_args(cls: type, args: argparse.Namespace, command_flags: dict[str, Any],
                      base: dict[str, Any] | None = None) -> Any:
    """Defaults <- ``base`` (a resumed run's recorded config, when no -c file is given) <- -c files <- convenience
    flags <- KEY=VALUE overrides."""
    from lakd.config import build_config

    flags = {"data.dataset": args.dataset, "data.root": args.data_root, "train.epochs": args.epochs,
             "optim.lr": args.lr, "data.batch_size": args.batch_size, "train.seed": args.seed,
             "train.device": args.device, "train.precision": args.precision, "out": args.out,
             "train.progress": False if args.no_progress else None, **command_flags}
    return build_config(cls, list(args.config), args.overrides, flags, base=None if args.config else base)


def _run(cls: type, args: argparse.Namespace, flags: dict[str, Any], default_out: Any) -> int:
    """argv -> config -> ``lakd.fitting.fit_config`` (which locks and judges the run folder, rebuilds a resume's
    settings on what its checkpoint records, checks, trains) -> exit code."""
    import shlex

    from lakd.engine.distributed import env_from_torchrun
    from lakd.engine.trainer import TrainingStopped
    from lakd.fitting import fit_config

    draft = _config_from_args(cls, args, flags)  # where the run goes (an `out:` key of a -c file counts too)
    out = Path(draft.out or default_out(draft))
    try:
        summary = fit_config(draft, out, command=" ".join(["lakd", *(shlex.quote(a) for a in args.argv)]),
                             resume=args.resume, force=args.force,
                             rebuild=lambda recorded: _config_from_args(cls, args, flags, base=recorded))
    except TrainingStopped as stop:
        print(f"\n{stop}: checkpoint saved to {stop.checkpoint}; continue with the same command plus --resume",
              file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        if not (out / "last.pt").is_file():
            raise  # before the first checkpoint: main's message
        print(f"\ninterrupted: {out / 'last.pt'} holds the last saved state; continue with --resume", file=sys.stderr)
        return 130
    if env_from_torchrun().is_main:
        print(json.dumps(summary.as_dict(), indent=2))
    return 0


# -- commands -----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from lakd.config import RunConfig
    from lakd.models import list_models

    if args.list_models:
        print("\n".join(list_models()))
        print("\nand any torchvision or timm classifier by name: torchvision:<name> (e.g. torchvision:resnet18), "
              "timm:<name> (e.g. timm:resnet50), with its stages found for you (README, 'Any model')")
        return 0

    return _run(RunConfig, args, {"model.name": args.model, "model.init_weights": args.init_weights},
                lambda cfg: f"runs/{cfg.model.name}-{cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def describe_methods() -> str:
    """Every method: its name, what it is (its registered summary) and its parameters with their defaults (the
    published recipe's), settable as ``distill.params.NAME=VALUE``."""
    import textwrap

    from lakd.distill import list_methods, make_params, method_class, params_as_dict

    blocks = []
    for name in list_methods():
        params = ", ".join(f"{k}={v}" for k, v in params_as_dict(make_params(name, {})).items())
        blocks.append(f"{name}: {method_class(name).summary}\n" + textwrap.fill(
            params, width=110, initial_indent="    ", subsequent_indent="    "))
    footer = "Defaults are each method's published recipe; set one with distill.params.NAME=VALUE."
    return "\n".join(blocks) + "\n\n" + footer


def cmd_distill(args: argparse.Namespace) -> int:
    from lakd.config import DistillRunConfig

    if args.list_methods:
        print(describe_methods())
        return 0
    flags = {"distill.method": args.method, "distill.teacher": args.teacher, "model.name": args.student,
             "distill.teacher_weights": args.teacher_weights}

    return _run(DistillRunConfig, args, flags,
                lambda cfg: f"runs/{cfg.distill.method}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise LakdError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = evaluate_checkpoint(args.ckpt, args.split, args.dataset, args.data_root, args.device, args.precision,
                                 args.batch_size, data_path=args.data_path)
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

    if args.data_command is None:
        raise LakdError("`lakd data` needs an action: `lakd data download cifar10` or `lakd data info` "
                        "(see `lakd data --help`)")
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

    return run_demo(args)  # each demo step is one lakd.fit call


def cmd_export(args: argparse.Namespace) -> int:
    from lakd.export import export_checkpoint

    result = export_checkpoint(args.ckpt, args.out, args.format, force=args.force)
    print(f"{result['arch']} ({result['params']:,} parameters, {result['num_classes']} classes) -> {result['path']} "
          f"({result['format']}, {result['bytes'] / 1e6:.1f} MB)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from lakd.explain import explain_checkpoints

    result = explain_checkpoints(args.teacher, args.student, before=args.before, images=args.images,
                                 data_root=args.data_root, out=args.out, seed=args.seed, data_path=args.data_path)
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
    except KeyboardInterrupt:  # Ctrl-C outside training (decoding, loading, writing): every write is atomic
        print("lakd: interrupted; nothing half-written was left (a run or a decode starts over next time)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lakd report RUN | head`: the reader stopped reading; nothing is wrong with the disk
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # what a shell reports for a pipe writer stopped by SIGPIPE (128 + 13)
    except OSError as exc:  # a read-only or full location, a path that is a folder: one line, no traceback
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"lakd: error: cannot use{where}: {exc.strerror or exc}; check the path, its permissions and the free "
              "space", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
