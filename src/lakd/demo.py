"""``lakd demo``: the ten-minute tour a new user runs first.

Teacher (the committed CIFAR-10 resnet56, a given checkpoint, or a quickly trained one) -> resnet20 students
distilled with KD and with LAKD under the same budget -> a comparison table (top-1, img/s, peak memory, time),
training curves and NDAM pictures in the demo folder. Every step is one ``lakd.fit`` call, shown as the ``lakd``
command that does the same, so each sub-run folder is a normal run folder (config, metrics, checkpoints, run.json).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from lakd.atomic import atomic_write_text
from lakd.errors import LakdError
from lakd.resources import PACKAGE_ROOT

COMMITTED_TEACHER = PACKAGE_ROOT / "teachers" / "cifar10_resnet56_e8.pt"  # shipped with lakd
DEMO_METHODS = ("kd", "lakd")


def _step(command: list[str], **fit_args: Any) -> None:
    """One run through ``lakd.fit``, shown as the ``lakd`` command that does the same; a failure stops the demo
    with that run's message."""
    from lakd.fitting import fit

    print(f"\n$ lakd {' '.join(command)}", flush=True)
    try:
        fit(**fit_args)
    except LakdError as exc:
        raise LakdError(f"demo step failed: lakd {' '.join(command)}: {exc}") from None


def _check_data(root: str | None) -> None:
    from lakd.data.cifar import find_cifar_forms
    from lakd.data.root import resolve_data_root

    path, how = resolve_data_root(root)
    if not path.is_dir() or not find_cifar_forms("cifar10", path):
        raise LakdError(f"CIFAR-10 is not under the data root '{path}' (chosen by {how}): fetch it with "
                        f"`lakd data download cifar10 --root {path}`, or point --data-root / $LAKD_DATA at a "
                        "folder that has it (or try `lakd demo --tiny`, which needs no data)")


