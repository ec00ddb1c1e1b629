"""benchmarks/refresh_tables.py puts each table command's output where its stale table stood, and nothing else moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import load_script

REFRESH = load_script("refresh_tables.py")
CMP = "python benchmarks/comparison_table.py benchmarks/results/cifar100-strong/vgg13_mobilenetv2 \\\n  --speed s.json"
CURVES = "python benchmarks/learning_curves.py benchmarks/results/x --methods kd --epochs 1"

NEW_CMP = """| method | seeds | test at best val | last test | val top-1 | img/s | vs KD | peak MB | saved | vs KD |
|---|---|---|---|---|---|---|---|---|---|
| dkd | 0,1 | 46.36 ± 0.14 | 46.36 ± 0.14 | 46.19 ± 0.18 | 372 | 1.05× | 901 | – | – |
| lakd-local | 0 | 19.69 | 19.70 | 19.81 | 347† | 0.98×† | 868† | 129.7 | 0.61× |

† speed from `b.json`, relative to its own KD (img/s of two measurements do not compare)
"""
NEW_CURVES = "| method | seeds | epoch 1 |\n|---|---|---|\n| kd | 0 | 12.0 |\n"


def fake_run(argv: list[str]) -> str:
    return NEW_CMP if argv[0] == "benchmarks/comparison_table.py" else NEW_CURVES


DOC = f"""# Results

Some text.
```bash
LAKD_DATA=../shared/data lakd bench cifar100-strong --summary-only
{CMP}
```
The table, sorted by validation.
| method | seeds | test | old columns |
|---|---|---|---|
| dkd | 0 | 46.46 | x |
| at | 0 | 4.79 | x |

† an old note
†† another old note

Curves, after a block of something else:
```bash
{CURVES}
```
```text
| not | a table of this command |
```
| method | seeds | epoch 1 |
|---|---|---|
| kd | 0 | 9.9 |

The end.
"""


def test_each_stale_table_and_its_notes_are_replaced_in_place() -> None:
    new = REFRESH.refresh_doc(DOC, fake_run)
    assert NEW_CMP.strip() in new and NEW_CURVES.strip() in new
    assert "4.79" not in new and "an old note" not in new and "9.9" not in new
    assert "| not | a table of this command |" in new  # another code block is left alone
    outside = [line for line in DOC.splitlines() if not line.startswith(("|", "†"))]
    assert [line for line in new.splitlines() if not line.startswith(("|", "†"))] == outside
    assert REFRESH.refresh_doc(new, fake_run) == new  # a fresh doc stays as it is


def test_a_command_without_its_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no table under `benchmarks/learning_curves.py"):
        REFRESH.refresh_doc(f"```bash\n{CURVES}\n```\ntext only\n", fake_run)
    two_blocks = f"```bash\n{CURVES}\n```\n```bash\n{CMP}\n```\n| method |\n|---|\n"
    with pytest.raises(ValueError, match="line 4: the next table command comes before the table"):
        REFRESH.refresh_doc(two_blocks, fake_run)


TARGETS = "python benchmarks/cifar100_strong_study.py targets vgg13_mobilenetv2   # exit 2 while seeds are missing"
NEW_TARGETS = "vgg13_mobilenetv2, test top-1:\n  lakd 38.43 ± 0.43 (3 seeds): missed by 8.19\n"


def test_a_text_command_rewrites_the_text_block_under_it() -> None:
    doc = f"Targets:\n```bash\n{TARGETS}\n```\nOn this pair:\n```text\nnot all seeds are in yet\n```\nAfter.\n"
    seen: list[list[str]] = []

    def run(argv: list[str]) -> str:
        seen.append(argv)
        return NEW_TARGETS

    new = REFRESH.refresh_doc(doc, run)
    assert seen == [["benchmarks/cifar100_strong_study.py", "targets", "vgg13_mobilenetv2"]]
    assert new == doc.replace("not all seeds are in yet", NEW_TARGETS.strip())
    assert REFRESH.refresh_doc(new, run) == new
    report = "python benchmarks/cifar100_strong_study.py report"
    assert REFRESH.table_commands(f"{report}\n{TARGETS}\npython benchmarks/other.py") == [
        ["benchmarks/cifar100_strong_study.py", "report"],
        ["benchmarks/cifar100_strong_study.py", "targets", "vgg13_mobilenetv2"]]
    with pytest.raises(ValueError, match="no ```text block under `benchmarks/cifar100_strong_study.py targets"):
        REFRESH.refresh_doc(f"```bash\n{TARGETS}\n```\n| a table |\n|---|\n", run)
    with pytest.raises(ValueError, match="line 4: the ```text block under .* is never closed"):
        REFRESH.refresh_doc(f"```bash\n{TARGETS}\n```\n```text\nold\n", run)


def test_readme_rows_come_from_the_docs_comparison_table() -> None:
    readme = "Intro.\n\n| VGG-13 → MobileNetV2 | seeds | test top-1 |\n|---|---|---|\n| DKD | 0 | 1.00 |\n\nAfter.\n"
    new = REFRESH.refresh_readme(readme, DOC, fake_run)
    assert new.splitlines()[2:7] == [
        "| VGG-13 → MobileNetV2 | seeds | test top-1 | val top-1 | img/s | vs KD | peak MB |",
        "|---|---|---|---|---|---|---|",
        "| DKD | 0,1 | 46.36 ± 0.14 | 46.19 ± 0.18 | 372 | 1.05× | 901 |",
        "| LAKD local modules (`lakd-local`) | 0 | 19.69 | 19.81 | 347† | 0.98×† | 868† |",
        "",
    ]
    assert new.startswith("Intro.\n") and new.endswith("\nAfter.\n")
    with pytest.raises(ValueError, match="README has no table headed `| VGG-13 → MobileNetV2 | seeds |`"):
        REFRESH.refresh_readme("no table here\n", DOC, fake_run)


def test_the_command_line_checks_then_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    docs = (tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "benchmarks-cifar100.md")
    docs[0].parent.mkdir()
    docs[0].write_text("nothing to refresh\n")
    docs[1].write_text(DOC)
    readme = tmp_path / "README.md"
    readme.write_text("| VGG-13 → MobileNetV2 | seeds |\n|---|---|\n| DKD | 0 |\n")
    for name, value in {"ROOT": tmp_path, "DOCS": docs, "README": readme, "run_in_repo": fake_run}.items():
        monkeypatch.setattr(REFRESH, name, value)
    monkeypatch.setattr("sys.argv", ["refresh_tables.py", "--check"])
    with pytest.raises(SystemExit) as stale:
        REFRESH.main()
    assert stale.value.code == 1 and docs[1].read_text() == DOC  # --check writes nothing
    assert capsys.readouterr().out.splitlines() == ["stale: docs/benchmarks-cifar100.md", "stale: README.md"]
    monkeypatch.setattr("sys.argv", ["refresh_tables.py"])
    REFRESH.main()
    assert NEW_CMP.strip() in docs[1].read_text() and "| DKD | 0,1 | 46.36 ± 0.14 |" in readme.read_text()
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["refresh_tables.py", "--check"])
    REFRESH.main()
    assert capsys.readouterr().out == "every table is up to date\n"


def test_a_failing_table_command_stops_with_its_error() -> None:
    with pytest.raises(SystemExit, match="error: `python benchmarks/learning_curves.py nowhere` failed"):
        REFRESH.run_in_repo(["benchmarks/learning_curves.py", "nowhere"])
