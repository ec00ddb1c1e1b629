"""benchmarks/cifar100_strong_study.py applies issue 31's pre-registered item-5 rules: when the study runs, which
variants go on to more seeds, and which go to the VGG pair, each at the 0.5-point boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    module = load_script("cifar100_strong_study.py")
    monkeypatch.setattr(module, "MAIN", tmp_path / "main")
    monkeypatch.setattr(module, "STUDY", tmp_path / "study")
    return module


def put(folder: Path, entry: str, seed: int, test: float, val: float, device: str = "cpu, bf16, channels_last") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{entry}-s{seed}.json").write_text(json.dumps(
        {"best_test_top1": test, "best_val_top1": val, "environment": {"device": device}}))


def three(folder: Path, entry: str, tests: tuple[float, float, float], val: float = 50.0) -> None:
    for seed, t in enumerate(tests):
        put(folder, entry, seed, t, val)


def test_behind_compares_three_seed_test_means_against_the_best_seeded_baseline(study, capsys) -> None:
    pair = study.MAIN / "p"
    three(pair, "lakd", (60.0, 61.0, 62.0))  # mean 61.0
    three(pair, "dkd", (60.4, 60.5, 60.6))   # mean 60.5: the best seeded baseline
    three(pair, "kd", (59.0, 59.0, 59.0))
    assert study.behind("p") == 2  # only two baselines have 3 seeds
    three(pair, "dist", (58.0, 58.0, 58.0))
    put(pair, "crd", 0, 70.0, 40.0)  # seed 0 only: not one of the three, not compared
    three(pair, "lakd-local", (70.0, 70.0, 70.0))  # LAKD's other form is not a baseline
    assert study.behind("p") == 1  # +0.50: ahead, no study
    assert "dkd 60.50" in capsys.readouterr().out
    put(pair, "lakd", 2, 61.99, 50.0)  # mean 60.997: +0.497 is not enough
    assert study.behind("p") == 0
    assert "NOT ahead" in capsys.readouterr().out


def test_missing_lakd_seed_means_not_decided(study) -> None:
    pair = study.MAIN / "p"
    for entry in ("kd", "dkd", "dist"):
        three(pair, entry, (50.0, 50.0, 50.0))
    put(pair, "lakd", 0, 70.0, 70.0)
    assert study.behind("p") == 2


def test_carried_and_confirmed_read_validation_only(study) -> None:
    main, variants = study.MAIN / study.STUDY_PAIR, study.STUDY / study.STUDY_PAIR
    for seed, val in enumerate((60.0, 61.0, 62.0)):  # frozen lakd: seed 0 val 60.0, mean 61.0
        put(main, "lakd", seed, 10.0, val)
    put(variants, "lakd-no-ndam", 0, 0.0, 60.5)   # exactly +0.5: carried
    put(variants, "lakd-no-feat", 0, 99.0, 60.49)  # test far higher, validation +0.49: not carried
    put(variants, "lakd-no-ramp", 0, 0.0, 65.0)   # carried
    assert study.carried() == ["lakd-no-ndam", "lakd-no-ramp"]
    assert study.confirmed() == []  # seeds 1-2 not in yet
    put(variants, "lakd-no-ndam", 1, 0.0, 61.0)
    put(variants, "lakd-no-ndam", 2, 0.0, 63.0)   # mean 61.5 = frozen + 0.5: confirmed
    put(variants, "lakd-no-ramp", 1, 0.0, 59.0)
    put(variants, "lakd-no-ramp", 2, 0.0, 59.0)   # mean 61.0: not confirmed despite its seed 0
    assert study.confirmed() == ["lakd-no-ndam"]


def test_the_variants_are_the_study_protocols_entries(study) -> None:
    import yaml

    protocol = yaml.safe_load((study.ROOT / "studies" / "lakd_parts_cifar100.yaml").read_text())
    assert tuple(protocol["methods"]) == (*study.VARIANTS, study.PRECISION_CONTROL)
    assert tuple(protocol["default_methods"]) == study.VARIANTS
    # the control is frozen `lakd` with its precision forced, nothing else
    assert protocol["methods"][study.PRECISION_CONTROL]["overrides"] == ["train.precision=fp32"]


def test_targets_state_both_item_4_targets_at_their_boundaries(study, tmp_path: Path, capsys) -> None:
    pair = study.MAIN / "p"
    three(pair, "lakd", (60.0, 61.0, 62.0))        # mean 61.0
    three(pair, "lakd-local", (60.5, 60.5, 60.5))  # -0.5: exactly within
    three(pair, "dkd", (60.4, 60.5, 60.6))         # mean 60.5: +0.5, met
    three(pair, "kd", (59.0, 59.0, 59.0))
    assert study.targets("p") == 2  # two seeded baselines only
    three(pair, "dist", (58.0, 58.0, 58.0))
    memory = tmp_path / "memory_{pair}.json"
    study.MEMORY = memory
    Path(str(memory).format(pair="p")).write_text(json.dumps(
        {"results": {"lakd": {"saved_peak_mb": 100.0}, "lakd-local": {"saved_peak_mb": 60.0}}}))
    assert study.targets("p") == 0
    out = capsys.readouterr().out
    assert "lakd 61.00 ± 1.00 (3 seeds), best baseline dkd 60.50 ± 0.10 (3 seeds): +0.50" in out
    assert "target lakd >= best + 0.5: met" in out
    assert "-0.50 against lakd, at 0.60x" in out and "<= 0.6x: met" in out
    put(pair, "lakd-local", 2, 60.3, 50.0)  # mean 60.433: 0.533 below lakd
    put(pair, "lakd", 2, 61.9, 50.0)        # mean 60.967: +0.467 over dkd
    study.targets("p")
    out = capsys.readouterr().out
    assert "missed by 0.03" in out and "<= 0.6x: missed" in out


def test_report_states_each_variant_against_frozen_lakd_and_what_the_rules_make_of_it(study) -> None:
    assert "not in yet" in study.report()
    main, variants = study.MAIN / study.STUDY_PAIR, study.STUDY / study.STUDY_PAIR
    for seed, val in enumerate((60.0, 61.0, 62.0)):  # frozen: seed 0 val 60.0, mean 61.0
        put(main, "lakd", seed, 58.0, val)
    put(variants, "lakd-no-ndam", 0, 57.0, 60.2)  # +0.2: not carried
    put(variants, "lakd-no-feat", 0, 57.0, 60.6)  # +0.6: carried, seeds 1-2 pending
    for seed, val in enumerate((61.0, 61.5, 62.0)):  # seed 0 +1.0, mean 61.5 = frozen + 0.5: confirmed
        put(variants, "lakd-no-ramp", seed, 59.0, val, "cpu, fp32, channels_last" if seed else "cpu, bf16")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in study.report().splitlines()[2:]}
    assert rows["lakd (frozen)"].startswith("| lakd (frozen) | 60.00 | | 61.00 |")
    assert "| 60.20 | +0.20 |" in rows["lakd-no-ndam"] and "not carried (needs >= 60.50)" in rows["lakd-no-ndam"]
    assert "57.00 (1 seed)" in rows["lakd-no-ndam"]
    assert rows["lakd-no-feat"].endswith("carried: seeds 1-2 |")
    assert "| 61.50 | +0.50 |" in rows["lakd-no-ramp"] and "confirmed: runs on the VGG pair" in rows["lakd-no-ramp"]
    assert "not run yet" in rows["lakd-logit-kd"]
    # the precision each run trained in is beside it, per seed where the seeds differ
    assert rows["lakd (frozen)"].endswith("| bf16 | |") and "| bf16 | not carried" in rows["lakd-no-ndam"]
    assert "| bf16 (s0), fp32 (s1 s2) | confirmed" in rows["lakd-no-ramp"]
    assert study.PRECISION_CONTROL not in rows  # not run: no row
    put(variants, study.PRECISION_CONTROL, 0, 58.5, 61.0, "cpu, fp32, channels_last")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in study.report().splitlines()[2:]}
    assert rows[study.PRECISION_CONTROL].startswith(f"| {study.PRECISION_CONTROL} | 61.00 | +1.00 |")
    assert rows[study.PRECISION_CONTROL].endswith("| 58.50 (1 seed) | fp32 | control: decides nothing |")
    assert study.carried() == ["lakd-no-feat", "lakd-no-ramp"]  # +1.00, but the control is never a candidate
