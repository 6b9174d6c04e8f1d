"""pda_repro.evaluate: faithfulness metrics on a tiny linear net with hand-set weights (closed forms),
cross-checks against Quantus where Quantus runs, and the agreement numbers against slow float64 references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pda_repro.backends import load_backend
from pda_repro.evaluate import (
    agreement,
    block_boxes,
    class_scores,
    constant_map,
    deletion_curve,
    evaluate_map,
    faithfulness_correlation,
    fill_image,
    insertion_curve,
    linear_imputation,
    random_map,
    randomisation_check,
    randomised_weights,
    road_curve,
    spearman,
    ssim,
    top_overlap,
)
from pda_repro.sampling import ConstantFill, MarginalSampler, PatchGaussian
from tests.reference.methods_ref import TINY

C, H, W, K = 2, 9, 9, 5  # models/tiny/linear.prototxt: logits = W x + b, x of shape 2×9×9, 5 classes


@pytest.fixture
def linear(rng):
    """The tiny linear net with hand-set (seeded) weights, its weights and an input with distinct pixel
    contributions."""
    weight = rng.standard_normal((K, C * H * W)).astype(np.float32)
    bias = rng.standard_normal(K).astype(np.float32)
    net = load_backend(TINY / "linear.prototxt", backend="torch", weights={"fc": [weight, bias]}, batch=64)
    x = rng.normal(0.0, 1.0, size=(C, H, W)).astype(np.float32)
    return net, weight.astype(np.float64), bias.astype(np.float64), x


def contributions(weight: np.ndarray, x: np.ndarray, cls: int) -> np.ndarray:
    """Per-pixel logit contribution Σ_c w[cls, c, i, j] x[c, i, j] (= the gradient×input map of a linear net)."""
    return (weight[cls].reshape(C, H, W) * x.astype(np.float64)).sum(axis=0)


def trapezoid(xs, ys) -> float:
    total = 0.0
    for i in range(1, len(xs)):
        total += (xs[i] - xs[i - 1]) * (ys[i] + ys[i - 1]) / 2
    return total


# -- deletion / insertion -----------------------------------------------------------------------------


def test_deletion_and_insertion_equal_the_closed_form_on_a_linear_net(linear):
    net, weight, bias, x = linear
    cls, block = 2, 3  # 9 blocks of 3×3
    gxi = contributions(weight, x, cls)
    zeros = np.zeros_like(x)
    deletion = deletion_curve(net, x, gxi, cls, zeros, block, output="logit")
    insertion = insertion_curve(net, x, gxi, cls, zeros, block, output="logit")
    # by hand: block contributions, most positive first; deleting = removing them from the logit
    per_block = [gxi[r : r + 3, c : c + 3].sum() for r in (0, 3, 6) for c in (0, 3, 6)]
    ordered = sorted(per_block, reverse=True)
    total = sum(per_block)
    expected_del = [bias[cls] + total - sum(ordered[:m]) for m in range(10)]
    expected_ins = [bias[cls] + sum(ordered[:m]) for m in range(10)]
    fractions = [m / 9 for m in range(10)]
    np.testing.assert_allclose(deletion.fractions, fractions, atol=1e-12)
    np.testing.assert_allclose(deletion.scores, expected_del, atol=1e-4)
    np.testing.assert_allclose(insertion.scores, expected_ins, atol=1e-4)
    assert deletion.auc == pytest.approx(trapezoid(fractions, expected_del), abs=1e-4)
    assert insertion.auc == pytest.approx(trapezoid(fractions, expected_ins), abs=1e-4)
    # most-relevant-first on a linear net: no ordering deletes faster (every partial sum is maximal),
    # so the random and the all-equal controls score worse than gradient×input
    g = np.random.default_rng(1)
    for _ in range(10):
        control = random_map((H, W), g)
        assert (
            deletion_curve(net, x, control, cls, zeros, block, output="logit", rng=g).auc
            >= deletion.auc - 1e-6
        )
        assert (
            insertion_curve(net, x, control, cls, zeros, block, output="logit", rng=g).auc
            <= insertion.auc + 1e-6
        )
    flat = constant_map((H, W))
    assert deletion_curve(net, x, flat, cls, zeros, block, output="logit").auc > deletion.auc + 1e-3
    # steps: the curve at evenly spaced block counts, same end points
    coarse = deletion_curve(net, x, gxi, cls, zeros, block, steps=3, output="logit")
    np.testing.assert_allclose(coarse.fractions, [0, 3 / 9, 6 / 9, 1], atol=1e-12)
    np.testing.assert_allclose(coarse.scores, np.array(expected_del)[[0, 3, 6, 9]], atol=1e-4)


def test_deletion_with_pixels_equals_quantus_pixel_flipping(linear):
    quantus = pytest.importorskip("quantus")
    net, weight, bias, x = linear
    cls = 1
    rel = contributions(weight, x, cls) + 1e-3 * np.arange(H * W).reshape(H, W)  # distinct values
    ours = deletion_curve(net, x, rel, cls, np.zeros_like(x), 1, output="prob")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, K)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        model[1].bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    metric = quantus.PixelFlipping(
        features_in_step=1, perturb_baseline=0.0, disable_warnings=True, display_progressbar=False
    )
    theirs = metric(
        model=model,
        x_batch=x[None],
        y_batch=np.array([cls]),
        a_batch=rel[None, None].astype(np.float32),
        device="cpu",
        softmax=True,
    )
    # Quantus ranks the map broadcast to every channel, one (channel, pixel) entry per step: the two equal
    # entries of a pixel come one after the other, so every second step ends with one more whole pixel
    theirs = np.asarray(theirs[0])
    assert theirs.shape == (C * H * W,)
    np.testing.assert_allclose(ours.scores[1:], theirs[C - 1 :: C], atol=1e-5)


def test_fill_images(rng):
    x = rng.normal(size=(C, H, W)).astype(np.float32)
    assert (fill_image(x, "zeros") == 0).all()
    blurred = fill_image(x, "blur", 4)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    assert np.allclose(fill_image(np.full_like(x, 3.0), "blur", 4), 3.0)
    np.testing.assert_allclose(
        fill_image(x, "mean", 4, ConstantFill([1.5, -2.0], 4, C)),
        np.array([1.5, -2.0])[:, None, None] * np.ones((C, H, W)),
    )
    data = rng.normal(size=(6, C, H, W)).astype(np.float32)
    # the marginal sampler's mean is the dataset mean, also on the 1-pixel edge blocks (9 = 4 + 4 + 1)
    np.testing.assert_allclose(fill_image(x, "mean", 4, MarginalSampler(data, 4)), data.mean(0), atol=1e-6)
    dim = C * 8 * 8
    a = rng.standard_normal((dim, dim))
    pg = PatchGaussian(rng.normal(size=dim), a @ a.T / dim + 0.5 * np.eye(dim), 4, 8, C)
    filled = fill_image(x, "mean", 4, pg)
    np.testing.assert_allclose(filled[:, 4:8, 0:4], pg.mean_at(x, [4], [0])[0], atol=1e-5)
    np.testing.assert_allclose(filled[:, 8:, 8:], pg.mean_at(x, [5], [5])[0][:, 3:, 3:], atol=1e-5)
    with pytest.raises(ValueError, match="fill must be one of mean, blur, zeros, got 'grey'"):
        fill_image(x, "grey", 4)
    with pytest.raises(ValueError, match="window k=4 != block 3"):
        fill_image(x, "mean", 3, pg)


def test_block_boxes_cover_the_image_once():
    boxes = block_boxes(9, 7, 4)
    cover = np.zeros((9, 7), dtype=int)
    for r0, r1, c0, c1 in boxes:
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all() and len(boxes) == 3 * 2
    with pytest.raises(ValueError, match="block must be a positive integer, got 0"):
        block_boxes(9, 7, 0)


# -- ROAD ---------------------------------------------------------------------------------------------


def test_linear_imputation_recovers_a_plane_and_matches_quantus(rng):
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    plane = np.stack([0.5 * ii - 0.25 * jj + 1.0, -ii + 2.0 * jj]).astype(np.float64)
    removed = np.zeros((H, W), dtype=bool)
    removed[2:6, 3:7] = True  # interior: the symmetric neighbour mean of a plane is the plane
    np.testing.assert_allclose(linear_imputation(plane, removed), plane, atol=1e-5)
    # the noise is exactly noise × the Generator's normals, one per removed pixel and channel
    x = rng.normal(size=(C, H, W))
    removed = rng.random((H, W)) < 0.4
    removed[0, 0] = True  # a corner pixel too
    clean = linear_imputation(x, removed)
    noisy = linear_imputation(x, removed, noise=0.1, rng=np.random.default_rng(3))
    z = np.random.default_rng(3).standard_normal((int(removed.sum()), C))
    np.testing.assert_allclose(noisy[:, removed] - clean[:, removed], 0.1 * z.T, atol=1e-5)
    np.testing.assert_array_equal(clean[:, ~removed], x[:, ~removed].astype(np.float32))
    quantus_perturb = pytest.importorskip("quantus.functions.perturb_func")
    theirs = quantus_perturb.noisy_linear_imputation(x.copy(), np.flatnonzero(removed.ravel()), noise=0.0)
    np.testing.assert_allclose(clean, theirs, atol=1e-5)


def test_road_removes_the_ranked_pixels(linear):
    net, weight, _, x = linear
    cls = 0
    rel = contributions(weight, x, cls)
    morf = road_curve(net, x, rel, cls, "morf", (25, 50), output="logit")
    lerf = road_curve(net, x, rel, cls, "lerf", (25, 50), output="logit")
    count = int(H * W * 25 / 100)
    top = np.zeros(H * W, dtype=bool)
    top[np.argsort(-rel.ravel())[:count]] = True
    expected = class_scores(net, linear_imputation(x, top.reshape(H, W))[None], cls, "logit")[0]
    assert morf.scores[1] == pytest.approx(expected, abs=1e-5)
    assert morf.scores[0] == pytest.approx(class_scores(net, x[None], cls, "logit")[0], abs=1e-6)
    np.testing.assert_allclose(morf.fractions, [0, count / 81, int(81 * 0.5) / 81])
    assert morf.auc < lerf.auc  # removing the positive evidence first lowers the logit more
    with pytest.raises(ValueError, match="order must be 'morf' or 'lerf', got 'top'"):
        road_curve(net, x, rel, cls, "top")


# -- faithfulness correlation ------------------------------------------------------------------------


def test_faithfulness_correlation_is_one_for_the_exact_attribution(linear):
    net, weight, bias, x = linear
    cls = 3
    gxi = contributions(weight, x, cls)
    zeros = np.zeros_like(x)
    for block in (1, 3):
        res = faithfulness_correlation(
            net, x, gxi, cls, zeros, block, 0.2, 30, "logit", np.random.default_rng(0)
        )
        assert res["correlation"] == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(res["drops"], res["attribution_sums"], atol=1e-4)
    rand = faithfulness_correlation(
        net,
        x,
        random_map((H, W), np.random.default_rng(1)),
        cls,
        zeros,
        1,
        0.2,
        30,
        "logit",
        np.random.default_rng(0),
    )
    assert rand["correlation"] < 0.9
    flat = faithfulness_correlation(
        net, x, constant_map((H, W)), cls, zeros, 1, 0.2, 30, "logit", np.random.default_rng(0)
    )
    assert math.isnan(flat["correlation"])
    quantus = pytest.importorskip("quantus")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, K)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        model[1].bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    exact = (weight[cls].reshape(C, H, W) * x)[None].astype(np.float32)  # per channel: Quantus's features
    theirs = quantus.FaithfulnessCorrelation(
        nr_runs=20,
        subset_size=30,
        perturb_baseline=0.0,
        disable_warnings=True,
        display_progressbar=False,
        return_aggregate=False,
    )(model=model, x_batch=x[None], y_batch=np.array([cls]), a_batch=exact, device="cpu", softmax=False)
    assert theirs[0] == pytest.approx(1.0, abs=1e-5)


# -- model randomisation -------------------------------------------------------------------------------


def gradient_x_input(net, x, cls):
    return (net.input_gradient(x[None], cls, output="logit")[0] * x).sum(axis=0)


def test_randomisation_check_detects_a_map_that_ignores_the_weights(linear):
    net, _, _, x = linear
    before = net.get_weights()
    rows = randomisation_check(net, gradient_x_input, x, 4, levels=(1, "all"), seed=7)
    assert [r["level"] for r in rows] == ["top1", "all"] and rows[0]["layers"] == "fc"
    assert all(r["changed"] and abs(r["spearman"]) < 0.5 for r in rows)
    ignores = randomisation_check(net, lambda n, im, c: im.sum(axis=0), x, 4, levels=("all",), seed=7)
    assert ignores[0]["spearman"] == pytest.approx(1.0) and not ignores[0]["changed"]
    after = net.get_weights()
    np.testing.assert_array_equal(after["fc"][0], before["fc"][0])  # trained weights restored


def test_randomised_weights_replace_only_the_top_layers(rng):
    net = load_backend(TINY / "mlp.prototxt", backend="torch", weights="random", seed=3)
    trained = net.get_weights()
    top, names = randomised_weights(net, 1, seed=11)
    assert names == ["ip2"]
    np.testing.assert_array_equal(top["ip1"][0], trained["ip1"][0])
    assert not np.allclose(top["ip2"][0], trained["ip2"][0])
    every, names = randomised_weights(net, "all", seed=11)
    assert names == ["ip1", "ip2"] and not np.allclose(every["ip1"][0], trained["ip1"][0])
    with pytest.raises(ValueError, match="layers must be 'all' or an integer in 1..2, got 3"):
        randomised_weights(net, 3, seed=0)


# -- evaluate_map ----------------------------------------------------------------------------------------


def test_evaluate_map_ranks_gradient_x_input_above_the_controls(linear):
    net, weight, _, x = linear
    cls = 2
    sampler = ConstantFill(0.0, 3, C)
    maps = {
        "gxi": contributions(weight, x, cls),
        "random": random_map((H, W), np.random.default_rng(5)),
        "constant": constant_map((H, W)),
    }
    scores = {
        name: evaluate_map(
            net, x, m, cls, 3, sampler, steps=None, output="logit", rng=np.random.default_rng(0)
        )[0]
        for name, m in maps.items()
    }
    for control in ("random", "constant"):
        for f in ("mean", "blur", "zeros"):
            assert scores["gxi"][f"deletion_auc_{f}"] < scores[control][f"deletion_auc_{f}"]
            assert scores["gxi"][f"insertion_auc_{f}"] > scores[control][f"insertion_auc_{f}"]
    assert scores["gxi"]["faithfulness_correlation"] == pytest.approx(1.0, abs=1e-5)  # mean fill = 0 here
    assert scores["gxi"]["road_morf_auc"] < scores["gxi"]["road_lerf_auc"]
    assert scores["gxi"]["block"] == 3 and scores["gxi"]["fills"] == "mean,blur,zeros"


def test_bad_arguments_name_the_value(linear):
    net, _, _, x = linear
    m = np.zeros((H, W))
    with pytest.raises(ValueError, match=r"map shape \(3, 3\) does not match"):
        deletion_curve(net, x, np.zeros((3, 3)), 0, np.zeros_like(x), 3)
    with pytest.raises(ValueError, match="output must be 'prob' or 'logit', got 'odds'"):
        deletion_curve(net, x, m, 0, np.zeros_like(x), 3, output="odds")
    with pytest.raises(ValueError, match="class must be an integer in 0..4, got 9"):
        insertion_curve(net, x, m, 9, np.zeros_like(x), 3)
    with pytest.raises(ValueError, match="subset must pick 1..8 of the 9 blocks, got 9"):
        faithfulness_correlation(net, x, m, 0, np.zeros_like(x), 3, 9)


# -- agreement ---------------------------------------------------------------------------------------------


def average_ranks(values):
    """Ranks 1..n, ties sharing their average rank (plain loops)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b, strict=True))
    return cov / math.sqrt(sum((p - ma) ** 2 for p in a) * sum((q - mb) ** 2 for q in b))


