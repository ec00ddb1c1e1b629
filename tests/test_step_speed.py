"""benchmarks/step_speed.py: the interleaved A/B's arithmetic by hand, and one step of a way built as it builds them."""

from __future__ import annotations

import pytest
import torch

from tests.scripts import load_script


def test_summarise_by_hand() -> None:
    ss = load_script("step_speed.py")
    # the machine slows 2x in round 2: medians mix that in, the within-round ratio does not
    times = {"kd": [100.0, 200.0, 100.0], "lakd": [110.0, 220.0, 125.0]}
    cpu = {"kd": [200.0, 400.0, 200.0], "lakd": [220.0, 440.0, 250.0]}
    out = ss.summarise(times, cpu, "kd", batch=128)
    assert out["lakd"]["ms_per_step_median"] == 125.0 and out["kd"]["ms_per_step_median"] == 100.0
    assert out["lakd"]["speed_vs_kd"] == pytest.approx(100 / 125)
    assert out["lakd"]["paired_speed_vs_kd"] == pytest.approx(100 / 110)  # median of 0.909, 0.909, 0.8
    assert out["lakd"]["cpu_speed_vs_kd"] == pytest.approx(200 / 250)
    assert out["kd"]["img_per_s"] == pytest.approx(1280.0) and out["kd"]["paired_speed_vs_kd"] == 1.0


def test_a_way_takes_one_optimizer_step_with_the_loss_path_it_names() -> None:
    ss = load_script("step_speed.py")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    task, step = ss.build_way("lakd-autograd", x, y, compile_it=False)
    assert task.fused_local_losses is False and ss.build_way("lakd", x, y, compile_it=False)[0].fused_local_losses
    before = {n: p.detach().clone() for n, p in task.student().named_parameters()}
    step()
    assert any(not torch.equal(before[n], p) for n, p in task.student().named_parameters())


def test_runtime_specs() -> None:
    ss = load_script("step_speed.py")
    fp32 = ss.runtime_of("fp32")
    assert fp32.amp_dtype is None and not fp32.channels_last
    bf16_cl = ss.runtime_of("bf16+cl")
    assert bf16_cl.amp_dtype is torch.bfloat16 and bf16_cl.channels_last
    with pytest.raises(SystemExit, match="fp16"):
        ss.runtime_of("fp16")
    task, step = ss.build_way("kd", torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), False, "fp32+cl")
    step()


def test_crd_ways_score_the_two_ways() -> None:
    ss = load_script("step_speed.py")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    dense, step = ss.build_way("crd", x, y, compile_it=False)
    gathered, _ = ss.build_way("crd-gathered", x, y, compile_it=False)
    assert dense.contrast.dense_scores(16385) and not gathered.contrast.dense_scores(16385)
    step()
