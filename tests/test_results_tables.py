"""The comparison and learning-curve tables in the docs are what their own commands print from the committed
results, and each protocol's summary.json agrees with the per-run JSONs beside it: a number typed by hand, or a
summary left stale after a new seed landed, fails here."""

from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
REFRESH = load_script("refresh_tables.py")  # the docs' table commands are found as the script that writes them does
DOCS = REFRESH.DOCS
TABLE_SCRIPTS = REFRESH.TABLE_SCRIPTS


CASES = [(doc, argv) for doc in DOCS for argv in REFRESH.doc_table_commands(doc.read_text())]
IDS = [f"{d.name}:{Path(a[0]).stem}:{i}" for i, (d, a) in enumerate(CASES)]


def test_the_docs_show_comparison_tables() -> None:
    assert {doc.name for doc, _ in CASES} == {"benchmarks.md", "benchmarks-cifar100.md"}
    assert {argv[0] for _, argv in CASES} == {*TABLE_SCRIPTS, REFRESH.STUDY_SCRIPT}
    assert {REFRESH.output_kind(argv) for _, argv in CASES} == {"table", "text"}


@pytest.mark.parametrize(("doc", "argv"), CASES, ids=IDS)
def test_each_docs_table_is_its_commands_output(doc: Path, argv: list[str]) -> None:
    printed = subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    if REFRESH.output_kind(argv) == "text":
        shown = f"```text\n{printed.strip()}\n```"
        assert shown in doc.read_text(), f"{doc.name}: the text under `{shlex.join(argv)}` is not its output"
        return
    assert printed.count("\n| ") >= 3  # a header, its rule and at least one row
    assert printed.strip() in doc.read_text(), f"{doc.name}: the table under `{shlex.join(argv)}` is not its output"


def _summaries() -> list[Path]:
    return sorted({ROOT / argv[1] / "summary.json" for _, argv in CASES if argv[0] == TABLE_SCRIPTS[0]})


@pytest.mark.parametrize("summary", _summaries(), ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_summary_agrees_with_the_runs_beside_it(summary: Path) -> None:
    entries = json.loads(summary.read_text())["methods"]
    for entry in entries:
        runs = [json.loads((summary.parent / f"{entry['method']}-s{seed}.json").read_text()) for seed in entry["seeds"]]
        names = (re.fullmatch(rf"{re.escape(entry['method'])}-s(\d+)\.json", p.name) for p in summary.parent.iterdir())
        on_disk = sorted(int(match[1]) for match in names if match)
        assert on_disk == sorted(entry["seeds"]), f"{entry['method']}: summary {entry['seeds']}, on disk {on_disk}"
        for key in ("best_test_top1", "best_val_top1", "last_test_top1"):
            values = [run[key] for run in runs]
            assert entry[key]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9), (entry["method"], key)
            if len(values) > 1:
                assert entry[key]["std"] == pytest.approx(statistics.stdev(values), abs=1e-9), (entry["method"], key)


DISPLAY = {name: method for method, name in REFRESH.README_NAMES.items()}


def _method(display: str) -> str:
    """README's display name -> the method: the one in backticks where it names one, else the known names."""
    named = re.search(r"`([a-z0-9-]+)`", display)
    return named.group(1) if named else DISPLAY[display.strip()]


def _table(lines: list[str], header_prefix: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the row cells of the markdown table whose header line starts with ``header_prefix``."""
    start = lines.index(next(line for line in lines if line.startswith(header_prefix)))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [c.strip() for c in lines[start].strip("|").split("|")], rows


def _summary(folder: str) -> dict[str, dict]:
    return {e["method"]: e for e in json.loads((ROOT / folder / "summary.json").read_text())["methods"]}


def test_readme_cifar10_row_is_the_summary() -> None:
    names, rows = _table((ROOT / "README.md").read_text().splitlines(), "| LAKD end to end (`lakd`, the default)")
    summary = _summary("benchmarks/results/cifar10-strong")
    cell = load_script("comparison_table.py")._cell  # the tables' own formatting of mean ± std
    assert len(rows) == 1 and len(names) == len(rows[0]) == len(summary)
    for name, value in zip(names, rows[0], strict=True):
        assert value == cell(summary[_method(name)], "best_test_top1"), name


README_PAIRS = REFRESH.README_PAIRS
CIFAR100_TABLES = [argv for doc, argv in CASES if doc.name == "benchmarks-cifar100.md" and argv[0] == TABLE_SCRIPTS[0]]


def test_each_cifar100_pair_with_a_docs_table_has_one_in_readme() -> None:
    """A pair's final table in the docs is in README too (the issue asks for both), row for row."""
    pairs = {Path(argv[1]).name for argv in CIFAR100_TABLES}
    assert "resnet56_resnet20" in pairs and pairs <= set(README_PAIRS)
    readme = (ROOT / "README.md").read_text().splitlines()
    for pair in sorted(pairs):
        assert any(line.startswith(f"| {README_PAIRS[pair]} | seeds |") for line in readme), pair


@pytest.mark.parametrize("argv", CIFAR100_TABLES, ids=lambda a: Path(a[1]).name)
def test_readme_cifar100_rows_are_the_docs_rows(argv: list[str]) -> None:
    _, rows = _table((ROOT / "README.md").read_text().splitlines(), f"| {README_PAIRS[Path(argv[1]).name]} | seeds |")
    printed = subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    _, doc_rows = _table(printed.splitlines(), "| method | seeds |")  # the docs' table, by the test above
    docs = {cells[0]: cells for cells in doc_rows}
    assert len(rows) == len(docs)
    for name, seeds, test, val, img, vs_kd, peak in rows:
        d = docs[_method(name)]
        assert [seeds, test, val, img, vs_kd, peak] == [d[1], d[2], d[4], d[5], d[6], d[7]], name
