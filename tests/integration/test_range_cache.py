"""The INT8 activation-range cache: written only by an export that succeeds, checked when read (a
truncated or NaN one is set aside with a warning and measured again), never a reason to fail."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy import export
from resnet_deploy.errors import DeployError, DeployWarning, ParityError
from resnet_deploy.export import pipeline

OPTIONS = dict(input_size=64, int8=True, calib_data="random", calib_size=8, quiet=True)


def _caches(folder) -> list:
    return sorted(folder.glob("*.calib-*.json"))


def test_failed_export_leaves_no_range_cache(tmp_path, monkeypatch):
    gate = pipeline._parity_gate

    def refuse(job, path, file_precision, *args, **kwargs):  # the int8 gate fails, after calibration measured ranges
        if file_precision == "int8":
            raise ParityError("int8 artifact: disagrees (forced by the test)")
        return gate(job, path, file_precision, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_parity_gate", refuse)
    with pytest.raises(ParityError):
        export("resnet18", out=tmp_path, **OPTIONS)
    assert _caches(tmp_path) == [] and not any(tmp_path.iterdir())


def test_damaged_range_cache_is_measured_again(tmp_path):
    first = export("resnet18", out=tmp_path, **OPTIONS)
    cache, = _caches(tmp_path)
    assert first.manifest.precision_options["int8"]["range_cache"] == cache.name
    good = cache.read_text()
    for damage in (good[: len(good) // 2], good.replace("0.", "NaN, 0.", 1)):
        cache.write_text(damage)
        with pytest.warns(DeployWarning, match=f"the range cache {cache.name} is not used"):
            again = export("resnet18", out=tmp_path, **OPTIONS)
        assert cache.read_text() == good  # measured again, the same ranges, and put back
        assert again.manifest.precision_options["int8"]["range_cache"] == cache.name


def test_nan_or_empty_calibration_data_is_named_as_the_cause(tmp_path):
    data = np.random.default_rng(0).random((8, 3, 64, 64)).astype(np.float32)
    data[0, 0, 0, :2] = [np.nan, np.inf]
    np.save(tmp_path / "calib.npy", data)
    with pytest.raises(DeployError, match="calib.npy holds 2 NaN or infinite values"):  # was "scale issue"
        export("resnet18", out=tmp_path / "out", **{**OPTIONS, "calib_data": str(tmp_path / "calib.npy")})
    np.save(tmp_path / "empty.npy", data[:0])
    with pytest.raises(DeployError, match=r"empty.npy holds no images \(shape \[0, 3, 64, 64\]\)"):
        export("resnet18", out=tmp_path / "out", **{**OPTIONS, "calib_data": str(tmp_path / "empty.npy")})
    assert not (tmp_path / "out").exists() or _caches(tmp_path / "out") == []


def test_non_finite_ranges_are_refused_whatever_their_source(tmp_path):
    from resnet_deploy.export.quantize import range_cache_problem

    cache = tmp_path / "m.calib.json"
    cache.write_text('{"conv1": {"lowest": -1.5, "highest": NaN}}')
    assert range_cache_problem(cache) == "it holds 1 non-finite range values"
    cache.write_text('{"conv1": {"lowest": -1.5, "highest": 2.0}}')
    assert range_cache_problem(cache) is None
    cache.write_text('{"conv1": {"lowest"')
    assert range_cache_problem(cache).startswith("it cannot be read")
