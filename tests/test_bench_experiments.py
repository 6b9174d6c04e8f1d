"""The experiments' logic on tiny nets with closed-form answers: Fig 12 extrapolation and labelling,
Figs 9/10 pre-ReLU statistics, Fig 11 AM vs NGM, Fig 16 running means, Table 1 rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pda_repro.bench import approximation as A
from pda_repro.bench import fig12 as F
from pda_repro.bench import inputs
from pda_repro.bench import table1 as T
from pda_repro.bench.context import BenchContext
from pda_repro.bench.results import ResultStore
from pda_repro.bench.settings import RunSettings
from pda_repro.sampling import PatchGaussian, WindowImputer
from tests.reference.methods_ref import TINY, NumpyChainBackend, parse_prototxt, random_spd, random_weights


class FixedPatches(WindowImputer):
    """A sampler (imputer contract) that hands out given patches in order and their mean as the mean."""

    def __init__(self, patches: np.ndarray) -> None:
        self.patches = np.asarray(patches, dtype=np.float32)  # (n, C, k, k)
        self.k = self.patches.shape[-1]
        self.channels = self.patches.shape[1]
        self.cursor = 0

    def sample_at(self, x, rows, cols, n, rng):
        out = self.patches[self.cursor : self.cursor + n]
        assert len(out) == n, "FixedPatches ran out of patches"
        self.cursor += n
        return np.repeat(out[None], len(rows), axis=0)

    def mean_at(self, x, rows, cols):
        return np.repeat(
            self.patches.mean(axis=0, dtype=np.float64).astype(np.float32)[None], len(rows), axis=0
        )


class TinyContext(BenchContext):
    """A BenchContext whose 'model' is a tiny test net held in memory."""

    def __init__(self, tmp_path, net, **kw):
        super().__init__(store=ResultStore(tmp_path, "cpu-test-2c"), settings=RunSettings(**kw))
        self._machine = {"cpu_model": "test"}
        self.net = net
        c, h, w = net.input_shape
        self.tiny_spec = SimpleNamespace(
            name="tiny",
            input_shape=(c, h, w),
            train_size=1000,
            weights=None,
            input_range=(-1.0, 1.0),
            channel_order="GRAY",
            mean=(0.0,),
            scale=1.0,
            interpolation="bilinear",
        )

    def spec(self, model):
        return self.tiny_spec

    def backend(self, model, backend):
        return self.net


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def linear_net(rng):
    path = TINY / "linear.prototxt"  # 2x9x9 -> InnerProduct(5) -> Softmax
    return NumpyChainBackend(path, random_weights(parse_prototxt(path), rng))


# --- Figure 12 -----------------------------------------------------------------------------------------
def test_extrapolation_is_linear_and_labelled():
    row = F.summarise_run({"sampling": 1.0, "forward": 3.0, "other": 0.5}, 5.0, 20, 80, 7, 10, 160)
    assert row["extrapolated"] is True and row["extrapolated_from_windows"] == 20
    assert row["total_seconds"] == 20.0 and row["sampling_seconds"] == 4.0 and row["forward_seconds"] == 12.0
    assert row["other_seconds"] == pytest.approx(4.0)  # 5 - 1 - 3 = 1 s measured, x4
    assert (row["measured_seconds"], row["forward_passes_measured"]) == (5.0, 7)
    assert row["forward_passes_total"] == 5 and row["images_forwarded_total"] == 800  # ceil(80*10/160)
    full = F.summarise_run({"sampling": 1.0, "forward": 3.0}, 5.0, 80, 80, 7, 1, 160)
    assert full["extrapolated"] is False and full["extrapolated_from_windows"] is None
    assert full["total_seconds"] == 5.0


def test_extrapolate_validates():
    assert F.extrapolate(2.0, 10, 100) == 20.0
    with pytest.raises(ValueError, match="cannot extrapolate"):
        F.extrapolate(2.0, 0, 100)
    with pytest.raises(ValueError, match="cannot extrapolate"):
        F.extrapolate(2.0, 200, 100)


def test_quick_windows_fill_whole_batches():
    assert F.quick_windows("pda", 10, 160) * 10 == F.QUICK_BATCHES * 160
    assert F.quick_windows("epda", 10, 160) == F.QUICK_BATCHES * 160


def _gaussian(rng, k, outer, channels):
    dim = channels * outer * outer
    return PatchGaussian(rng.normal(size=dim), random_spd(dim, rng, 0.1), k, outer, channels)


@pytest.mark.parametrize("method", ["pda", "epda"])
def test_time_explanation_subset_row(tmp_path, rng, linear_net, monkeypatch, method):
    image = rng.normal(size=(2, 9, 9)).astype(np.float32)
    monkeypatch.setattr(F, "timing_image", lambda ctx, model: (image, "noise"))
    monkeypatch.setattr(
        inputs, "model_sampler", lambda spec, model, k, outer, seed: _gaussian(rng, k, outer, 2)
    )
    ctx = TinyContext(tmp_path, linear_net, batch=8)
    row = F.time_explanation(ctx, "tiny", "numpy", method, window=3, outer=5, samples=4, subset=10)
    assert row["windows_total"] == 49 and row["windows_evaluated"] == 10  # (9-3+1)^2 windows
    assert row["extrapolated"] and row["extrapolated_from_windows"] == 10
    assert row["total_seconds"] == pytest.approx(row["measured_seconds"] * 49 / 10)
    s = 4 if method == "pda" else 1
    assert row["samples"] == s and row["images_forwarded_total"] == 49 * s
    # forward passes actually made: the image, then ceil(10*s/8) batches (explain's count)
    assert row["forward_passes_measured"] == 1 + -(-10 * s // 8)
    assert row["explained_class"] == int(np.argmax(linear_net.forward(image[None])[0]))
    full = F.time_explanation(ctx, "tiny", "numpy", method, window=3, outer=5, samples=4, subset=None)
    assert not full["extrapolated"] and full["windows_evaluated"] == 49


# --- Figs 9/10 -----------------------------------------------------------------------------------------
def test_neuron_statistics_by_hand():
    acts = np.array([[1.0, -1.0], [3.0, 1.0], [5.0, 0.0]])
    mean, std = A.neuron_statistics(acts)
    np.testing.assert_allclose(mean, [3.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(std, [2.0, 1.0])  # sample std (ddof=1) of 1, 3, 5 and of -1, 1, 0
    s = A.summarise_neurons(mean, std)
    assert s["neurons"] == 2 and s["median_abs_mean"] == 1.5 and s["fraction_std_below_abs_mean"] == 0.5
    with pytest.raises(ValueError, match="at least 2"):
        A.neuron_statistics(acts[:1])


def test_fig9_10_uses_pre_relu_outputs(tmp_path, rng, monkeypatch):
    """On a ReLU MLP (torch backend), the stored per-neuron means are those of W1 x + b1 over the samples —
    before the in-place ReLU, so negative means must survive."""
    from pda_repro.backends import load_backend

    path = TINY / "mlp.prototxt"  # 1x3x3 -> ip1(4) -> relu1 (in place) -> ip2(3) -> prob
    weights = random_weights(parse_prototxt(path), rng, scale=2.0)
    net = load_backend(str(path), backend="torch", weights=weights)
    image = rng.normal(size=(1, 3, 3)).astype(np.float32)
    patches = rng.normal(size=(6, 1, 2, 2)).astype(np.float32)
    monkeypatch.setattr(A, "timing_image", lambda ctx, model: (image, "noise"))
    monkeypatch.setattr(inputs, "model_sampler", lambda spec, model, k, outer, seed: FixedPatches(patches))
    monkeypatch.setattr(
        A, "setting_for", lambda spec, profile: A.ApproxSetting(window=2, outer=4, fig9_samples=6)
    )
    ctx = TinyContext(tmp_path, net)
    rows, meta = A.run_fig9_10(ctx, "tiny_mlp", "torch")
    assert [r["layer"] for r in rows] == ["ip1", "ip2"]
    data = np.load(ctx.store.dir / rows[0]["data_file"])
    filled = np.repeat(image[None], 6, axis=0)
    filled[:, :, :2, :2] = patches
    w1, b1 = (a.astype(np.float64) for a in weights["ip1"])
    pre = filled.reshape(6, -1).astype(np.float64) @ w1.T + b1
    np.testing.assert_allclose(data["ip1__mean"], pre.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["ip1__std"], pre.std(0, ddof=1), rtol=1e-4, atol=1e-5)
    assert (pre.mean(0) < 0).any(), "the test needs a neuron with a negative mean to tell pre- from post-ReLU"


# --- Fig 11 --------------------------------------------------------------------------------------------
def test_am_ngm_closed_form_on_a_linear_net(rng, linear_net):
    image = rng.normal(size=(2, 9, 9)).astype(np.float32)
    patches = rng.normal(size=(7, 2, 3, 3)).astype(np.float32)
    res = A.am_ngm(linear_net, FixedPatches(patches), image, 2, 4, 7, batch=3, rng=rng)
    w, b = (a.astype(np.float64) for a in linear_net.weights["fc"])

    def logits(x):
        return x.reshape(len(x), -1).astype(np.float64) @ w.T + b

    c = int(np.argmax(logits(image[None])[0]))
    filled = np.repeat(image[None], 7, axis=0)
    filled[:, :, 2:5, 4:7] = patches
    am = softmax(logits(filled))[:, c].mean()
    mean_img = image.copy()
    mean_img[:, 2:5, 4:7] = patches.mean(0)
    ngm = softmax(logits(mean_img[None]))[0, c]
    assert res["class"] == c
    assert res["am"] == pytest.approx(am, rel=1e-5)
    assert res["ngm"] == pytest.approx(ngm, rel=1e-5)
    assert res["abs_am_minus_ngm"] == pytest.approx(abs(am - ngm), abs=1e-6)
    # logits linear in the input: the mean of the sampled logits IS the logits at the mean patch
    assert res["ngm_of_sampled_logits"] == pytest.approx(ngm, rel=1e-5)


def test_am_equals_ngm_when_every_sample_is_the_mean(rng, linear_net):
    image = rng.normal(size=(2, 9, 9)).astype(np.float32)
    patches = np.repeat(rng.normal(size=(1, 2, 3, 3)), 5, axis=0)
    res = A.am_ngm(linear_net, FixedPatches(patches), image, 0, 0, 5, batch=4, rng=rng)
    assert res["abs_am_minus_ngm"] < 1e-6


def test_center_window_and_fill():
    assert A.center_window((3, 224, 224), 10) == (107, 107)
    assert A.center_window((1, 28, 28), 4) == (12, 12)
    image = np.zeros((1, 5, 5), dtype=np.float32) + 1
    out = A.fill_window(image, np.full((2, 1, 2, 2), 7.0, dtype=np.float32), 1, 3)
    assert out.shape == (2, 1, 5, 5) and out[:, 0, 1:3, 3:5].min() == 7 and out.sum() == 2 * (21 + 28)


# --- Fig 16 --------------------------------------------------------------------------------------------
def test_pda_convergence_running_means(rng, linear_net):
    image = rng.normal(size=(2, 9, 9)).astype(np.float32)
    patches = rng.normal(size=(8, 2, 3, 3)).astype(np.float32)
    c, p_epda, curves = A.pda_convergence(linear_net, FixedPatches(patches), image, 3, 3, 4, 2, 3, rng)
    w, b = (a.astype(np.float64) for a in linear_net.weights["fc"])
    filled = np.repeat(image[None], 8, axis=0)
    filled[:, :, 3:6, 3:6] = patches
    p = softmax(filled.reshape(8, -1).astype(np.float64) @ w.T + b)[:, c]
    expected = np.stack([np.cumsum(p[:4]) / np.arange(1, 5), np.cumsum(p[4:]) / np.arange(1, 5)])
    np.testing.assert_allclose(curves, expected, rtol=1e-5)
    mean_img = image.copy()
    mean_img[:, 3:6, 3:6] = patches.mean(0)
    assert p_epda == pytest.approx(
        softmax(mean_img.reshape(1, -1).astype(np.float64) @ w.T + b)[0, c], rel=1e-5
    )


def test_approx_cells_only_run_figs_11_16_with_trained_weights(tmp_path, linear_net, monkeypatch):
    ctx = TinyContext(tmp_path, linear_net)
    monkeypatch.setitem(A.FC_LAYERS, "tiny", ("fc",))
    names = [c.experiment for c in A.cells(ctx, ["tiny"], ["numpy"])]
    assert names == ["fig9_10"]
    monkeypatch.setattr(TinyContext, "has_trained_weights", lambda self, model: True)
    names = [c.experiment for c in A.cells(ctx, ["tiny"], ["numpy"])]
    assert names == ["fig9_10", "fig11", "fig16"]


# --- Table 1 -------------------------------------------------------------------------------------------
def test_table1_repeats_fill_the_budget_within_bounds():
    assert T.repeats_for("quick", 60.0) == T.MIN_REPEATS
    assert T.repeats_for("quick", 0.001) == T.MAX_REPEATS
    assert T.repeats_for("quick", 0.5) == 6
    assert T.repeats_for("paper", 1.0) == 20


def test_table1_row(tmp_path, linear_net):
    ctx = TinyContext(tmp_path, linear_net, batch=4)
    row = T.measure_forward(ctx, "tiny", "numpy")
    assert row["repeats"] >= T.MIN_REPEATS and len(linear_net.forward_calls) == row["repeats"] + 1
    assert set(linear_net.forward_calls) == {4}  # warm-up + timed batches, all full batches
    assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert row["ms_per_image"] == pytest.approx(row["median_ms"] / 4)
    assert row["peak_rss_mib"] > 0 and row["paper_k80_ms"] is None


# --- the plan of a run ---------------------------------------------------------------------------------
def test_default_plan_covers_every_experiment_on_both_backends(tmp_path):
    from pda_repro import zoo
    from pda_repro.bench.runner import parse_backends, parse_experiments, parse_models, plan_cells

    ctx = BenchContext(store=ResultStore(tmp_path, "cpu-test-2c"))
    cells = plan_cells(ctx, parse_models("default"), parse_backends("all"), parse_experiments("all"))
    got = {(c.experiment, c.model, c.key["backend"]) for c in cells}
    trained_mnist = zoo.get("mnist").weights is not None and zoo.get("mnist").weights.is_file()
    for backend in ("caffe", "torch"):
        mnist = {"table1", "fig12", "fig9_10"} | ({"fig11", "fig16"} if trained_mnist else set())
        for experiment in mnist:
            assert (experiment, "mnist", backend) in got
        for experiment in ("table1", "fig12", "fig9_10"):
            assert (experiment, "alexnet", backend) in got
    assert not any(c.model not in ("mnist", "alexnet") for c in cells)
    # models grouped, Table 1 first within each model (it calibrates the ETA)
    models = [c.model for c in cells]
    assert models == sorted(models, key=lambda m: models.index(m))
    assert cells[0].experiment == "table1"
    labels = [c.label for c in cells if c.experiment == "fig12"]
    assert any(
        "alexnet" in label and "48 of 47524 windows" in label for label in labels
    )  # quick: extrapolated
    assert any("mnist" in label and "all windows" in label for label in labels)  # cheap: measured in full


def test_run_arguments_are_checked():
    from pda_repro.bench.runner import parse_backends, parse_experiments, parse_models

    assert parse_experiments("fig12,table1") == ["table1", "fig12"]
    assert parse_experiments("fig9_10,table1") == ["table1", "fig9_10"]
    assert parse_experiments("approx,fig11") == ["approx"]
    with pytest.raises(ValueError, match="unknown experiment"):
        parse_experiments("fig13")
    assert parse_backends("all") == ["caffe", "torch"]
    with pytest.raises(ValueError, match="caffe, torch or all"):
        parse_backends("tensorflow")
    assert "alexnet" in parse_models("all") and parse_models("default") is None
    with pytest.raises(KeyError, match="alexnet"):
        parse_models("alexnt")


def test_retrained_weights_supersede_old_cells_but_other_weights_stay(tmp_path, linear_net):
    ctx = TinyContext(tmp_path, linear_net)
    base = {"model": "mnist", "backend": "torch", "device": "cpu", "profile": "quick"}
    for w in (
        "mnist.caffemodel (sha256 aaaa1111)",
        "other.caffemodel (sha256 cccc3333)",
        "random (seeded fillers, seed 0)",
    ):
        ctx.store.write_cell("fig11", {**base, "weights": w}, [{"weights": w, "am": 0.5}], {})
    new = {**base, "weights": "mnist.caffemodel (sha256 bbbb2222)"}
    removed = A.prune_superseded(ctx, "fig11", new)
    assert removed == [
        "model=mnist|backend=torch|device=cpu|profile=quick|weights=mnist.caffemodel (sha256 aaaa1111)"
    ]
    left = set(ctx.store.read("fig11")["weights"])
    assert left == {"other.caffemodel (sha256 cccc3333)", "random (seeded fillers, seed 0)"}
    assert len(ctx.store.read_meta("fig11")["cells"]) == 2
    assert A.prune_superseded(ctx, "fig11", {**base, "weights": "random (seeded fillers, seed 0)"}) == []


def test_parallel_benchmark_names_the_models_it_runs_before_measuring(tmp_path):
    from pda_repro.bench import parallel_speed

    with pytest.raises(
        ValueError, match=r"no parallel benchmark for model\(s\) \['mnist'\]; choose from .*vgg16"
    ):
        parallel_speed.run(models=["mnist"], results_dir=tmp_path)
    assert not list(tmp_path.iterdir())
