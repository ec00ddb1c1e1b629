"""benchmarks/comparison_table.py: accuracy from the runs, speed and memory from the clean measurements."""

from __future__ import annotations

from tests.scripts import load_script

table = load_script("comparison_table.py").table


def stat(mean: float, std: float | None = None) -> dict:
    return {"mean": mean, "std": std}


SUMMARY = {"methods": [
    {"method": "kd", "seeds": [0], "best_test_top1": stat(85.0), "last_test_top1": stat(84.9),
     "best_val_top1": stat(86.0)},
    {"method": "lakd", "seeds": [0, 1, 2], "best_test_top1": stat(87.27, 0.08), "last_test_top1": stat(87.2, 0.1),
     "best_val_top1": stat(87.9, 0.3)},
    {"method": "crd", "seeds": [0], "best_test_top1": stat(85.5), "last_test_top1": stat(85.5),
     "best_val_top1": stat(85.1)},
]}
SPEED = {"methods": {"kd": {"status": "ok", "img_per_s": 1000.0, "peak_mem_mb": 770.4},
                     "lakd": {"status": "ok", "img_per_s": 950.0, "peak_mem_mb": 790.6},
                     "crd": {"status": "failed"}}}
MEMORY = {"results": {"kd": {"saved_peak_mb": 200.0}, "lakd": {"saved_peak_mb": 120.0}}}


def test_rows_sorted_by_validation_with_ratios_to_kd() -> None:
    rows = table(SUMMARY, SPEED, MEMORY).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["lakd", "kd", "crd"]  # by val, not by test
    assert rows[0] == ("| lakd | 0,1,2 | 87.27 ± 0.08 | 87.20 ± 0.10 | 87.90 ± 0.30 | 950 | 0.95× | 791 | 120.0 | "
                       "0.60× |")
    assert rows[2].endswith("| 85.10 | – | – | – | – | – |")  # a failed speed run and an unmeasured memory: blank


def test_without_measurements_accuracy_only() -> None:
    assert table(SUMMARY, None, None).splitlines()[3].startswith("| kd | 0 | 85.00 | 84.90 | 86.00 | – |")


def test_a_later_speed_file_overrides_a_method_with_its_own_ratio() -> None:
    later = {"methods": {"kd": {"status": "ok", "img_per_s": 400.0},
                         "lakd": {"status": "ok", "img_per_s": 390.0, "peak_mem_mb": 811.0}},
             "paired_speed": {"base": "kd", "ratios": {"kd": 1.0, "lakd": 0.97}}}
    text = table(SUMMARY, [("first.json", SPEED), ("later.json", later)], MEMORY)
    rows = {r.split("|")[1].strip(): r for r in text.splitlines()[2:5]}
    assert "| 390† | 0.97×† | 811† |" in rows["lakd"]  # the later file's paired ratio, not 390 / 1000
    assert "| 1000 | 1.00× | 770 |" in rows["kd"]  # the reference row stays the first file's
    assert text.rstrip().endswith("speed from `later.json`, relative to its own KD (img/s of two measurements do "
                                  "not compare)")


def test_a_later_memory_file_overrides_a_method() -> None:
    later = {"results": {"crd": {"saved_peak_mb": 250.0}, "lakd": {"saved_peak_mb": 110.0}}}
    rows = {r.split("|")[1].strip(): r for r in table(SUMMARY, None, [MEMORY, later]).splitlines()[2:5]}
    assert rows["lakd"].endswith("| 110.0 | 0.55× |") and rows["crd"].endswith("| 250.0 | 1.25× |")
    assert rows["kd"].endswith("| 200.0 | 1.00× |")  # kept from the first file


def test_a_protocol_with_pairs_takes_the_pairs_own_measurements() -> None:
    both = {"methods": {"a/kd": {"status": "ok", "img_per_s": 600.0, "peak_mem_mb": 700.0},
                        "a/lakd": {"status": "ok", "img_per_s": 300.0, "peak_mem_mb": 710.0},
                        "b/kd": {"status": "ok", "img_per_s": 100.0, "peak_mem_mb": 900.0},
                        "b/lakd": {"status": "ok", "img_per_s": 90.0, "peak_mem_mb": 950.0}},
            "paired_speed": {"base": "a/kd", "ratios": {"a/kd": 1.0, "a/lakd": 0.52, "b/kd": 0.17, "b/lakd": 0.15}}}
    rows = {r.split("|")[1].strip(): r for r in table(SUMMARY, both, None, pair="b").splitlines()[2:5]}
    # the file's paired ratios are to its base (a/kd): the table's are to the pair's own KD (0.15 / 0.17)
    assert "| 90 | 0.88× | 950 |" in rows["lakd"] and "| 100 | 1.00× | 900 |" in rows["kd"]
    assert "| 300 |" not in table(SUMMARY, both, None, pair="b")
    rows = {r.split("|")[1].strip(): r for r in table(SUMMARY, both, None, pair="a").splitlines()[2:5]}
    assert "| 300 | 0.52× | 710 |" in rows["lakd"]


def test_a_later_file_is_noted_only_when_a_row_shown_uses_it() -> None:
    later = {"methods": {"kd": {"status": "ok", "img_per_s": 400.0}, "vanilla": {"status": "ok", "img_per_s": 700.0}}}
    text = table(SUMMARY, [("first.json", SPEED), ("later.json", later)], None)
    assert "later.json" not in text  # vanilla has no row here; kd's row stays the first file's
