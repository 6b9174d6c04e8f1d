"""Known-answer tests of PDA, efficient PDA, the simplified variant and the baselines.

They run on `NumpyChainBackend` (tests/reference/methods_ref.py), a float64 test double for the tiny
prototxts in models/tiny/; tests/test_methods_backends.py repeats the key ones on torch and pycaffe.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pda_repro.explain import Explanation, explain
from pda_repro.grid import WindowGrid
from pda_repro.methods import (
    METHODS,
    Imputation,
    average_over_windows,
    laplace_correct,
    log2_odds,
    run_window_loop,
    upsample_bilinear,
    weight_of_evidence,
)
from pda_repro.methods.deep_taylor import deep_taylor_relevance
from pda_repro.paths import REPO_ROOT
from pda_repro.sampling import MarginalSampler, PatchGaussian
from tests.reference.methods_ref import (
    ALL_METHODS,
    TINY,
    NumpyChainBackend,
    ZeroCovariance,
    conditional_gaussian,
    laplace_log2_odds,
    parse_prototxt,
    plain_average,
    plain_window_we,
    random_spd,
    random_weights,
)

N_TRAIN = 1000  # Laplace N used with the tiny nets


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture
def linear_net(rng) -> NumpyChainBackend:
    path = TINY / "linear.prototxt"
    return NumpyChainBackend(path, random_weights(parse_prototxt(path), rng))


@pytest.fixture
def image(rng) -> np.ndarray:
    return rng.standard_normal((2, 9, 9)).astype(np.float32)


def make_gaussian(rng: np.random.Generator, k: int = 3, l: int = 5, channels: int = 2, scale: float = 1.0):  # noqa: E741
    dim = channels * l * l
    return PatchGaussian(rng.standard_normal(dim) * 0.3, random_spd(dim, rng, scale), k, l, channels)


def softmax64(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def linear_weights(net: NumpyChainBackend) -> tuple[np.ndarray, np.ndarray]:
    w, b = net.get_weights()["fc"]
    return w.astype(np.float64), b.astype(np.float64)


# -- small pieces ----------------------------------------------------------------------------------
def test_registry_lists_all_paper_methods():
    assert set(METHODS) == set(ALL_METHODS)


def test_laplace_and_log_odds_by_hand():
    # N=8, K=2: p=0.5 -> (4+1)/10 = 0.5 -> 0 bits; p=1 -> 9/10 -> log2(9); p=0 -> 1/10 -> -log2(9)
    np.testing.assert_allclose(laplace_correct(np.array([0.5, 1.0, 0.0]), 8, 2), [0.5, 0.9, 0.1])
    np.testing.assert_allclose(log2_odds(np.array([0.5, 0.9, 0.1])), [0.0, np.log2(9), -np.log2(9)])
    assert weight_of_evidence(np.array(1.0), np.array(0.0), 8, 2) == pytest.approx(2 * np.log2(9))


@pytest.mark.parametrize(
    ("h", "w", "k", "stride"), [(11, 13, 4, 1), (11, 13, 4, 3), (10, 9, 3, 2), (7, 7, 6, 5)]
)
def test_average_over_windows_counts_edges(rng, h, w, k, stride):
    grid = WindowGrid(h, w, k, stride)
    rows, cols = grid.corners()
    values = rng.standard_normal((2, grid.n_windows))
    maps, counts = average_over_windows(values, rows, cols, k, h, w)
    for m in range(2):
        expected = plain_average({(r, c): v for r, c, v in zip(rows, cols, values[m], strict=True)}, k, h, w)
        np.testing.assert_allclose(maps[m], expected, atol=1e-12)
    brute_counts = np.zeros((h, w), dtype=int)
    for r, c in zip(rows, cols, strict=True):
        brute_counts[r : r + k, c : c + k] += 1
    np.testing.assert_array_equal(counts, brute_counts)
    uncovered = brute_counts == 0
    assert np.all(maps[:, uncovered] == 0.0)
    if (h - k) % stride or (w - k) % stride:
        assert uncovered.any()  # this case really has pixels no window reaches


def test_window_subset_is_evenly_spread_and_fixed():
    grid = WindowGrid(20, 20, 4)
    ids = grid.subset(10)
    assert ids.size == 10 and np.unique(ids).size == 10
    assert ids[0] == 0 and ids[-1] == grid.n_windows - 1
    np.testing.assert_array_equal(ids, grid.subset(10))
    with pytest.raises(ValueError, match="window_subset"):
        grid.subset(grid.n_windows + 1)


# -- efficient PDA: closed form ----------------------------------------------------------------------
def test_epda_equals_closed_form_on_linear_net(rng, linear_net, image):
    k, l = 3, 5  # noqa: E741
    gauss = make_gaussian(rng, k, l)
    res = explain(
        linear_net, image, method="epda", window=k, outer=l, sampler=gauss, train_size=N_TRAIN, progress=False
    )
    w, b = linear_weights(linear_net)
    x = image.astype(np.float64)
    p_x = softmax64(w @ x.ravel() + b)
    kk = linear_net.num_classes
    for c in range(kk):
        values = {}
        for r in range(0, 9 - k + 1):
            for q in range(0, 9 - k + 1):
                mean, _ = conditional_gaussian(gauss.mean, gauss.cov, k, l, x, r, q)
                xp = x.copy()
                xp[:, r : r + k, q : q + k] = mean
                p = softmax64(w @ xp.ravel() + b)[c]
                values[(r, q)] = laplace_log2_odds(p_x[c], N_TRAIN, kk) - laplace_log2_odds(p, N_TRAIN, kk)
        np.testing.assert_allclose(res.maps[c], plain_average(values, k, 9, 9), atol=2e-5)
    assert res.windows_evaluated == 49 and res.params["windows_total"] == 49
    assert res.forward_passes == 1 + 1  # the image, then 49 windows in one batch of 160
    assert np.abs(res.maps).max() > 0.05  # not a trivially zero answer


def test_pda_with_zero_covariance_equals_epda_exactly(rng, linear_net, image):
    gauss = make_gaussian(rng)
    common = dict(window=3, outer=5, train_size=N_TRAIN, progress=False, batch=13)
    epda = explain(linear_net, image, method="epda", sampler=gauss, **common)
    pda = explain(
        linear_net, image, method="pda", samples=5, sampler=ZeroCovariance(gauss), rng=rng, **common
    )
    np.testing.assert_array_equal(pda.maps, epda.maps)
    assert pda.params["images_forwarded"] == 1 + 49 * 5
    sampled = explain(
        linear_net, image, method="epda_sampled", samples=5, sampler=ZeroCovariance(gauss), rng=rng, **common
    )
    np.testing.assert_array_equal(sampled.maps, epda.maps)  # the mean of 5 equal draws is the draw
    assert sampled.params["images_forwarded"] == 1 + 49


def test_pda_approaches_the_arithmetic_mean(rng, linear_net, image):
    """P(c|x\\w) of PDA -> E[softmax(W x_s + b)] over the conditional Gaussian; error ~ 1/sqrt(S)."""
    k, l = 3, 5  # noqa: E741
    gauss = make_gaussian(rng, k, l, scale=4.0)  # wide conditionals: the softmax's curvature matters
    w, b = linear_weights(linear_net)
    linear_net.set_weights({"fc": [(w * 2).astype(np.float32), b.astype(np.float32)]})
    w = w * 2
    x = image.astype(np.float64)
    rows, cols = WindowGrid(9, 9, k, 3).corners()  # 9 windows
    classes = np.arange(linear_net.num_classes)
    # the truth: z = W x_s + b is Gaussian; average the softmax over 400,000 draws of z
    truth, spread, at_mean = [], [], []
    for r, q in zip(rows, cols, strict=True):
        mean, cov = conditional_gaussian(gauss.mean, gauss.cov, k, l, x, r, q)
        mask = np.zeros_like(x, dtype=bool)
        mask[:, r : r + k, q : q + k] = True
        w_win = w.reshape(w.shape[0], *x.shape)[:, mask]  # (K, C·k·k) in (C, k, k) order
        z_mean = w @ np.where(mask, 0, x).ravel() + b + w_win @ mean.ravel()
        z = np.random.default_rng(1).multivariate_normal(z_mean, w_win @ cov @ w_win.T, size=400_000)
        p = softmax64(z)
        truth.append(p.mean(0))
        spread.append(p.std(0))
        at_mean.append(softmax64(z_mean))
    truth, spread, at_mean = np.array(truth), np.array(spread), np.array(at_mean)
    errors = {}
    for s in (8, 512):
        res = run_window_loop(
            linear_net, image, k, rows, cols, Imputation(gauss, "samples", s), classes,
            batch=160, root_seed=7, progress=False,
        )  # fmt: skip
        err = np.abs(res.mean_probs - truth)
        assert np.all(err <= 5 * spread / np.sqrt(s) + 1e-3), f"S={s}: beyond Monte-Carlo error"
        errors[s] = err.mean()
    assert errors[512] < errors[8] / 3  # shrinks like 1/sqrt(S): expected factor 8
    # ... and the arithmetic mean really differs from the efficient (geometric-mean) answer here
    assert np.abs(at_mean - truth).max() > 2 * (5 * spread / np.sqrt(512)).max()


# -- simplified (Algorithm 3) ------------------------------------------------------------------------
def test_simplified_logit_is_exact_prediction_difference_on_linear_net(rng, linear_net, image):
    k, l = 3, 5  # noqa: E741
    gauss = make_gaussian(rng, k, l)
    res = explain(
        linear_net, image, method="simplified", window=k, outer=l, stride=2, sampler=gauss, output="logit",
        progress=False,
    )  # fmt: skip
    w, b = linear_weights(linear_net)
    x = image.astype(np.float64)
    for c in range(linear_net.num_classes):
        values = {}
        for r in range(0, 9 - k + 1, 2):
            for q in range(0, 9 - k + 1, 2):
                mean, _ = conditional_gaussian(gauss.mean, gauss.cov, k, l, x, r, q)
                xp = x.copy()
                xp[:, r : r + k, q : q + k] = mean
                values[(r, q)] = (w @ x.ravel() + b)[c] - (w @ xp.ravel() + b)[c]  # exact difference
        np.testing.assert_allclose(res.maps[c], plain_average(values, k, 9, 9), atol=2e-5)
    assert res.params["output"] == "logit"
    assert res.forward_passes == 1 and res.params["backward_passes"] == 1


def test_simplified_prob_is_first_order_probability_difference(rng, linear_net, image):
    k, l = 3, 5  # noqa: E741
    gauss = make_gaussian(rng, k, l)
    res = explain(
        linear_net, image, method="simplified", window=k, outer=l, sampler=gauss, classes=[2], progress=False
    )
    assert res.params["output"] == "prob"
    w, b = linear_weights(linear_net)
    x = image.astype(np.float64)
    p = softmax64(w @ x.ravel() + b)
    grad = p[2] * (w[2] - p @ w)  # d p_2 / d x for a linear-softmax net
    values = {}
    for r in range(7):
        for q in range(7):
            mean, _ = conditional_gaussian(gauss.mean, gauss.cov, k, l, x, r, q)
            xp = x.copy()
            xp[:, r : r + k, q : q + k] = mean
            values[(r, q)] = grad @ (x - xp).ravel()
    np.testing.assert_allclose(res.maps[0], plain_average(values, k, 9, 9), atol=1e-6)


# -- occlusion and gradients -----------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 3])
def test_occlusion_equals_plain_loop(linear_net, image, stride):
    k, value = 4, 0.25
    res = explain(
        linear_net, image, method="occlusion", window=k, stride=stride, value=value, classes=[1, 3],
        train_size=N_TRAIN, progress=False, batch=7,
    )  # fmt: skip
    for i, c in enumerate([1, 3]):
        expected = plain_window_we(
            linear_net, image.astype(np.float64), k, stride, c, N_TRAIN, lambda r, q: value
        )
        np.testing.assert_allclose(res.maps[i], expected, atol=1e-5)
    if stride == 3:  # windows at 0 and 3 cover rows/cols 0..6 of 9: the rest is 0
        assert np.all(res.maps[:, 7:, :] == 0) and np.all(res.maps[:, :, 7:] == 0)
        assert res.params["pixels_uncovered"] == 81 - 49


def test_saliency_and_gradient_x_input_closed_form(linear_net, image):
    w, _ = linear_weights(linear_net)
    sal = explain(linear_net, image, method="saliency", progress=False)
    gxi = explain(linear_net, image, method="gradient_x_input", progress=False)
    w_img = w.reshape(-1, *image.shape)  # logit gradient of class c is W_c
    np.testing.assert_allclose(sal.maps, np.abs(w_img).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(gxi.maps, (w_img * image).sum(axis=1), rtol=1e-5, atol=1e-6)


def test_upsample_bilinear_matches_torch(rng):
    import torch
    import torch.nn.functional as F

    small = rng.standard_normal((2, 3, 5))
    ours = upsample_bilinear(small, 13, 11)
    ref = F.interpolate(torch.from_numpy(small)[None], size=(13, 11), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-12)


def hand_deep_taylor(w1, b1, w2, b2, x, c, low, high):
    """Deep Taylor of logit c of x -> ip1 -> ReLU -> ip2, written with loops (z+ then z^B)."""
    a = np.maximum(w1 @ x + b1, 0)
    z_c = w2[c] @ a + b2[c]
    r_hidden = np.zeros(a.size)
    denom = sum(a[j] * max(w2[c, j], 0) for j in range(a.size))
    for j in range(a.size):
        r_hidden[j] = a[j] * max(w2[c, j], 0) / denom * z_c
    r_in = np.zeros(x.size)
    for j in range(a.size):
        z = [x[i] * w1[j, i] - low * max(w1[j, i], 0) - high * min(w1[j, i], 0) for i in range(x.size)]
        for i in range(x.size):
            r_in[i] += z[i] / sum(z) * r_hidden[j]
    return r_in, z_c


def test_deep_taylor_two_layer_relu_net_by_hand(rng):
    path = TINY / "mlp.prototxt"
    w1 = rng.standard_normal((4, 9))
    b1 = -np.abs(rng.standard_normal(4)) * 0.1  # non-positive biases: the textbook deep Taylor setting
    w2 = rng.standard_normal((3, 4))
    w2[:, 0] = np.abs(w2[:, 0]) + 0.5  # some positive weight into every output
    b2 = rng.standard_normal(3) * 0.1
    net = NumpyChainBackend(path, {"ip1": [w1, b1], "ip2": [w2, b2]})
    w1, b1, w2, b2 = (a.astype(np.float32).astype(np.float64) for a in (w1, b1, w2, b2))
    x = rng.uniform(0, 1, (1, 3, 3)).astype(np.float32)
    x[0, 1, 1] = 1.0  # on the upper bound
    res = explain(net, x, method="deep_taylor", bounds=(0.0, 1.0), progress=False)
    for c in range(3):
        r_in, z_c = hand_deep_taylor(w1, b1, w2, b2, x.astype(np.float64).ravel(), c, 0.0, 1.0)
        np.testing.assert_allclose(res.maps[c].ravel(), r_in, rtol=1e-6, atol=1e-7)
        assert res.maps[c].sum() == pytest.approx(z_c, rel=1e-6)  # conservation
    assert np.abs(res.maps).max() > 1e-3


def test_deep_taylor_rejects_images_outside_bounds_before_running(rng):
    path = TINY / "mlp.prototxt"
    net = NumpyChainBackend(path, random_weights(parse_prototxt(path), rng))
    x = rng.uniform(0, 2, (1, 3, 3)).astype(np.float32)
    for kwargs, message in [
        (dict(bounds=(0.0, 1.0)), "outside the deep Taylor bounds"),
        (dict(bounds=(1.0, 0.0)), "low <= high"),
        (dict(bounds=(0.0, np.ones(5))), "shape"),
        ({}, "bounds=\\(low, high\\)"),  # no zoo spec to take them from
    ]:
        with pytest.raises(ValueError, match=message):
            explain(net, x, method="deep_taylor", progress=False, **kwargs)
    assert net.forward_calls == []
    relevance, logits = deep_taylor_relevance(net, x, np.array([0, 2]), (0.0, 2.0))  # inside: fine
    assert relevance.shape == (2, 1, 3, 3) and logits.shape == (2,)


# -- batching, reproducibility, progress -------------------------------------------------------------
@pytest.mark.parametrize("method", ["pda", "epda_sampled"])
def test_batch_size_never_changes_the_maps(rng, linear_net, image, method):
    gauss = make_gaussian(rng)
    runs = []
    for batch in (1, 7, 160):
        linear_net.forward_calls.clear()
        res = explain(
            linear_net, image, method=method, window=3, outer=5, samples=4, sampler=gauss, batch=batch,
            train_size=N_TRAIN, rng=np.random.default_rng(3), progress=False,
        )  # fmt: skip
        assert max(linear_net.forward_calls) <= batch
        runs.append(res)
    for res in runs[1:]:
        np.testing.assert_array_equal(res.maps, runs[0].maps)
    assert runs[0].forward_passes == 1 + 49 * (4 if method == "pda" else 1)
    assert runs[2].forward_passes == 1 + (2 if method == "pda" else 1)
    other_seed = explain(
        linear_net, image, method=method, window=3, outer=5, samples=4, sampler=gauss,
        train_size=N_TRAIN, rng=np.random.default_rng(4), progress=False,
    )  # fmt: skip
    assert not np.array_equal(other_seed.maps, runs[0].maps)


def test_progress_callback_and_timings(rng, linear_net, image):
    seen = []
    res = explain(
        linear_net, image, method="pda", window=3, outer=5, samples=2, sampler=make_gaussian(rng), batch=20,
        train_size=N_TRAIN, progress=False, callback=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen == [(d, 98) for d in (20, 40, 60, 80, 98)]
    assert isinstance(res, Explanation)
    assert set(res.timings) >= {"sampling", "forward", "other"}
    assert res.timings["sampling"] > 0 and res.timings["forward"] > 0
    assert res.seconds >= res.timings["sampling"] + res.timings["forward"] - 1e-6


def test_window_subset_evaluates_only_those_windows(rng, linear_net, image):
    gauss = make_gaussian(rng)
    full = explain(
        linear_net, image, method="epda", window=3, outer=5, sampler=gauss, train_size=N_TRAIN, progress=False
    )
    part = explain(
        linear_net, image, method="epda", window=3, outer=5, sampler=gauss, train_size=N_TRAIN, progress=False,
        window_subset=5,
    )  # fmt: skip
    assert part.windows_evaluated == 5 and part.params["window_subset"] == 5
    assert part.params["images_forwarded"] == 1 + 5 and full.params["images_forwarded"] == 1 + 49
    # window 0 (top-left) is in the subset and alone covers pixel (0, 0) in both runs
    np.testing.assert_array_equal(part.maps[:, 0, 0], full.maps[:, 0, 0])


# -- checkpoint and resume -------------------------------------------------------------------------
KILLED_RUN = """
import os, signal, sys
import numpy as np
sys.path.insert(0, {repo!r})
from tests.reference.methods_ref import TINY, NumpyChainBackend, parse_prototxt, random_weights, random_spd
from pda_repro.explain import explain
from pda_repro.sampling import MarginalSampler, PatchGaussian