def reference_ssim(a, b, win=7):
    """Wang et al.'s SSIM with uniform win×win windows and sample (n−1) covariances, data range 2, averaged
    over every window fully inside the image (loops)."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    n = win * win
    values = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            p = a[i : i + win, j : j + win].ravel()
            q = b[i : i + win, j : j + win].ravel()
            mp, mq = p.mean(), q.mean()
            vp = ((p - mp) ** 2).sum() / (n - 1)
            vq = ((q - mq) ** 2).sum() / (n - 1)
            cpq = ((p - mp) * (q - mq)).sum() / (n - 1)
            values.append((2 * mp * mq + c1) * (2 * cpq + c2) / ((mp**2 + mq**2 + c1) * (vp + vq + c2)))
    return float(np.mean(values))


def test_spearman_ssim_and_overlap_equal_slow_references(rng):
    a = rng.normal(size=(12, 10))
    b = 0.6 * a + rng.normal(size=(12, 10))
    b[0, :4] = b[0, 0]  # ties
    mask = np.ones_like(a, dtype=bool)
    mask[-2:, :] = False  # the uncovered rows of a strided map
    av, bv = list(a[mask]), list(b[mask])
    assert spearman(a, b, mask) == pytest.approx(pearson(average_ranks(av), average_ranks(bv)), abs=1e-12)
    # SSIM: both maps scaled by their max |value| on the covered rectangle
    ca, cb = a[:10], b[:10]
    expected = reference_ssim(ca / np.abs(ca).max(), cb / np.abs(cb).max())
    assert ssim(a, b, mask) == pytest.approx(expected, abs=1e-10)
    assert ssim(a, 3.0 * a) == pytest.approx(1.0)  # scale-free
    # top 10 %: 10 of 100 pixels
    v = np.arange(100, dtype=float).reshape(10, 10)
    assert top_overlap(v, v) == 1.0 and top_overlap(v, -v) == 0.0
    w = v.copy()
    w[9, 9], w[0, 0] = w[0, 0], w[9, 9]  # b loses its largest pixel to the smallest
    assert top_overlap(v, w) == pytest.approx(0.9)
    assert math.isnan(spearman(v, np.zeros_like(v)))
    res = agreement(a, b, mask)
    assert set(res) == {"spearman", "ssim", "top_overlap"}
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) differs"):
        spearman(a, b, np.ones((3, 3), dtype=bool))


def test_controls_are_seeded():
    np.testing.assert_array_equal(
        random_map((4, 5), np.random.default_rng(2)), random_map((4, 5), np.random.default_rng(2))
    )
    assert (constant_map((4, 5)) == 0).all()
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator, got int"):
        random_map((4, 5), 3)


# -- CLI ---------------------------------------------------------------------------------------------------


def test_cli_evaluate_writes_the_metrics_of_explain_outputs(tmp_path, rng, capsys):
    from PIL import Image

    from pda_repro import cli

    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255  # a "1"
    Image.fromarray(digit).save(tmp_path / "one.png")
    out = tmp_path / "maps"
    assert cli.main(["explain", str(tmp_path / "one.png"), "--model", "mnist", "--method", "gradient_x_input",
                     "--out", str(out), "--class", "top1", "--no-progress"]) == 0  # fmt: skip
    csv = tmp_path / "eval.csv"
    code = cli.main(["evaluate", str(out / "one.npz"), "--fills", "blur,zeros", "--block", "4", "--steps", "4",
                     "--runs", "5", "--out", str(csv)])  # fmt: skip
    assert code == 0

    frame = pd.read_csv(csv)
    assert list(frame["map"]) == ["gradient_x_input", "random", "constant"]
    assert {"deletion_auc_blur", "insertion_auc_zeros", "road_morf_auc", "faithfulness_correlation"} <= set(
        frame
    )
    assert (frame["block"] == 4).all() and csv.with_suffix(".json").is_file()
    assert "evaluate: 3 rows" in capsys.readouterr().out
    assert cli.main(["evaluate", str(tmp_path / "missing.npz")]) == 2
    assert "map file not found" in capsys.readouterr().err
    assert cli.main(["evaluate", str(out / "one.npz"), "--fills", "grey"]) == 2


def test_bootstrap_interval(rng):
    from pda_repro.evaluate.summary import bootstrap_ci, summarise

    assert bootstrap_ci([2.0, 2.0, 2.0], rng) == (2.0, 2.0, 2.0, 3)
    values = rng.normal(1.0, 1.0, size=400)
    mean, lo, hi, n = bootstrap_ci(np.append(values, np.nan), np.random.default_rng(0))
    assert n == 400 and mean == pytest.approx(values.mean())
    half = 1.96 * values.std(ddof=1) / np.sqrt(400)  # the normal-theory interval, for a large sample
    assert lo == pytest.approx(mean - half, abs=0.25 * half) and hi == pytest.approx(
        mean + half, abs=0.25 * half
    )
    frame = pd.DataFrame({"m": ["a", "a", "b"], "v": [1.0, 3.0, np.nan]})
    out = summarise(frame, ["m"], ["v"])
    assert out.loc[0, "v_mean"] == 2.0 and out.loc[1, "v_n"] == 0


# -- the harness experiment and its figures -------------------------------------------------------------------


def test_faithfulness_experiment_writes_results_and_figures(tmp_path, monkeypatch):
    import dataclasses

    from pda_repro.bench.cells import run_cells
    from pda_repro.bench.context import BenchContext
    from pda_repro.bench.faithfulness import cells as fx_cells
    from pda_repro.bench.faithfulness import maps as fx_maps
    from pda_repro.bench.faithfulness import plans as fx_plans
    from pda_repro.bench.faithfulness import warm as fx_warm
    from pda_repro.bench.faithfulness_figures import render_faithfulness
    from pda_repro.bench.inputs import mnist_inputs
    from pda_repro.bench.results import ResultStore
    from pda_repro.bench.results_readme import write_readme

    full = fx_plans.plan_for("mnist", "quick")
    lite0_stored = fx_plans.plan_for("efficientnet_lite0", "quick").stored
    keep = ("pda", "pda_seed1", "epda", "saliency", "random", "constant")
    plan = dataclasses.replace(
        full,
        images=lambda spec: mnist_inputs(spec, "test", 1),
        # PDA at stride 2 here (4× fewer windows than the plan's stride 1) to keep the test short
        runs=tuple(
            dataclasses.replace(r, stride=2) if r.method == "pda" else r for r in full.runs if r.key in keep
        ),
        evaluate=("pda", "epda", "saliency", "random", "constant"),
        pairs=tuple(p for p in full.pairs if p[1] in keep and p[2] in keep),
        randomise=(("epda", 1), ("saliency", None)),
        steps=6,
        fc_runs=5,
        stored=True,  # as EfficientNet-Lite0's plan
    )
    monkeypatch.setattr(fx_plans, "plan_for", lambda model, profile: plan)
    monkeypatch.setattr(fx_maps, "faithfulness_cache", lambda: tmp_path / "cache")
    monkeypatch.setattr(fx_maps, "faithfulness_store", lambda: tmp_path / "store")
    store = ResultStore(tmp_path / "results", "test-env")
    ctx = BenchContext(store=store)
    said = []
    assert fx_warm.warm(ctx, "mnist", say=said.append, stop_after=0) == 0  # no task starts after the limit
    assert said and said[-1].startswith("stopped after 0 s") and not (tmp_path / "store").exists()
    # `warm` computes every map and metric evaluation, each once; the cells then only read them
    st = fx_maps._STATES[(id(ctx), "mnist", "torch")]
    tasks = fx_warm.warm_tasks(st)
    assert min(c for c, kind, key, _ in tasks if kind == "map" and key == "pda") > 0
    ran = fx_warm.warm(ctx, "mnist", say=lambda m: None)
    assert ran == len(tasks) and st.cpu_seconds > 0
    # a map made before is read, not computed: it costs nothing and goes with the cheap tasks
    assert all(c == 0.0 for c, kind, _, _ in fx_warm.warm_tasks(st) if kind == "map")
    # a map listed as dear but made meanwhile by another process is left to the cells, not read again
    with monkeypatch.context() as m:
        m.setattr(fx_warm, "_map_cost", lambda st, run, i: 100.0)
        later = [
            (kind, key)
            for _, kind, key, i in fx_warm.warm_tasks(st)
            if kind == "eval" or not st.map_path(plan.run(key), st.images[i][0], st.classes[i]).is_file()
        ]
        assert {key for kind, key in later if kind == "map"} == set(fx_plans.CONTROLS)  # drawn, never filed
        assert fx_warm.warm(ctx, "mnist", say=lambda m: None) == len(later) < len(tasks)
    computed = st.cpu_seconds
    assert not list((tmp_path / "cache" / "mnist" / "locks").iterdir())
    # the window maps and every evaluation are kept in the store, the one-pass maps and checkpoints in the cache
    name = st.images[0][0]
    stored = {p.name.split("-")[0] for p in (tmp_path / "store" / "mnist" / name).glob("*.npz")}
    cached = {p.name.split("-")[0] for p in (tmp_path / "cache" / "mnist" / name).glob("*.npz")}
    assert stored == {"pda", "pda_seed1", "epda"} and cached == {"saliency"}
    evals = {p.name.split("-")[1] for p in (tmp_path / "store" / "mnist" / name).glob("eval-*.json")}
    assert evals == set(plan.evaluate)
    assert not list((tmp_path / "cache").rglob("*.checkpoint.npz"))  # removed once each map is saved
    # a plan not marked `stored` (MNIST's own: it recomputes in minutes) keeps everything in the cache
    assert not full.stored and lite0_stored
    unstored = fx_maps.PlanState(ctx, dataclasses.replace(plan, stored=False), "torch")
    path = unstored.map_path(plan.run("pda"), name, st.classes[0])
    assert path.is_relative_to(tmp_path / "cache") and path.name in {
        p.name for p in (tmp_path / "store").rglob("pda-*")
    }
    report = run_cells(ctx, fx_cells.cells(ctx, ["mnist"], ["torch"]), show_progress=False)
    assert len(report.written) == 3 and not report.not_run
    assert st.cpu_seconds == computed  # no map made twice
    faith, agree = store.read("faithfulness"), store.read("agreement")
    # a cached evaluation is the one evaluate_map gives on that map now
    from pda_repro.evaluate import evaluate_map

    x, m = st.images[0][1], st.get("epda", 0)[0]
    direct, _ = evaluate_map(st.net, x, m, st.classes[0], plan.window, st.sampler("marginal"), fills=plan.fills,
                             steps=plan.steps, fc_runs=plan.fc_runs, rng=np.random.default_rng([ctx.settings.seed, 7, 0]))  # fmt: skip
    row = faith[faith["map"] == "epda"].iloc[0]
    for metric in ("deletion_auc_mean", "insertion_auc_zeros", "road_lerf_auc", "faithfulness_correlation"):
        assert row[metric] == pytest.approx(direct[metric], abs=1e-6)
    assert sorted(faith["map"].unique()) == sorted(plan.evaluate) and len(faith) == 5
    for column in ("window", "samples", "stride", "sampler", "seed", "inference", "block", "cpu", "profile"):
        assert column in faith.columns
    floor = agree[agree["comparison"] == "pda_vs_pda_other_seed"]
    assert len(floor) == 1 and (floor["seed_a"] == 0).all() and (floor["seed_b"] == 1).all()
    control = agree[agree["comparison"] == "control_pda_vs_random"]
    assert (control["spearman"].abs() < 0.3).all()  # a map and noise do not agree
    rand = store.read("faithfulness_randomisation")
    assert set(rand["level"]) == {"top1", "all"} and len(rand) == 2 * (1 + 1)
    assert not store.read("faithfulness_curves").empty
    stale = tmp_path / "results" / "figures" / "faithfulness_ranking_mnist_test-env_3images.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an image set of an earlier run")
    pngs = render_faithfulness(store.dir, tmp_path / "results" / "figures")
    assert not stale.exists()
    assert {p.name for p in pngs} == {
        "faithfulness_ranking_mnist_test-env.png",
        "faithfulness_curves_mnist_test-env.png",
        "agreement_mnist_test-env.png",
    }
    text = write_readme(tmp_path / "results", pngs).read_text()
    assert "#### mnist: ranking (1 images" in text and "PDA vs PDA with another seed" in text
    assert "Model-randomisation sanity check" in text


def test_faithfulness_seeds_are_the_words_its_cached_maps_were_made_with():
    """pda_repro.seeding's stream of (seed, run seed, image name) is the generator the faithfulness maps were
    cached with (seed words [seed, run seed, first 8 bytes of sha256(name), little-endian])."""
    import hashlib

    from pda_repro import seeding

    for seed, run_seed, name in ((0, 0, "coffee"), (0, 1, "squirrel_cls"), (3, 0, "mnist_test_0007")):
        words = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        assert seeding.stream_words(run_seed, name) == [run_seed, words]
        old = np.random.default_rng([seed, run_seed, words]).standard_normal(8)
        np.testing.assert_array_equal(seeding.generator(seed, run_seed, name).standard_normal(8), old)
        old_i = np.random.default_rng([seed, 7, 2]).standard_normal(4)
        np.testing.assert_array_equal(seeding.generator(seed, 7, 2).standard_normal(4), old_i)


def test_stride_choice_takes_the_largest_stride_every_model_keeps():
    from pda_repro.evaluate.summary import stride_choice

    def rows(model, stride, values):
        return [{"model": model, "comparison": f"epda_stride1_vs_stride{stride}", "image": i, "spearman": v}
                for i, v in enumerate(values)]  # fmt: skip

    agree = pd.DataFrame(
        rows("a", 2, [0.95, 0.96, 0.97]) + rows("a", 4, [0.70, 0.75, 0.80])
        + rows("b", 2, [0.93, 0.94, 0.95, 0.96]) + rows("b", 4, [0.91, 0.92, 0.93])
        + [{"model": "b", "comparison": "pda_vs_epda", "image": 0, "spearman": 0.99}]
    )  # fmt: skip
    table, choice = stride_choice(agree, threshold=0.9, min_images=3)
    assert choice == 2  # model a loses stride 4
    kept = {(r.model, r.stride): r.kept for r in table.itertuples()}
    assert kept == {("a", 2): True, ("a", 4): False, ("b", 2): True, ("b", 4): True}
    assert table.loc[
        (table["model"] == "b") & (table["stride"] == 2), "spearman_mean"
    ].item() == pytest.approx(0.945)
    # stride 4 only measured on b, where it keeps: 4
    _, choice = stride_choice(
        agree[~((agree["model"] == "a") & agree["comparison"].str.endswith("4"))], 0.9, 3
    )
    assert choice == 4
    # too few images: not kept, whatever the values
    _, choice = stride_choice(pd.DataFrame(rows("a", 2, [0.99, 0.99])), 0.9, 3)
    assert choice == 1
    # the interval's lower end decides, not the mean: mean 0.91, values spread around it
    table, choice = stride_choice(pd.DataFrame(rows("a", 2, [0.99, 0.83, 0.99, 0.83])), 0.9, 3)
    assert table["spearman_mean"].item() == pytest.approx(0.91) and table["spearman_low"].item() < 0.9
    assert choice == 1
    assert stride_choice(agree.iloc[:0], 0.9, 3)[1] == 1


def test_ranking_groups_rank_maps_on_the_images_they_share():
    from pda_repro.bench.faithfulness_figures import ranking_groups

    frame = pd.DataFrame(
        [{"map": "all", "image": i} for i in range(6)] + [{"map": "few", "image": i} for i in (0, 1)]
        + [{"map": "also_all", "image": i} for i in range(6)]
    )  # fmt: skip
    groups = ranking_groups(frame)
    assert [len(images) for images, _ in groups] == [6, 2]
    assert set(groups[0][1]["map"]) == {"all", "also_all"} and len(groups[0][1]) == 12
    assert set(groups[1][1]["map"]) == {"all", "also_all", "few"} and set(groups[1][1]["image"]) == {0, 1}


def test_warm_locks_are_taken_over_only_from_a_dead_process(tmp_path):
    import os
    import subprocess
    import sys

    from pda_repro.bench.faithfulness.warm import _claim

    lock = tmp_path / "locks" / "map-x.lock"
    assert _claim(lock) and lock.read_text() == str(os.getpid())
    assert not _claim(lock)  # held by a live process (this one)
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(done.stdout.strip())  # a process that has exited
    assert _claim(lock) and lock.read_text() == str(os.getpid())


def test_fig14_claim_compares_pda_and_epda_at_each_stride_on_the_most_images_they_share(rng):
    """The README's Fig 14 line: one per stride at which both PDA and efficient PDA were evaluated, over the
    images both share; a metric whose intervals separate names the better map, overlapping ones say so."""
    from pda_repro.bench.faithfulness_figures import ranking_groups
    from pda_repro.bench.faithfulness_report import _ranking_claims

    rows = []
    for i in range(27):
        for key, stride, shift in (("pda_s10", 10, 0.0), ("epda_s10", 10, -0.3), ("simplified", 1, 0.0)):
            rows.append({"model": "m", "image": f"im{i}", "map": key, "stride": stride,
                         "deletion_auc_mean": 0.5 + shift + 0.01 * rng.standard_normal(),
                         "insertion_auc_mean": 0.5 + 0.01 * rng.standard_normal()})  # fmt: skip
    for i in range(5):
        for key in ("pda_s5", "epda_s5"):
            rows.append({"model": "m", "image": f"im{i}", "map": key, "stride": 5,
                         "deletion_auc_mean": 0.5 + 0.01 * rng.standard_normal(),
                         "insertion_auc_mean": 0.5 + 0.01 * rng.standard_normal()})  # fmt: skip
    lines = [x for x in _ranking_claims(ranking_groups(pd.DataFrame(rows))) if x]
    assert len(lines) == 2
    s10, s5 = lines
    assert "pda_s10 (s10) vs epda_s10 (s10) on 27 images" in s10
    assert "deletion AUC, mean fill: efficient PDA better" in s10  # lower deletion AUC, intervals apart
    assert "insertion AUC, mean fill: no clear difference" in s10
    assert "pda_s5 (s5) vs epda_s5 (s5) on 5 images" in s5


def test_an_interrupted_faithfulness_map_resumes_from_its_checkpoint_in_the_cache(tmp_path, monkeypatch):
    """A map interrupted mid-way (a killed `benchmark warm`) leaves its checkpoint in the cache, never in the
    store; the next call resumes it and stores the map the uninterrupted run makes."""
    import dataclasses
    import importlib

    from pda_repro.bench.context import BenchContext
    from pda_repro.bench.faithfulness import maps as fx_maps
    from pda_repro.bench.faithfulness import plans as fx_plans
    from pda_repro.bench.inputs import mnist_inputs
    from pda_repro.bench.results import ResultStore

    full = fx_plans.plan_for("mnist", "quick")
    plan = dataclasses.replace(full, images=lambda spec: mnist_inputs(spec, "test", 1),
                               runs=tuple(r for r in full.runs if r.key == "pda"), stored=True)  # fmt: skip
    explain_module = importlib.import_module(
        "pda_repro.explain"
    )  # the module (the package exports the function)
    original = explain_module.explain

    def states(root):
        monkeypatch.setattr(fx_maps, "faithfulness_cache", lambda: root / "cache")
        monkeypatch.setattr(fx_maps, "faithfulness_store", lambda: root / "store")
        fx_maps._STATES.clear()
        ctx = BenchContext(store=ResultStore(root / "results", "test-env"))
        return fx_maps.plan_state(ctx, plan, "torch")

    reference = states(tmp_path / "a").get("pda", 0)[0]  # uninterrupted

    def interrupted(*args, **kwargs):
        def stop(done: int, total: int) -> None:
            if done >= 3000:  # past the first chunk of 2,560 evaluations
                raise KeyboardInterrupt

        return original(*args, **kwargs, callback=stop, checkpoint_batches=1)

    st = states(tmp_path / "b")
    monkeypatch.setattr(explain_module, "explain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        st.get("pda", 0)
    name = st.images[0][0]
    assert [p.name for p in (tmp_path / "b" / "cache" / "mnist" / name).glob("*.checkpoint.npz")]
    assert not list((tmp_path / "b" / "store").rglob("*.npz"))  # nothing half-made in the store
    monkeypatch.setattr(explain_module, "explain", original)
    m, meta = st.get("pda", 0)
    assert meta["resumed"] is True
    np.testing.assert_allclose(m, reference, rtol=0, atol=1e-6)
    assert not list((tmp_path / "b" / "cache").rglob("*.checkpoint.npz"))
    assert len(list((tmp_path / "b" / "store" / "mnist" / name).glob("pda-*.npz"))) == 1
