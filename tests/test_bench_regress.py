"""The runtime regression check compares ratios measured in one run with stored ones (injected here)."""

from __future__ import annotations

import json
import math

import pytest

from pda_repro.bench import regress as G
from pda_repro.bench.results import atomic_write_json


def test_lower_is_better_ratios():
    base = {"epda_over_pda/mnist/torch": 0.10, "vectorised_over_reference_sampler": 0.01}
    ok = G.compare({"epda_over_pda/mnist/torch": 0.19, "vectorised_over_reference_sampler": 0.001}, base, 2.0)
    assert all(c.ok for c in ok)  # 1.9x worse is within 2x; 10x better is never a failure
    bad = G.compare({"epda_over_pda/mnist/torch": 0.21, "vectorised_over_reference_sampler": 0.01}, base, 2.0)
    by_name = {c.name: c for c in bad}
    assert not by_name["epda_over_pda/mnist/torch"].ok and by_name["vectorised_over_reference_sampler"].ok
    assert (
        "FAIL" in by_name["epda_over_pda/mnist/torch"].message
        and "x2.10" in by_name["epda_over_pda/mnist/torch"].message
    )


def test_torch_over_caffe_is_checked_both_ways():
    base = {"torch_over_caffe_forward/alexnet": 1.0}
    assert G.compare({"torch_over_caffe_forward/alexnet": 1.9}, base, 2.0)[0].ok
    assert G.compare({"torch_over_caffe_forward/alexnet": 0.55}, base, 2.0)[0].ok
    assert not G.compare({"torch_over_caffe_forward/alexnet": 2.1}, base, 2.0)[0].ok
    assert not G.compare({"torch_over_caffe_forward/alexnet": 0.45}, base, 2.0)[0].ok


def test_per_ratio_tolerance_and_missing_ratios():
    base = {"a": 1.0, "b": 1.0}
    checks = {c.name: c for c in G.compare({"a": 1.4, "c": 1.0}, base, {"a": 1.3})}
    assert not checks["a"].ok  # 1.4 > 1.0 * 1.3
    assert not checks["b"].ok and "not measured" in checks["b"].message
    assert not checks["c"].ok and "not in the baseline" in checks["c"].message
    with pytest.raises(ValueError, match="factor >= 1"):
        G.compare({"a": 1.0}, {"a": 1.0}, 0.5)
    bad = G.compare({"a": 0.0}, {"a": 1.0})
    assert not bad[0].ok and math.isclose(bad[0].measured, 0.0)


def _baseline(path, chash, ratios, env):
    atomic_write_json(path, {"config_hash": chash, "ratios": ratios, "env": env, "tolerance": {}})


def test_find_baseline_prefers_own_env_then_any_with_same_config(tmp_path):
    _baseline(tmp_path / "cpu-other-4c" / G.BASELINE_NAME, "h1", {"a": 2.0}, "cpu-other-4c")
    _baseline(tmp_path / "cpu-old-2c" / G.BASELINE_NAME, "h0", {"a": 9.0}, "cpu-old-2c")
    path, doc = G.find_baseline(tmp_path, "cpu-mine-2c", "h1")
    assert path.parent.name == "cpu-other-4c" and doc["ratios"] == {"a": 2.0}
    _baseline(tmp_path / "cpu-mine-2c" / G.BASELINE_NAME, "h1", {"a": 3.0}, "cpu-mine-2c")
    path, _ = G.find_baseline(tmp_path, "cpu-mine-2c", "h1")
    assert path.parent.name == "cpu-mine-2c"
    assert G.find_baseline(tmp_path, "cpu-mine-2c", "h-unknown") is None


def test_config_hash_changes_with_the_configuration():
    assert G.config_hash() == G.config_hash(dict(G.CONFIG))
    assert G.config_hash() != G.config_hash({**G.CONFIG, "batch": 80})


