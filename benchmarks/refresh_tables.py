"""Rewrite the results tables in the docs and README from the committed results, so that none is typed by hand.

Each ```bash block of ``docs/benchmarks.md`` and ``docs/benchmarks-cifar100.md`` that shows a table command
(``python benchmarks/comparison_table.py ...``, ``python benchmarks/learning_curves.py ...`` or the item-5 study's
``python benchmarks/cifar100_strong_study.py report``) is followed by that command's output, one markdown table
(with its † notes) per command in the block's order; a text command (``... cifar100_strong_study.py targets PAIR``)
by a ```text block holding its output. This script runs each command and puts its output in place of the table or
text that stands there. README's CIFAR-100 rows
(``| ResNet-56 → ResNet-20 | seeds | ...``) are then rewritten from the docs' comparison table of the same pair.
``tests/test_results_tables.py`` checks the result, so a table this script did not refresh fails the tests.

Run:  python benchmarks/refresh_tables.py            # rewrite what is stale, say which files changed
      python benchmarks/refresh_tables.py --check    # change nothing; exit 1 when a table is stale
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lakd.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "benchmarks-cifar100.md")
README = ROOT / "README.md"
TABLE_SCRIPTS = ("benchmarks/comparison_table.py", "benchmarks/learning_curves.py")
STUDY_SCRIPT = "benchmarks/cifar100_strong_study.py"  # its `report` prints a table, its `targets PAIR` plain text
# README's CIFAR-100 tables: the header's first cell a pair, each row's first cell a method's display name.
README_PAIRS = {"resnet56_resnet20": "ResNet-56 → ResNet-20", "vgg13_mobilenetv2": "VGG-13 → MobileNetV2"}
README_NAMES = {"lakd": "LAKD end to end (`lakd`)", "lakd-local": "LAKD local modules (`lakd-local`)", "kd": "KD",
                "fitnet": "FitNet", "at": "AT", "crd": "CRD", "reviewkd": "ReviewKD", "dkd": "DKD", "dist": "DIST",
                "kd-ls": "KD + LS", "nd": "ND", "vanilla": "vanilla"}

Runner = Callable[[list[str]], str]


def output_kind(argv: list[str]) -> str | None:
    """What a command (``argv`` without ``python``) prints into the docs: "table", "text", or nothing to refresh."""
    if (argv and argv[0] in TABLE_SCRIPTS) or argv[:2] == [STUDY_SCRIPT, "report"]:
        return "table"
    return "text" if argv[:2] == [STUDY_SCRIPT, "targets"] else None


def table_commands(block: str) -> list[list[str]]:
    """The table and text commands of one ```bash block's text, continuation lines joined, in order."""
    commands = []
    for command in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(command, comments=True)
        if argv[:1] == ["python"] and output_kind(argv[1:]):
            commands.append(argv[1:])
    return commands


def doc_table_commands(text: str) -> list[list[str]]:
    """Every table and text command shown in a markdown text's ```bash blocks."""
    return [argv for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for argv in table_commands(block)]


def run_in_repo(argv: list[str]) -> str:
    """What ``python <argv>`` prints, run from the repository root (a failing command stops the refresh)."""
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: `python {shlex.join(argv)}` failed ({done.stderr.strip() or done.returncode})")
    return done.stdout


def refresh_doc(text: str, run: Runner = run_in_repo) -> str:
    """TEXT with the table under each table command replaced by what the command prints now."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        i += 1
        if out[-1] != "```bash":
            continue
        start = i
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        out.extend(lines[start:i + 1])
        i += 1
        for argv in table_commands("\n".join(lines[start:i - 1])):
            if output_kind(argv) == "text":
                i = _replace_text_block(lines, i, out, argv, run)
                continue
            while i < len(lines) and not lines[i].startswith("|"):
                if lines[i].startswith("```"):  # another code block between the command and its table: kept
                    end = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines) - 1)
                    if lines[i] == "```bash" and table_commands("\n".join(lines[i + 1:end])):
                        raise ValueError(f"line {i + 1}: the next table command comes before the table of "
                                         f"`{shlex.join(argv)}`; put each command's output under its block")
                    out.extend(lines[i:end])
                    i = end
                out.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"no table under `{shlex.join(argv)}`; put the command's output under its block")
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            if i + 1 < len(lines) and lines[i] == "" and lines[i + 1].startswith("†"):  # the table's † notes
                i += 1
                while i < len(lines) and lines[i].startswith("†"):
                    i += 1
            out.extend(run(argv).strip().split("\n"))
    return "\n".join(out)


