"""The benchmark harness's bookkeeping: atomic writes, result cells, skip/force, resume, env names."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from pda_repro.bench import results as R
from pda_repro.bench.cells import Cell, CellSkipped, run_cells
from pda_repro.bench.context import BenchContext
from pda_repro.bench.results import ResultStore, cell_id
from pda_repro.bench.settings import RunSettings
from pda_repro.io import FILE_MODE


# --- atomic writers -----------------------------------------------------------------------------------
def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    R.atomic_write_text(path, "first")
    R.atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]
    assert path.stat().st_mode & 0o777 == FILE_MODE  # the one permission policy (pda_repro.io), not 0600


def test_atomic_write_keeps_old_file_when_replace_fails(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    R.atomic_write_json(path, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        R.atomic_write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # the temp file was removed


def test_atomic_csv_and_npz_round_trip(tmp_path, rng):
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "b": 0.25}]
    R.atomic_write_csv(tmp_path / "t.csv", rows)
    assert pd.read_csv(tmp_path / "t.csv").to_dict("records") == rows
    x = rng.normal(size=(3, 4)).astype(np.float32)
    R.atomic_save_npz(tmp_path / "d.npz", x=x)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["x"], x)


def test_json_writer_converts_numpy(tmp_path):
    R.atomic_write_json(tmp_path / "m.json", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"n": 3, "x": 0.5, "a": [0, 1]}


# --- names ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AMD EPYC", "amd-epyc"),
        ("Intel(R) Xeon(R) CPU @ 2.20GHz", "intel-xeon"),
        ("AMD EPYC 7B13 64-Core Processor", "amd-epyc-7b13"),
        ("Tesla K80", "tesla-k80"),
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ],
)
def test_slug(text, expected):
    assert R.slug(text) == expected


def test_env_name_cpu_is_host_independent(monkeypatch):
    monkeypatch.setattr(R, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(R, "logical_cores", lambda: 2)
    assert R.env_name("cpu") == "cpu-amd-epyc-2c"
    with pytest.raises(ValueError, match="'tpu'"):
        R.env_name("tpu")


def test_env_name_cuda_without_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(R, "gpu_name", lambda index=0: None)
    with pytest.raises(ValueError, match="cuda"):
        R.env_name("cuda")


def test_cell_id_order_and_validation():
    assert cell_id({"model": "mnist", "backend": "torch"}) == "model=mnist|backend=torch"
    with pytest.raises(ValueError, match="must not contain"):
        cell_id({"model": "a|b"})
    with pytest.raises(ValueError, match="at least one"):
        cell_id({})


def test_weights_label(tmp_path):
    f = tmp_path / "w.caffemodel"
    f.write_bytes(b"abc")
    assert R.weights_label(f) == "w.caffemodel (sha256 ba7816bf)"  # sha256("abc") = ba7816bf...
    assert R.weights_label(None).startswith("random")
    with pytest.raises(ValueError, match="does not exist"):
        R.weights_label(tmp_path / "missing.caffemodel")


def test_machine_metadata_has_the_facts():
    meta = R.machine_metadata("pda-repro benchmark run --model mnist")
    for key in (
        "cpu_model",
        "logical_cores",
        "gpu",
        "numpy",
        "numpy_blas",
        "torch",
        "torch_blas",
        "git_commit",
        "command",
        "date",
        "load_average_1_5_15",
        "pycaffe",
    ):
        assert key in meta, key
    assert meta["command"] == "pda-repro benchmark run --model mnist"
    json.dumps(meta)  # JSON-able


# --- the store ------------------------------------------------------------------------------------------
def test_store_write_replace_and_has_cell(tmp_path):
    store = ResultStore(tmp_path, "cpu-test-2c")
    key_a = {"model": "mnist", "backend": "torch"}
    key_b = {"model": "mnist", "backend": "caffe"}
    assert not store.has_cell("table1", key_a)
    store.write_cell("table1", key_a, [{"median_ms": 1.0}], {"cpu_model": "x"}, "desc", {"median_ms": "ms"})
    store.write_cell("table1", key_b, [{"median_ms": 2.0}], {"cpu_model": "x"})
    store.write_cell("table1", key_a, [{"median_ms": 3.0}], {"cpu_model": "y"})  # replaces a's row
    frame = store.read("table1")
    assert sorted(frame["median_ms"]) == [2.0, 3.0]
    assert store.has_cell("table1", key_a) and store.has_cell("table1", key_b)
    meta = store.read_meta("table1")
    assert meta["description"] == "desc" and meta["columns"] == {"median_ms": "ms"}
    assert meta["cells"][cell_id(key_a)] == {"cpu_model": "y"}
    store.remove_cell("table1", key_a)
    assert not store.has_cell("table1", key_a) and store.has_cell("table1", key_b)


def test_cell_without_metadata_counts_as_missing(tmp_path):
    """A crash between the CSV and the JSON write leaves the cell to be redone."""
    store = ResultStore(tmp_path, "cpu-test-2c")
    key = {"model": "mnist"}
    store.write_cell("t", key, [{"v": 1}], {})
    doc = store.read_meta("t")
    doc["cells"] = {}
    R.atomic_write_json(store.json_path("t"), doc)
    assert not store.has_cell("t", key)


def test_store_rejects_bad_env_and_empty_rows(tmp_path):
    with pytest.raises(ValueError, match="plain directory"):
        ResultStore(tmp_path, "../x")
    with pytest.raises(ValueError, match="no rows"):
        ResultStore(tmp_path, "e").write_cell("t", {"m": 1}, [], {})


# --- run_cells: skip, force, resume ---------------------------------------------------------------------
def _ctx(tmp_path, force=False):
    ctx = BenchContext(store=ResultStore(tmp_path, "cpu-test-2c"), settings=RunSettings(force=force))
    ctx._machine = {"cpu_model": "test"}  # skip the (slow-ish) machine probe
    return ctx


def _cells(calls, fail_at=None):
    out = []
    for i in range(4):

        def run(i=i):
            if i == fail_at:
                raise KeyboardInterrupt
            calls.append(i)
            return [{"value": i * 10}], {"setting": f"s{i}"}

        out.append(Cell("exp", {"model": f"m{i}", "backend": "torch"}, f"cell {i}", 1.0, run, f"m{i}"))
    return out


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        run_cells(_ctx(tmp_path), _cells(calls, fail_at=2), show_progress=False)
    assert calls == [0, 1]
    assert sorted(ResultStore(tmp_path, "cpu-test-2c").read("exp")["value"]) == [0, 10]
    calls.clear()
    report = run_cells(_ctx(tmp_path), _cells(calls), show_progress=False)
    assert calls == [2, 3]  # cells 0 and 1 were written before the interruption: skipped
    assert report.skipped_existing == ["cell 0", "cell 1"]
    frame = ResultStore(tmp_path, "cpu-test-2c").read("exp")
    assert sorted(frame["value"]) == [0, 10, 20, 30]
    meta = ResultStore(tmp_path, "cpu-test-2c").read_meta("exp")
    assert meta["cells"][cell_id({"model": "m3", "backend": "torch"})]["setting"] == "s3"


def test_force_redoes_existing_cells(tmp_path):
    calls: list[int] = []
    run_cells(_ctx(tmp_path), _cells(calls), show_progress=False)
    calls.clear()
    run_cells(_ctx(tmp_path), _cells(calls), show_progress=False)
    assert calls == []
    run_cells(_ctx(tmp_path, force=True), _cells(calls), show_progress=False)
    assert calls == [0, 1, 2, 3]
    assert len(ResultStore(tmp_path, "cpu-test-2c").read("exp")) == 4  # replaced, not duplicated


def test_cell_that_cannot_run_is_reported_not_written(tmp_path):
    def cannot():
        raise CellSkipped("caffe has no CUDA here")

    cells = [Cell("exp", {"model": "x"}, "x", 1.0, cannot, "x")]
    report = run_cells(_ctx(tmp_path), cells, show_progress=False)
    assert report.not_run == [("x", "caffe has no CUDA here")]
    assert not os.path.exists(ResultStore(tmp_path, "cpu-test-2c").csv_path("exp"))


def test_cell_metadata_has_settings_and_load(tmp_path):
    ctx = _ctx(tmp_path)
    meta = ctx.cell_meta(window=10)
    assert meta["window"] == 10 and meta["batch"] == 160 and meta["device"] == "cpu"
    assert meta["threads_per_library"] == "library defaults"
    assert "load_average_1_5_15" in meta and "date" in meta


def test_run_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="device"):
        RunSettings(device="gpu")
    with pytest.raises(ValueError, match="profile"):
        RunSettings(profile="slow")
    with pytest.raises(ValueError, match="batch"):
        RunSettings(batch=0)
    with pytest.raises(ValueError, match="does not exist"):
        RunSettings(weights=str(tmp_path / "none.caffemodel"))


def test_context_rng_streams_are_reproducible_and_distinct(tmp_path):
    ctx = _ctx(tmp_path)
    a = ctx.rng("fig11", "mnist", 3).integers(0, 2**31, 4)
    b = ctx.rng("fig11", "mnist", 3).integers(0, 2**31, 4)
    c = ctx.rng("fig11", "mnist", 4).integers(0, 2**31, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_backends_are_freed_after_their_last_cell(tmp_path):
    ctx = _ctx(tmp_path)
    released: list[tuple] = []
    ctx.release = lambda model=None, backend=None: released.append((model, backend))  # type: ignore[method-assign]

    def cell(model, backend, exp):
        return Cell(
            exp,
            {"model": model, "backend": backend},
            f"{exp} {model}/{backend}",
            1.0,
            lambda: ([{"v": 1}], {}),
            model,
        )

    cells = [
        cell("vgg16", "caffe", "t1"),
        cell("vgg16", "caffe", "f12"),
        cell("vgg16", "torch", "t1"),
        cell("vgg16", "torch", "f12"),
        cell("mnist", "caffe", "t1"),
    ]
    run_cells(ctx, cells, show_progress=False)
    assert released == [("vgg16", "caffe"), ("vgg16", None), ("mnist", None)]