@pytest.fixture
def fake_measure(monkeypatch):
    measured = {
        "ratios": {"epda_over_pda/mnist/torch": 0.1, "torch_over_caffe_forward/mnist": 1.0},
        "missing": [],
    }

    def measure(config, seed=0, say=print, require_caffe=False):
        return G.Measurement(ratios=dict(measured["ratios"]), missing=list(measured["missing"]), seconds=1.0)

    monkeypatch.setattr(G, "measure", measure)
    monkeypatch.setattr(G, "env_name", lambda device="cpu": "cpu-test-2c")
    monkeypatch.setattr(G, "machine_metadata", lambda command=None: {"cpu_model": "test"})
    return measured


def test_run_regress_update_then_pass_then_fail(tmp_path, fake_measure):
    lines: list[str] = []
    assert G.run_regress(tmp_path, say=lines.append) == 2  # no baseline yet
    assert G.run_regress(tmp_path, update_baseline=True, say=lines.append) == 0
    doc = json.loads((tmp_path / "cpu-test-2c" / G.BASELINE_NAME).read_text())
    assert doc["ratios"]["epda_over_pda/mnist/torch"] == 0.1 and doc["config_hash"] == G.config_hash()
    assert G.run_regress(tmp_path, say=lines.append) == 0
    fake_measure["ratios"]["epda_over_pda/mnist/torch"] = 0.25  # efficient PDA lost its advantage
    assert G.run_regress(tmp_path, say=lines.append) == 1
    assert any("FAIL" in line and "epda_over_pda/mnist/torch" in line for line in lines)


def test_baseline_is_median_of_runs(tmp_path, fake_measure):
    for v in (0.1, 0.3, 0.2):
        fake_measure["ratios"]["epda_over_pda/mnist/torch"] = v
        G.run_regress(tmp_path, update_baseline=True, say=lambda s: None)
    doc = json.loads((tmp_path / "cpu-test-2c" / G.BASELINE_NAME).read_text())
    assert doc["ratios"]["epda_over_pda/mnist/torch"] == pytest.approx(0.2)
    assert doc["observed_spread"]["epda_over_pda/mnist/torch"] == [0.1, 0.3]


def test_backend_missing_outside_ci_skips_its_ratios(tmp_path, fake_measure):
    G.run_regress(tmp_path, update_baseline=True, say=lambda s: None)
    fake_measure["ratios"] = {"epda_over_pda/mnist/torch": 0.1}
    fake_measure["missing"] = ["mnist/caffe: No module named 'caffe'"]
    lines: list[str] = []
    assert G.run_regress(tmp_path, say=lines.append) == 0
    assert any("skipped torch_over_caffe_forward/mnist" in line for line in lines)


def test_missing_backend_in_ci_fails(tmp_path, fake_measure, monkeypatch):
    def no_caffe(config, seed=0, say=print, require_caffe=False):
        assert require_caffe  # CI is set: a missing backend must not be skipped
        raise ImportError("the caffe backend needs pycaffe")

    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(G, "measure", no_caffe)
    lines: list[str] = []
    assert G.run_regress(tmp_path, say=lines.append) == 1
    assert "does not load in CI" in lines[-1]


def test_per_family_tolerances_are_stored_and_used(tmp_path, fake_measure):
    assert G.tolerance_for("epda_over_pda/alexnet/caffe") == 1.5
    assert G.tolerance_for("torch_over_caffe_forward/mnist") == 2.0
    assert G.tolerance_for("epda_over_pda/mnist/torch", override=3.0) == 3.0
    G.run_regress(tmp_path, update_baseline=True, say=lambda s: None)
    doc = json.loads((tmp_path / "cpu-test-2c" / G.BASELINE_NAME).read_text())
    assert doc["tolerance"] == {"epda_over_pda/mnist/torch": 1.5, "torch_over_caffe_forward/mnist": 2.0}
    fake_measure["ratios"]["epda_over_pda/mnist/torch"] = 0.16  # 1.6x: beyond 1.5x
    fake_measure["ratios"]["torch_over_caffe_forward/mnist"] = 1.6  # 1.6x: within 2x
    lines: list[str] = []
    assert G.run_regress(tmp_path, say=lines.append) == 1
    assert [line.split()[1].rstrip(":") for line in lines if "FAIL" in line and "/" in line] == [
        "epda_over_pda/mnist/torch"
    ]
    assert G.run_regress(tmp_path, tolerance=2.0, say=lambda s: None) == 0  # an explicit factor for all