def comparison_rows(out: Path, methods: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for method in methods:
        summary = json.loads((out / method / "summary.json").read_text())
        rows.append({"method": method, "test_top1": summary["last_test_top1"], "val_top1": summary["last_val_top1"],
                     "best_test_top1": summary["best_test_top1"], "img_per_s": summary["train_img_per_s"],
                     "peak_mem_mb": summary["peak_mem_mb"], "wall_s": summary["fit_wall_s"],
                     "run": str(out / method)})
    return rows


def comparison_table(rows: list[dict[str, Any]], teacher_top1: float) -> str:
    lines = ["| method | test top-1 | val top-1 | img/s | peak MB | time |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['test_top1']:.2f} | {r['val_top1']:.2f} | {r['img_per_s']:.0f} | "
                     f"{r['peak_mem_mb']:.0f} | {r['wall_s'] / 60:.1f} min |")
    lines.append(f"\nteacher test top-1: {teacher_top1:.2f}")
    return "\n".join(lines)


class _DemoLog:
    """The runs' log lines, printed; the first student's early time estimate also becomes the whole demo's (its
    students train on the same budget), so the user knows the cost before it is spent."""

    def __init__(self, students: int) -> None:
        self.students, self.said = students, False

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        found = re.match(r"estimate: .*~([\d.]+) (min|h) of training left", line)
        if found and not self.said:
            self.said = True
            minutes = float(found.group(1)) * (60 if found.group(2) == "h" else 1) * self.students
            print(f"demo: about {minutes:.0f} min of training for its {self.students} students (from this one's first "
                  "steps), plus evaluation and pictures", flush=True)


def _settings(overrides: list[str]) -> dict[str, Any]:
    from lakd.config import parse_override

    return dict(parse_override(text) for text in overrides)


def run_demo(args: argparse.Namespace) -> int:
    """The tour: a teacher, then KD and LAKD students, each one ``lakd.fit`` call (an ordinary run folder)."""
    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise LakdError(f"demo folder '{out}' already exists and is not empty; use --force to redo it there, or "
                        "another --out")
    if (args.epochs is not None and args.epochs < 1) or (args.train_limit is not None and args.train_limit < 1):
        raise LakdError("--epochs and --train-limit must be >= 1")
    common = ["--no-progress"] if args.no_progress else []
    if args.data_root:
        common += ["--data-root", args.data_root]
    if args.tiny:  # synthetic images, tiny models: exercises every step in about a minute
        dataset, overrides = "synthetic", ["data.synthetic_size=256", "data.val_size=64", "data.eval_batch_size=128"]
        student, epochs, limit = "resnet8", args.epochs or 1, args.train_limit
    else:
        _check_data(args.data_root)
        dataset, overrides = "cifar10", ["data.val_size=5000"]
        student, epochs, limit = "resnet20", args.epochs or 2, args.train_limit or 20000
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    run_args = {"train": dataset, "progress": False if args.no_progress else None, "log": _DemoLog(len(DEMO_METHODS))}
    if args.force and out.exists():
        for name in ("teacher", *DEMO_METHODS):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    teacher = args.teacher
    if teacher is None and not args.tiny and COMMITTED_TEACHER.is_file():
        teacher = str(COMMITTED_TEACHER)
        print(f"teacher: the committed CIFAR-10 resnet56 ({teacher})")
    if teacher is None:
        arch = "resnet8" if args.tiny else "resnet32"
        print(f"teacher: none given or committed here, so training a quick {arch} teacher first (1 epoch; for real "
              "work train one with `lakd train -c configs/cifar10_teacher.yaml`)")
        _step(["train", "--model", arch, "--epochs", "1", "--out", str(out / "teacher"), "--dataset", dataset,
               *overrides, *common], student=arch, epochs=1, out=out / "teacher", settings=_settings(overrides),
              **{**run_args, "log": print})  # the teacher's estimate is not the students'
        teacher = str(out / "teacher" / "best.pt")

    for method in DEMO_METHODS:
        steps = [*overrides, *([f"data.train_limit={limit}"] if limit is not None else [])]
        _step(["distill", "--method", method, "--teacher", teacher, "--student", student, "--epochs", str(epochs),
               "--out", str(out / method), "--dataset", dataset, *steps, *common],
              student=student, teacher=teacher, method=method, epochs=epochs, out=out / method,
              settings=_settings(steps), **run_args)

    from lakd.explain import explain_checkpoints
    from lakd.report import plot_curves, read_jsonl

    rows = comparison_rows(out, DEMO_METHODS)
    curves = plot_curves({m: read_jsonl(out / m / "metrics.jsonl") for m in DEMO_METHODS}, out / "curves.png",
                         title=f"{student} students of {Path(teacher).name}")
    pictures = {}
    for method in DEMO_METHODS:
        result = explain_checkpoints(teacher, str(out / method / "best.pt"), images=6, data_root=args.data_root,
                                     out=str(out / f"ndam_{method}.png"))
        pictures[method] = result
    from lakd.run import evaluate_checkpoint

    teacher_top1 = evaluate_checkpoint(teacher, data_root=args.data_root)["top1"]
    table = comparison_table(rows, teacher_top1)
    similarity = "\n".join(
        f"NDAM similarity to the teacher, per module, {m}: "
        + ", ".join(f"{x['similarity']:.3f}" for x in pictures[m]["modules"]) for m in DEMO_METHODS)
    atomic_write_text(out / "comparison.md", table + "\n\n" + similarity + "\n")
    record = {"rows": rows, "teacher": teacher, "teacher_top1": teacher_top1, "student": student, "epochs": epochs,
              "train_limit": limit, "ndam": {m: pictures[m]["modules"] for m in DEMO_METHODS}}
    atomic_write_text(out / "comparison.json", json.dumps(record, indent=2))
    print("\n" + table + "\n\n" + similarity)
    print(f"\ndemo finished in {(time.perf_counter() - start) / 60:.1f} min. Outputs in {out}/:")
    print(f"  comparison.md / comparison.json   the table above\n  {curves.name:<33} training curves")
    for method in DEMO_METHODS:
        print(f"  ndam_{method}.png{'':<{20 - len(method)}}teacher vs {method} student activation maps")
    print(f"  {', '.join(DEMO_METHODS)}/ (+ teacher/ if trained)   ordinary run folders: `lakd report {out}/lakd`")
    return 0
