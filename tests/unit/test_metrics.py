"""Error figures and tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy.parity.metrics import compare_arrays
from resnet_deploy.parity.tolerances import DEFAULT_TOLERANCES, Tolerance


def test_identical_arrays():
    ref = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    fig = compare_arrays(ref, ref.copy())
    assert fig.max_abs == 0 and fig.cosine == pytest.approx(1.0) and fig.top1_agreement == 1.0
    assert fig.top5_overlap == 1.0 and fig.finite
    assert DEFAULT_TOLERANCES["fp32"].failures(fig) == []


def test_figures_of_a_known_perturbation():
    ref = np.zeros((2, 4), dtype=np.float32)
    ref[:, 0] = 10.0
    cand = ref.copy()
    cand[1, 3] = 20.0  # flips sample 1's top-1
    fig = compare_arrays(ref, cand)
    assert fig.max_abs == 20.0 and fig.scale == 10.0 and fig.rel_to_scale == 2.0
    assert fig.top1_agreement == 0.5
    assert fig.mean_abs == pytest.approx(20.0 / 8)
    assert fig.cosine == pytest.approx(10 / np.hypot(10, 20))
    reasons = DEFAULT_TOLERANCES["fp32"].failures(fig)
    assert any("output scale" in r for r in reasons) and any("top-1" in r for r in reasons)


def test_nan_fails_every_tolerance():
    ref = np.ones((2, 3), dtype=np.float32)
    cand = ref.copy()
    cand[0, 0] = np.nan
    fig = compare_arrays(ref, cand)
    assert not fig.finite
    for tolerance in DEFAULT_TOLERANCES.values():
        assert tolerance.failures(fig) == ["NaN or Inf in output"]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        compare_arrays(np.zeros((1, 3)), np.zeros((1, 4)))


def test_feature_maps_have_no_top1():
    ref = np.random.default_rng(1).normal(size=(2, 8, 4, 4))
    fig = compare_arrays(ref, ref * 1.001)
    assert fig.top1_agreement is None and fig.cosine == pytest.approx(1.0)
    assert Tolerance(max_rel_to_scale=1e-4).failures(fig)  # 1e-3 relative error is too much for fp32
    assert not Tolerance(min_cosine=0.9999).failures(fig)