def setup():
    rng = np.random.default_rng(11)
    net = NumpyChainBackend(TINY / "linear.prototxt", random_weights(parse_prototxt(TINY / "linear.prototxt"), rng))
    x = rng.standard_normal((2, 9, 9)).astype(np.float32)
    gauss = PatchGaussian(rng.standard_normal(50) * 0.3, random_spd(50, rng), 3, 5, 2)
    return net, x, gauss

ARGS = dict(method="pda", window=3, outer=5, samples=6, batch=10, train_size=1000, progress=False,
            checkpoint_batches=1)

if __name__ == "__main__":
    net, x, gauss = setup()
    def die(done, total):
        if done >= 40:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash: no cleanup, no finally blocks
    explain(net, x, sampler=gauss, rng=np.random.default_rng(5), checkpoint=sys.argv[1], callback=die, **ARGS)
"""


def test_interrupt_and_resume_gives_the_identical_result(tmp_path):
    script = tmp_path / "killed_run.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(repo=str(REPO_ROOT))))
    ckpt = tmp_path / "run.ckpt.npz"
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr  # killed after 4 batches of 10
    assert ckpt.exists()

    sys.path.insert(0, str(tmp_path))
    try:
        import killed_run  # the same setup as the killed process
    finally:
        sys.path.remove(str(tmp_path))
    net, x, gauss = killed_run.setup()
    args = dict(killed_run.ARGS)
    with pytest.raises(ValueError, match="samples"):  # other arguments: refuse to mix runs
        explain(
            net, x, sampler=gauss, rng=np.random.default_rng(5), checkpoint=ckpt, **{**args, "samples": 7}
        )
    assert ckpt.exists()
    resumed = explain(net, x, sampler=gauss, rng=np.random.default_rng(5), checkpoint=ckpt, **args)
    assert resumed.params["resumed_evaluations"] == 40
    assert resumed.params["images_forwarded"] < 1 + 49 * 6
    assert not ckpt.exists()  # removed on success
    args.pop("checkpoint_batches")
    fresh = explain(net, x, sampler=gauss, rng=np.random.default_rng(5), **args)
    np.testing.assert_array_equal(resumed.maps, fresh.maps)


def test_checkpoint_that_is_not_one_is_a_clear_error(tmp_path, rng, linear_net, image):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PDA checkpoint"):
        explain(
            linear_net,
            image,
            method="occlusion",
            window=3,
            train_size=N_TRAIN,
            checkpoint=bad,
            progress=False,
        )


# -- bad input: a clear error before any forward pass ------------------------------------------------
def bad_cases(image, gauss, rng):
    nan_image = image.copy()
    nan_image[1, 2, 3] = np.nan
    inf_image = image.copy()
    inf_image[0, 0, 0] = np.inf
    other_k = make_gaussian(rng, k=2, l=4)
    other_l = make_gaussian(rng, k=3, l=7)
    one_channel = make_gaussian(rng, channels=1)
    ok = dict(method="epda", window=3, outer=5, sampler=gauss, train_size=N_TRAIN)
    return [
        (dict(ok, image=image[None]), "shape"),
        (dict(ok, image=image[:1]), "shape"),
        (dict(ok, image=image[:, :8]), "shape"),
        (dict(ok, image=nan_image), "NaN"),
        (dict(ok, image=inf_image), "NaN/Inf"),
        (dict(ok, window=9), "window=9"),
        (dict(ok, window=3, outer=3), "outer=3"),
        (dict(ok, outer=6), "even"),
        (dict(ok, method="pda", samples=0), "samples"),
        (dict(ok, batch=0), "batch"),
        (dict(ok, classes=[0, 5]), "class index 5"),
        (dict(ok, classes=-1), "class index -1"),
        (dict(ok, sampler=other_k), "k=2"),
        (dict(ok, sampler=other_l), "l=7"),
        (dict(ok, sampler=one_channel), "channels"),
        (dict(ok, sampler=None), "needs a sampler"),
        (dict(ok, method="lime"), "known methods: pda, epda"),
        (dict(ok, method="occlusion", value=[1.0, 2.0, 3.0]), "value"),
        (dict(ok, method="saliency", output="logits"), "output"),
        (dict(ok, method="epda", colour="red"), "colour"),
        (dict(ok, train_size=None), "train_size"),
        (dict(ok, method="saliency", checkpoint="x.npz"), "checkpoint"),
        (dict(ok, window_subset=0), "window_subset"),
        (dict(ok, window_subset=50), "window_subset must be an integer in 1..49"),
        (dict(ok, method="gradcam"), "4-D"),
    ]


def test_bad_input_fails_before_any_forward_pass(rng, linear_net, image):
    gauss = make_gaussian(rng)
    for kwargs, message in bad_cases(image, gauss, rng):
        linear_net.forward_calls.clear()
        img = kwargs.pop("image", image)
        with pytest.raises(ValueError, match=message):
            explain(linear_net, img, progress=False, **kwargs)
        assert linear_net.forward_calls == [], f"{kwargs} ran the net before failing"


def test_methods_run_without_touching_the_global_rng(rng, linear_net, image):
    state = np.random.get_state()[1].copy()
    explain(linear_net, image, method="pda", window=3, outer=5, samples=2, sampler=make_gaussian(rng),
            train_size=N_TRAIN, progress=False)  # fmt: skip
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_marginal_sampler_run_resumes_with_a_new_sampler_on_the_same_data(tmp_path, rng, linear_net, image):
    """The checkpoint identity records the sampler by what it is, not where it lives in memory: a rerun
    in a new process (here: a new MarginalSampler on the same images) resumes the interrupted run."""
    images = rng.standard_normal((5, *image.shape)).astype(np.float32)
    args = dict(method="pda", window=3, outer=5, samples=4, batch=8, train_size=1000, progress=False)
    ckpt = tmp_path / "marginal.ckpt.npz"

    def stop(done: int, total: int) -> None:
        if done >= 24:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain(
            linear_net,
            image,
            sampler=MarginalSampler(images, 3),
            rng=np.random.default_rng(3),
            checkpoint=ckpt,
            checkpoint_batches=1,
            callback=stop,
            **args,
        )
    assert ckpt.exists()
    assert repr(MarginalSampler(images, 3)) == repr(MarginalSampler(images.copy(), 3))
    resumed = explain(
        linear_net,
        image,
        sampler=MarginalSampler(images.copy(), 3),
        rng=np.random.default_rng(3),
        checkpoint=ckpt,
        **args,
    )
    assert resumed.params["resumed_evaluations"] >= 24
    fresh = explain(
        linear_net, image, sampler=MarginalSampler(images, 3), rng=np.random.default_rng(3), **args
    )
    np.testing.assert_array_equal(resumed.maps, fresh.maps)
