"""benchmarks/method_speed.py: each protocol method's exact command, cut to two short epochs (no training here)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script


def _load() -> ModuleType:
    return load_script("method_speed.py")


def test_measure_runs_the_protocol_command_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = _load()
    seen: dict[str, list[str]] = {}

    class Failed:
        returncode, stderr = 2, "lakd: error: no data here"

    def fake_run(cmd: list[str], **_kw: object) -> Failed:
        seen["cmd"] = cmd
        return Failed()

    monkeypatch.setattr(ms.subprocess, "run", fake_run)
    command = ["distill", "-c", "configs/cifar10_strong.yaml", "-c", "configs/methods/dkd.yaml", "--seed", "0",
               "--out", "runs/x", "--no-progress"]
    result = ms.measure(command, steps=7, compile_choice="true")
    assert result["status"] == "failed" and "no data here" in result["reason"]
    cmd = seen["cmd"]
    assert cmd[cmd.index("--out") + 1] != "runs/x"  # never the protocol's own run folder
    # epochs cut by steps, the training set whole (CRD's memory bank is sized by it)
    assert "train.max_steps_per_epoch=7" in cmd and not any(a.startswith("data.train_limit") for a in cmd)
    assert "--epochs" in cmd and cmd[cmd.index("--epochs") + 1] == "2"
    assert "distill.compile=true" in cmd and "configs/methods/dkd.yaml" in cmd


def test_unknown_method_is_a_usage_error() -> None:
    ms = _load()
    with pytest.raises(SystemExit):
        ms.main(["cifar10-strong", "--methods", "kdd"])


def test_median_round_keeps_every_round_and_fails_on_any_failure() -> None:
    ms = _load()
    rounds = [{"status": "ok", "img_per_s": v, "peak_mem_mb": 1.0} for v in (900.0, 980.0, 950.0)]
    chosen = ms.median_round(rounds)
    assert chosen["img_per_s"] == 950.0 and chosen["img_per_s_rounds"] == [900.0, 980.0, 950.0]
    assert ms.median_round(rounds[:2])["img_per_s"] == 900.0  # even count: the lower middle
    assert "img_per_s_rounds" not in ms.median_round(rounds[:1])
    failed = {"status": "failed", "exit_code": 1, "reason": "x", "command": "lakd distill"}
    assert ms.median_round([rounds[0], failed])["status"] == "failed"


def test_repeats_must_be_positive() -> None:
    ms = _load()
    with pytest.raises(SystemExit):
        ms.main(["cifar10-strong", "--methods", "kd", "--repeats", "0"])


def test_vary_measures_each_value_interleaved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ms = _load()
    calls: list[tuple[str, tuple[str, ...]]] = []

    def fake_measure(command: list[str], steps: int, compile_choice: str,
                     extra: tuple[str, ...] = ()) -> dict[str, object]:
        calls.append((command[command.index("-c", 3) + 1], extra))
        return {"status": "ok", "img_per_s": 100.0 + len(calls), "peak_mem_mb": 1.0}

    monkeypatch.setattr(ms, "measure", fake_measure)
    out = tmp_path / "speed.json"
    assert ms.main(["cifar10-strong", "--methods", "kd", "vanilla", "--vary", "train.malloc=auto,system",
                    "--repeats", "2", "--out", str(out)]) == 0
    extras = [extra for _, extra in calls]
    assert extras == [("train.malloc=auto",), ("train.malloc=system",)] * 4  # A B per method, every round
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"kd train.malloc=auto", "kd train.malloc=system", "vanilla train.malloc=auto",
                            "vanilla train.malloc=system"}
    assert methods["kd train.malloc=auto"]["img_per_s_rounds"] == [101.0, 105.0]
    with pytest.raises(SystemExit):
        ms.main(["cifar10-strong", "--methods", "kd", "--vary", "train.malloc"])


def test_paired_ratios_by_hand() -> None:
    ms = _load()
    ok = [{"status": "ok", "img_per_s": v} for v in (1000.0, 500.0, 1000.0)]  # the machine halves in round 2
    other = [{"status": "ok", "img_per_s": v} for v in (900.0, 450.0, 800.0)]
    ratios = ms.paired_ratios({"kd": ok, "lakd": other}, "kd")
    assert ratios["kd"] == 1.0 and ratios["lakd"] == pytest.approx(0.9)  # median of 0.9, 0.9, 0.8
    failed = [*other[:2], {"status": "failed"}]
    assert ms.paired_ratios({"kd": ok, "lakd": failed}, "kd")["lakd"] is None
