"""Every method's defaults are its authors' published recipe: pinned here, number by number, with the source.

A default that drifts from the published value must fail here (and be documented as a deviation if intended).
"""

from __future__ import annotations

import pytest

from lakd.distill import list_methods, make_params, params_as_dict
from lakd.errors import LakdError

PUBLISHED = {
    # mdistiller configs/cifar100/kd.yaml; RepDistiller -r 0.1 -a 0.9 --kd_T 4
    "kd": {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0, "logit_stand": False},
    # mdistiller CFG.FITNET: CE 1, FEAT_WEIGHT 100, hint = the middle stage, 1x1 ConvReg for equal grids
    "fitnet": {"ce_weight": 1.0, "feat_weight": 100.0, "hint_stage": -1, "regressor_kernel": 1},
    # mdistiller CFG.AT (P 2, FEAT_WEIGHT 1000); RepDistiller -a 0 -b 1000
    "at": {"ce_weight": 1.0, "beta": 1000.0, "p": 2.0},
    # mdistiller CFG.RKD: DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50
    "rkd": {"ce_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
    # RepDistiller train_student.py + README (-r 1 -a 0 -b 0.8, feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5)
    "crd": {"ce_weight": 1.0, "crd_weight": 0.8, "kd_weight": 0.0, "temperature": 4.0, "feat_dim": 128,
            "nce_k": 16384, "nce_t": 0.07, "nce_momentum": 0.5},
    # official ReviewKD CIFAR-100/script/reviewKD.sh (weight 5.0 for most pairs), model/reviewkd.py
    # (mid = min(512, student's last channels) -> 0 = that rule), warm-up 20
    "reviewkd": {"ce_weight": 1.0, "reviewkd_weight": 5.0, "warmup_epochs": 20.0, "mid_channels": 0,
                 "pooled_level": True, "student_preact": False},
    # mdistiller CFG.DKD (per-pair BETA in configs/cifar100/dkd/*, see tests of the pair configs)
    "dkd": {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0,
            "logit_stand": False},
    # image_classification_sota configs/strategies/distill/dist_cifar.yaml: dist_t4, ori 1, kd 2
    "dist": {"ce_weight": 1.0, "kd_weight": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 4.0},
    # Knowledge-Distillation-via-ND CIFAR/train_cifar.sh, resnet56 -> resnet20 KD++: cls 1, kd 1.0, nd 2.0, T 4
    "nd": {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0, "nd_weight": 2.0, "warmup_epochs": 20.0},
    "vanilla": {"ce_weight": 1.0},
}


@pytest.mark.parametrize("method", sorted(PUBLISHED))
def test_defaults_are_the_published_recipe(method: str) -> None:
    params = params_as_dict(make_params(method, {}))
    for key, value in PUBLISHED[method].items():
        assert params[key] == value, (method, key, params[key], value)


def test_every_baseline_is_pinned() -> None:
    """A new method must add its published recipe above (LAKD is ours: docs/method.md pins it)."""
    assert set(list_methods()) - {"lakd", "lakd-study"} == set(PUBLISHED)


def test_lakd_is_its_core_and_the_study_variant_adds_only_variants_at_neutral_defaults() -> None:
    """``lakd`` takes only its core parameters; ``lakd-study`` takes them and the variants, whose defaults make it
    ``lakd`` exactly (same resolved core values; every extra field at the value that switches the variant off)."""
    core, study = params_as_dict(make_params("lakd", {})), params_as_dict(make_params("lakd-study", {}))
    assert {k: study[k] for k in core} == core
    assert {k: v for k, v in study.items() if k not in core} == {
        "logit_stand": False, "aux_weight": 0.0, "aux_head": "linear",  # in the core until issue 32
        "logit_loss": "kd", "dkd_alpha": 1.0, "dkd_beta": 8.0, "logit_warmup_epochs": 0.0, "feat_form": "mse",
        "feat_spatial_weighting": False, "feat_modules": [], "feat_scales": [0], "feat_target": "post",
        "feat_projector": "auto", "ndam_mode": "l2", "ndam_tau": 1.0, "split": "stage"}
    assert core["teacher_inputs_until"] == 0.0  # core since issue 16 (lakd-local sets 0.3), off by default
    with pytest.raises(LakdError, match="unknown"):
        make_params("lakd", {"feat_form": "cosine"})
    with pytest.raises(LakdError, match="unknown"):
        make_params("lakd", {"aux_weight": 0.3})


def test_a_renamed_parameter_gets_an_error_naming_its_new_name() -> None:
    """CRD's KD temperature is ``temperature`` as in every other method (``kd_temperature`` until issue 32)."""
    assert make_params("crd", {"temperature": 2.0}).temperature == 2.0
    with pytest.raises(LakdError, match="distill.params.kd_temperature is now called 'temperature' .method 'crd'"):
        make_params("crd", {"kd_temperature": 2.0})


@pytest.mark.parametrize("method", sorted(set(list_methods())))
def test_no_method_accepts_a_non_finite_number(method: str) -> None:
    """Every float parameter of every method refuses NaN and infinity with one LakdError naming it (LAKD took a NaN
    ndam_weight and trained on garbage; issue 33)."""
    import dataclasses

    params = make_params(method, {})
    floats = [f.name for f in dataclasses.fields(params) if isinstance(getattr(params, f.name), float)]
    assert floats
    for name in floats:
        for bad in (float("nan"), float("inf"), float("-inf")):
            with pytest.raises(LakdError, match=name):
                make_params(method, {name: bad})


@pytest.mark.parametrize(("method", "values", "name"), [
    ("crd", {"feat_dim": 100_000}, "feat_dim"), ("crd", {"nce_k": 10_000_000}, "nce_k"),
    ("crd", {"nce_k": 65536, "feat_dim": 1024}, "nce_k x feat_dim"), ("reviewkd", {"mid_channels": 1_000_000},
                                                                      "mid_channels"),
    ("fitnet", {"regressor_kernel": 999}, "regressor_kernel"), ("fitnet", {"hint_stage": 10**9}, "hint_stage"),
])
def test_sizes_that_allocate_have_upper_bounds(method: str, values: dict, name: str) -> None:
    """A parameter that sizes a tensor is bounded where it enters (CRD's 100,000-d embedding took hundreds of GB)."""
    with pytest.raises(LakdError, match=f"distill.params.{name}"):
        make_params(method, values)
    make_params(method, {})  # the published recipe is inside the bounds