def _replace_text_block(lines: list[str], i: int, out: list[str], argv: list[str], run: Runner) -> int:
    """Copy LINES from I up to the next ```text block into OUT, then that block with ARGV's output; the next index."""
    while i < len(lines) and lines[i] != "```text":
        if lines[i].startswith(("|", "```")):  # a table or another code block first: the text is not where it belongs
            break
        out.append(lines[i])
        i += 1
    if i == len(lines) or lines[i] != "```text":
        raise ValueError(f"no ```text block under `{shlex.join(argv)}`; put the command's output under its block")
    end = next((k for k in range(i + 1, len(lines)) if lines[k] == "```"), None)
    if end is None:
        raise ValueError(f"line {i + 1}: the ```text block under `{shlex.join(argv)}` is never closed")
    out.extend(["```text", *run(argv).strip().split("\n"), "```"])
    return end + 1


def readme_rows(pair: str, printed: str) -> list[str]:
    """README's table for PAIR from a comparison table's output: the columns a reader compares, display names."""
    header = f"| {README_PAIRS[pair]} | seeds | test top-1 | val top-1 | img/s | vs KD | peak MB |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    body = [line for line in printed.splitlines() if line.startswith("| ")][1:]  # the rows below the header
    for line in body:
        method, seeds, test, _last, val, img, vs_kd, peak, *_ = (c.strip() for c in line.strip("|").split("|"))
        rows.append(f"| {README_NAMES[method]} | {seeds} | {test} | {val} | {img} | {vs_kd} | {peak} |")
    return rows


def refresh_readme(text: str, cifar100_doc: str, run: Runner = run_in_repo) -> str:
    """TEXT (README) with each CIFAR-100 pair's rows rewritten from the docs' comparison table of that pair."""
    lines = text.split("\n")
    for argv in doc_table_commands(cifar100_doc):
        pair = Path(argv[1]).name
        if argv[0] != TABLE_SCRIPTS[0] or pair not in README_PAIRS:
            continue
        prefix = f"| {README_PAIRS[pair]} | seeds |"
        start = next((k for k, line in enumerate(lines) if line.startswith(prefix)), None)
        if start is None:
            raise ValueError(f"README has no table headed `{prefix}`; the docs show one for {pair}")
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[start:end] = readme_rows(pair, run(argv))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is stale")
    args = parser.parse_args()
    printed: dict[tuple[str, ...], str] = {}

    def run(argv: list[str]) -> str:  # each command once: README reuses the docs' comparison tables
        if tuple(argv) not in printed:
            printed[tuple(argv)] = run_in_repo(argv)
        return printed[tuple(argv)]

    new: dict[Path, str] = {}
    for path in (*DOCS, README):
        try:
            text = path.read_text()
            new[path] = refresh_readme(text, new[DOCS[1]], run) if path == README else refresh_doc(text, run)
        except ValueError as exc:
            raise SystemExit(f"error: {path.relative_to(ROOT)}: {exc}") from None
    stale = [path for path, text in new.items() if text != path.read_text()]
    for path in stale:
        if not args.check:
            atomic_write_text(path, new[path])
        print(f"{'stale' if args.check else 'refreshed'}: {path.relative_to(ROOT)}")
    if not stale:
        print("every table is up to date")
    if args.check and stale:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
