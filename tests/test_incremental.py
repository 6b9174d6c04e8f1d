"""Incremental inference (pda_repro.incremental) against full re-inference of the same net.

Tiny nets exercise every layer rule with odd sizes, strides, pads, dilation, groups, ceil-mode
pooling and branches; the windows sit at all four corners, on every edge and inside, k from 1 to
16, in several batch sizes. float64: equal within 1e-10; float32: probabilities within 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pda_repro import proto
from pda_repro.backends.base import BackendError, paste_windows
from pda_repro.backends.torch_backend import CaffeNet, TorchBackend
from pda_repro.incremental import cost
from pda_repro.incremental.caffe_graph import caffe_graph
from pda_repro.incremental.engine import IncrementalEngine


def _input(shape: tuple[int, ...]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'


def _layer(name, kind, bottoms, top, params=""):
    bottoms = " ".join(f'bottom: "{b}"' for b in ([bottoms] if isinstance(bottoms, str) else bottoms))
    tops = " ".join(f'top: "{t}"' for t in ([top] if isinstance(top, str) else top))
    return f'layer {{ name: "{name}" type: "{kind}" {bottoms} {tops} {params} }}\n'


def conv(name, bottom, top, out, k=3, **kw):
    extra = " ".join(f"{key}: {value}" for key, value in kw.items())
    size = f"kernel_size: {k}" if isinstance(k, int) else f"kernel_h: {k[0]} kernel_w: {k[1]}"
    return _layer(
        name, "Convolution", bottom, top, f"convolution_param {{ num_output: {out} {size} {extra} }}"
    )


def pool(name, bottom, top, method, k, s, p=0, ceil=True, global_=False):
    if global_:
        return _layer(
            name, "Pooling", bottom, top, f"pooling_param {{ pool: {method} global_pooling: true }}"
        )
    mode = "" if ceil else "ceil_mode: false"
    return _layer(
        name,
        "Pooling",
        bottom,
        top,
        f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} {mode} }}",
    )


def head(bottom, classes=5):
    return _layer(
        "fc", "InnerProduct", bottom, "fc", f"inner_product_param {{ num_output: {classes} }}"
    ) + _layer("prob", "Softmax", "fc", "prob")


# A chain: strided, dilated, asymmetric and grouped convolutions, max and average pooling with Caffe's
# ceil overhang (and its divisor correction), LRN across and within channels, every pointwise type.
CHAIN = (
    _input((1, 3, 23, 19))
    + conv("c1", "data", "c1", 6, 3, stride=2, pad=1)
    + _layer("r1", "ReLU", "c1", "c1", "relu_param { negative_slope: 0.1 }")
    + conv("c2", "c1", "c2", 6, (3, 5), dilation=2, pad=2)
    + _layer("r6", "ReLU6", "c2", "c2")
    + pool("p1", "c2", "p1", "MAX", 3, 2, 1)
    + _layer("n1", "LRN", "p1", "n1", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }")
    + conv("c3", "n1", "c3", 4, 3, group=2)
    + _layer("s1", "Sigmoid", "c3", "c3")
    + pool("p2", "c3", "p2", "AVE", 3, 2, 1)
    + _layer(
        "n2",
        "LRN",
        "p2",
        "n2",
        "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
    )
    + _layer("t1", "TanH", "n2", "n2")
    + head("n2")
)

# Branches: an explicit Split, depthwise convolution, Eltwise SUM (with coefficients), PROD and MAX
# over branches whose changed boxes differ, Concat, BatchNorm + Scale, Dropout, a kernel smaller than
# its stride (windows that change nothing below it), global pooling before the classifier.
BRANCHES = (
    _input((1, 2, 17, 21))
    + conv("stem", "data", "stem", 6, 3, pad=1)
    + _layer("sp", "Split", "stem", ["a", "b"])
    + conv("b1", "a", "b1", 6, 1)
    + conv("b2", "b", "b2", 6, 3, pad=1, group=6)
    + conv("b3", "stem", "b3", 6, 5, pad=2)
    + _layer("sum", "Eltwise", ["b1", "b2"], "sum", "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }")
    + _layer("prod", "Eltwise", ["b2", "b3"], "prod", "eltwise_param { operation: PROD }")
    + _layer("max", "Eltwise", ["sum", "prod", "b3"], "max", "eltwise_param { operation: MAX }")
    + pool("bp", "stem", "bp", "MAX", 3, 1, 1)
    + _layer("cat", "Concat", ["max", "bp", "b1"], "cat")
    + _layer("bn", "BatchNorm", "cat", "cat", "batch_norm_param { use_global_stats: true }")
    + _layer("sc", "Scale", "cat", "cat", "scale_param { bias_term: true }")
    + _layer("do", "Dropout", "cat", "cat")
    + conv("skip", "cat", "skip", 5, 2, stride=3)
    + pool("gp", "skip", "gp", "AVE", 0, 0, global_=True)
    + head("gp", 4)
)

# Floor-mode pooling, a 1×1 kernel with stride 3 (skips rows), and a Flatten before the classifier.
FLOOR = (
    _input((1, 1, 17, 16))
    + conv("c1", "data", "c1", 3, 2, stride=1)
    + pool("p1", "c1", "p1", "MAX", 2, 2, 0, ceil=False)
    + pool("p2", "p1", "p2", "MAX", 1, 3, ceil=False)
    + _layer("fl", "Flatten", "p2", "fl")
    + head("fl", 3)
)

NETS = {"chain": CHAIN, "branches": BRANCHES, "floor": FLOOR}


def caffe_net(text: str, rng: np.random.Generator, dtype=torch.float64) -> CaffeNet:
    net = CaffeNet(proto.deploy_net(proto.parse_prototxt(text))).to(dtype)
    with torch.no_grad():
        for layer, module in zip(net.layer_params, net.layers, strict=True):
            for i, param in enumerate(module.blobs):
                if layer.type == "BatchNorm":
                    value = [
                        rng.normal(0, 0.5, param.shape),
                        rng.uniform(0.5, 2, param.shape),
                        np.ones(param.shape),
                    ][i]
                else:  # unit-variance activations: probabilities stay away from 0 and 1
                    fan_in = int(np.prod(param.shape[1:])) if param.dim() > 1 else 1
                    value = rng.normal(0, 1.5 / np.sqrt(fan_in), param.shape)
                param.copy_(torch.from_numpy(np.asarray(value)))
    return net


def border_windows(h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Corners, the middle of every edge, the interior: 9 windows (fewer when they coincide)."""
    rs, cs = [0, (h - k) // 2, h - k], [0, (w - k) // 2, w - k]
    pairs = sorted({(r, c) for r in rs for c in cs})
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def full_outputs(net: CaffeNet, x: np.ndarray, rows, cols, patches) -> tuple[np.ndarray, np.ndarray]:
    images = paste_windows(x, rows, cols, patches)
    graph = caffe_graph(net)
    out = net.run(torch.from_numpy(images), [graph.outputs["prob"].split("#")[0], graph.outputs["logits"]])
    return (
        out[graph.outputs["prob"].split("#")[0]].reshape(len(rows), -1).numpy(),
        out[graph.outputs["logits"]].reshape(len(rows), -1).numpy(),
    )


def incremental_outputs(net, x, rows, cols, patches, batch, spatial_batch=None, channels_last=True):
    engine = IncrementalEngine(caffe_graph(net))
    with torch.no_grad():
        state = engine.prepare(torch.from_numpy(x[None]), channels_last=channels_last)
        stored = {v: t.clone() for v, t in state.values.items()}
        parts = [
            engine.forward_windows(
                state,
                rows[s : s + batch],
                cols[s : s + batch],
                torch.from_numpy(patches[s : s + batch]),
                spatial_batch,
            )  # fmt: skip
            for s in range(0, len(rows), batch)
        ]
    # forward_windows never writes into the stored activations
    assert all(torch.equal(state.values[v], t) for v, t in stored.items())
    return (
        np.concatenate([p["prob"].reshape(p["prob"].shape[0], -1).numpy() for p in parts]),
        np.concatenate([p["logits"].reshape(p["logits"].shape[0], -1).numpy() for p in parts]),
    )


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 16])
def test_tiny_nets_float64_equal_full_inference(name, k, channels_last, rng):
    net = caffe_net(NETS[name], rng)
    _, c, h, w = net.shapes.inputs["data"]
    x = rng.normal(0, 1, (c, h, w))
    rows, cols = border_windows(h, w, k)
    extra_r, extra_c = rng.integers(0, h - k + 1, 7), rng.integers(0, w - k + 1, 7)
    rows, cols = np.concatenate([rows, extra_r]), np.concatenate([cols, extra_c])
    patches = rng.normal(0, 2, (len(rows), c, k, k))
    with torch.no_grad():
        ref_p, ref_l = full_outputs(net, x, rows, cols, patches)
    for batch, spatial in ((1, None), (4, None), (len(rows), None), (len(rows), 3)):
        got_p, got_l = incremental_outputs(net, x, rows, cols, patches, batch, spatial, channels_last)
        np.testing.assert_allclose(got_l, ref_l, rtol=0, atol=1e-10, err_msg=f"{name} k={k} batch={batch}")
        np.testing.assert_allclose(got_p, ref_p, rtol=0, atol=1e-10, err_msg=f"{name} k={k} batch={batch}")
    # the windows really change the output (a test that cannot fail would not notice a no-op engine)
    base_p, base_l = full_outputs(net, x, rows[:1], cols[:1], x[None, :, :k, :k].copy())
    assert np.abs(ref_l - base_l).max() > 1e-3 and np.abs(ref_p - base_p).max() > 1e-6


@pytest.mark.parametrize("name", sorted(NETS))
def test_tiny_nets_float32_within_1e5(name, rng):
    net = caffe_net(NETS[name], rng, dtype=torch.float32)
    _, c, h, w = net.shapes.inputs["data"]
    x = rng.normal(0, 1, (c, h, w)).astype(np.float32)
    for k in (1, 4, 7):
        rows, cols = border_windows(h, w, k)
        patches = rng.normal(0, 2, (len(rows), c, k, k)).astype(np.float32)
        with torch.no_grad():
            ref_p, _ = full_outputs(net, x, rows, cols, patches)
        got_p, _ = incremental_outputs(net, x, rows, cols, patches, 3)
        np.testing.assert_allclose(got_p, ref_p, rtol=0, atol=1e-5)


def test_changed_boxes_are_exactly_what_changes(rng):
    """The cost model's boxes against brute force: in float64 with random weights (no ReLU), the
    set of positions where a layer's output differs from the unmodified image's is exactly the box."""
    text = (
        _input((1, 2, 19, 17))
        + conv("c1", "data", "c1", 3, 3, stride=2, pad=1)
        + conv("c2", "c1", "c2", 3, 3, pad=2, dilation=2)
        + pool("p1", "c2", "p1", "AVE", 3, 2, 1)
        + conv("c3", "p1", "c3", 2, (1, 3), pad=0)
        + head("c3")
    )
    net = caffe_net(text, rng)
    graph = caffe_graph(net)
    x = rng.normal(0, 1, (2, 19, 17))
    for r, c, k in [(0, 0, 3), (8, 5, 4), (16, 14, 3), (5, 0, 1)]:
        y = x.copy()
        y[:, r : r + k, c : c + k] += rng.normal(0, 1, (2, k, k))
        names = ["c1", "c2", "p1", "c3"]
        a = net.run(torch.from_numpy(x[None]), names)
        b = net.run(torch.from_numpy(y[None]), names)
        boxes = cost.changed_boxes(graph, k, np.array([r]), np.array([c]))
        for name in names:
            diff = (a[name] - b[name]).abs().amax(dim=(0, 1)).numpy() > 1e-12
            rr, cc = np.nonzero(diff)
            r0, rs, c0, cs = (int(v[0]) for v in boxes[name])
            assert (rr.min(), rr.max() + 1, cc.min(), cc.max() + 1) == (r0, r0 + rs, c0, c0 + cs), (
                name,
                r,
                c,
                k,
            )


def test_full_macs_of_the_zoo_match_the_known_counts():
    """AlexNet ~0.72 G and VGG-16 ~15.47 G multiply-adds (convolutions + fully connected), as
    published counts of the Model Zoo nets; computed here from each layer's geometry by hand."""
    from pda_repro.backends import load_backend

    vgg = load_backend("vgg16", backend="torch", weights="random")
    # VGG-16 by hand: 13 convolutions 3x3 (pad 1) at 224/112/56/28/14 + 3 fully connected layers
    plan = [(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128)]
    plan += [(56, 128, 256), (56, 256, 256), (56, 256, 256), (28, 256, 512), (28, 512, 512), (28, 512, 512)]
    plan += [(14, 512, 512)] * 3
    by_hand = sum(s * s * cin * cout * 9 for s, cin, cout in plan) + 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert cost.full_macs(caffe_graph(vgg.model)) == by_hand


def test_unsupported_layer_falls_back_to_full_and_says_so(rng):
    text = (
        _input((1, 1, 9, 9))
        + conv("c1", "data", "c1", 2, 3)
        + _layer("bn", "BatchNorm", "c1", "c1", "batch_norm_param { use_global_stats: false }")
        + head("c1", 3)
    )
    backend = TorchBackend(proto.parse_prototxt(text), batch=4)
    note = backend.incremental_note()
    assert note is not None and "'bn' (BatchNorm)" in note
    assert backend.resolve_inference("auto") == "full"
    with pytest.raises(BackendError, match="incremental"):
        backend.resolve_inference("incremental")
    x = rng.normal(0, 1, (1, 9, 9)).astype(np.float32)
    patches = rng.normal(0, 1, (2, 1, 3, 3)).astype(np.float32)
    probs, _ = backend.forward_windows(x, np.array([0, 6]), np.array([6, 0]), patches)
    ref, _ = backend.forward(paste_windows(x, np.array([0, 6]), np.array([6, 0]), patches))
    np.testing.assert_array_equal(probs, ref)


@pytest.fixture(scope="module")
def small_backend():
    text = _input((1, 2, 12, 12)) + conv("c1", "data", "c1", 3, 3, pad=1) + head("c1", 4)
    return TorchBackend(proto.parse_prototxt(text), batch=4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "patches": a["patches"][:, :1]}, "patches must be N×2×k×k"),
        (lambda a: {**a, "patches": a["patches"].astype(np.float64)}, "float32"),
        (lambda a: {**a, "x": a["x"].astype(np.float64)}, "x must be one float32 image"),
        (lambda a: {**a, "x": a["x"][None]}, "x must be one float32 image"),
        (lambda a: {**a, "rows": np.array([0, 10])}, "rows value 10 puts the 3×3 window outside"),
        (lambda a: {**a, "cols": np.array([-1, 0])}, "cols value -1"),
        (lambda a: {**a, "rows": np.array([0.0, 1.0])}, "rows must be 2 integers"),
        (lambda a: {**a, "rows": np.array([0])}, "rows must be 2 integers"),
        (lambda a: {**a, "patches": np.full((2, 2, 3, 3), np.nan, np.float32)}, "NaN"),
        (lambda a: {**a, "patches": np.zeros((2, 2, 13, 13), np.float32)}, "do not fit"),
    ],
)
def test_bad_input_to_forward_windows_is_a_backend_error(small_backend, change, message):
    args = {
        "x": np.zeros((2, 12, 12), np.float32),
        "rows": np.array([0, 9]),
        "cols": np.array([9, 0]),
        "patches": np.ones((2, 2, 3, 3), np.float32),
    }
    for mode in ("full", "incremental"):
        small_backend.inference = mode
        with pytest.raises(BackendError, match=message):
            small_backend.forward_windows(**change(args))
    small_backend.inference = "auto"


def test_stored_activations_follow_new_weights(small_backend, rng):
    x = rng.normal(0, 1, (2, 12, 12)).astype(np.float32)
    patches = rng.normal(0, 1, (3, 2, 3, 3)).astype(np.float32)
    rows, cols = np.array([0, 4, 9]), np.array([9, 4, 0])
    small_backend.inference = "incremental"
    small_backend.forward_windows(x, rows, cols, patches)  # stores x's activations
    weights = {name: [rng.normal(0, 1, b.shape).astype(np.float32) for b in blobs]
               for name, blobs in small_backend.get_weights().items()}  # fmt: skip
    small_backend.set_weights(weights)
    got, _ = small_backend.forward_windows(x, rows, cols, patches)
    small_backend.inference = "full"
    ref, _ = small_backend.forward_windows(x, rows, cols, patches)
    small_backend.inference = "auto"
    np.testing.assert_allclose(got, ref, atol=1e-6)


# -- the zoo nets through the torch backend (float32) ------------------------------------------------
ZOO = [
    "mnist",
    "efficientnet_lite0",
    "alexnet",
    "googlenet",
    pytest.param("vgg16", marks=pytest.mark.slow),
]


def photo_input(name: str) -> np.ndarray:
    from pda_repro import data, zoo
    from pda_repro.preprocess import load_image

    spec = zoo.get(name)
    return load_image(data.photo_paths()["coffee"], spec).x


@pytest.mark.parametrize("name", ZOO)
def test_zoo_nets_incremental_equals_full(name, rng):
    from pda_repro.backends import load_backend

    net = load_backend(name, backend="torch", batch=4)  # Lite0 and MNIST: trained; others: random
    c, h, w = net.input_shape
    x = photo_input(name) if c == 3 else rng.uniform(-0.4, 0.4, (c, h, w)).astype(np.float32)
    for k in (1, 10, 16) if name in ("mnist", "efficientnet_lite0") else (10,):
        rows, cols = border_windows(h, w, k)
        patches = (x.std() * rng.standard_normal((len(rows), c, k, k))).astype(np.float32)
        net.inference = "full"
        ref_p, ref_l = net.forward_windows(x, rows, cols, patches)
        net.inference = "incremental"
        got_p, got_l = net.forward_windows(x, rows, cols, patches)
        np.testing.assert_allclose(got_p, ref_p, rtol=0, atol=1e-5, err_msg=f"{name} k={k}")
        scale = np.abs(ref_l).max()
        np.testing.assert_allclose(got_l, ref_l, rtol=0, atol=1e-5 * max(1.0, scale), err_msg=f"{name} k={k}")


# -- the window methods: maps with inference="incremental" equal "full" ------------------------------
def _gaussian(rng, k, l, channels, mean_scale):  # noqa: E741
    from pda_repro.sampling import PatchGaussian
    from tests.reference.methods_ref import random_spd

    dim = channels * l * l
    return PatchGaussian(
        rng.standard_normal(dim) * mean_scale, random_spd(dim, rng, mean_scale**2), k, l, channels
    )


@pytest.mark.parametrize(
    "name, k, l, stride, methods",
    [
        ("mnist", 4, 8, 2, ("pda", "epda", "epda_sampled", "occlusion")),
        ("efficientnet_lite0", 10, 14, 16, ("pda", "epda", "epda_sampled", "occlusion")),
    ],
)
def test_window_method_maps_incremental_equal_full(name, k, l, stride, methods, tmp_path):  # noqa: E741
    from pda_repro.backends import load_backend
    from pda_repro.explain import explain

    rng = np.random.default_rng(3)
    net = load_backend(name, backend="torch", batch=8)
    c, h, w = net.input_shape
    x = photo_input(name) if c == 3 else rng.uniform(-0.4, 0.4, (c, h, w)).astype(np.float32)
    sampler = _gaussian(rng, k, l, c, float(x.std()))
    classes = np.argsort(net.forward(x[None])[0][0])[-2:]
    for method in methods:
        args = dict(method=method, window=k, outer=l, samples=2, stride=stride, sampler=sampler, classes=classes,
                    progress=False, batch=8)  # fmt: skip
        full = explain(net, x, inference="full", rng=np.random.default_rng(1), **args)
        ckpt = tmp_path / f"{method}.ckpt.npz"

        def stop(done, total):
            if done >= total // 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            explain(net, x, inference="incremental", rng=np.random.default_rng(1), checkpoint=ckpt, callback=stop,
                    checkpoint_batches=1, **args)  # fmt: skip
        assert ckpt.exists()
        incr = explain(net, x, inference="incremental", rng=np.random.default_rng(1), checkpoint=ckpt, **args)
        assert incr.params["inference"] == "incremental" and full.params["inference"] == "full"
        assert incr.params["resumed_evaluations"] > 0
        assert np.abs(full.maps).max() > 1e-3, method
        np.testing.assert_allclose(incr.maps, full.maps, rtol=0, atol=1e-4, err_msg=f"{name} {method}")


# -- the harness experiment ----------------------------------------------------------------------------
def test_incremental_experiment_row(tmp_path, rng, monkeypatch):
    """The benchmark cell on a tiny torch net: the row's ratios and differences follow from its parts."""
    from pda_repro.bench import incremental as I
    from pda_repro.grid import WindowGrid
    from pda_repro.sampling import MarginalSampler
    from tests.test_bench_experiments import TinyContext

    text = (
        _input((1, 2, 24, 21))
        + conv("c1", "data", "c1", 4, 3, pad=1)
        + _layer("r1", "ReLU", "c1", "c1")
        + pool("p1", "c1", "p1", "MAX", 2, 2)
        + conv("c2", "p1", "c2", 4, 3, pad=1)
        + head("c2", 3)
    )
    net = TorchBackend(proto.parse_prototxt(text), batch=4, seed=5)
    image = rng.normal(size=(2, 24, 21)).astype(np.float32)
    monkeypatch.setattr(I, "timing_image", lambda ctx, model: (image, "noise"))
    ctx = TinyContext(tmp_path, net, batch=160)
    sampler = MarginalSampler(rng.normal(size=(6, 2, 24, 21)), I.WINDOW)  # no per-case factorisations
    monkeypatch.setattr(ctx, "sampler", lambda *args: (sampler, 0.0))
    row = I.measure(ctx, "tiny", "epda", subset=32)
    grid = WindowGrid(24, 21, I.WINDOW, I.STRIDE)
    assert row["windows_total"] == grid.n_windows == 15 * 12 and row["windows_evaluated"] == 32
    assert row["extrapolated"] and row["batch"] == 16 and row["full_default_batch"] == 4
    assert row["speedup"] == pytest.approx(row["full_seconds"] / row["incremental_seconds"])
    assert row["fraction_of_ideal"] == pytest.approx(row["speedup"] / row["ideal_ratio"])
    rows, cols = grid.corners()
    assert row["ideal_ratio"] == pytest.approx(cost.ideal_ratio(caffe_graph(net.model), I.WINDOW, rows, cols))
    assert row["ideal_ratio"] > 1.0 and row["engine_ratio"] <= row["ideal_ratio"] + 1e-12
    assert row["max_abs_dprob"] < 1e-5 and row["max_abs_dmap"] < 1e-4
    assert 0.0 <= row["loop_overhead_fraction"] < 1.0 and row["base_state_mib"] > 0
    assert net.inference == "auto"  # the experiment leaves the backend as it found it


def test_project_readme_block_is_filled_from_the_data(tmp_path):
    import pandas as pd

    from pda_repro.bench.figures import README_BLOCK, update_project_readme

    env = tmp_path / "results" / "cpu-test-2c"
    env.mkdir(parents=True)
    row = dict(model="vgg16", method="epda", profile="quick", batch=16, samples=1, device="cpu", window=10,
               outer=18, stride=1, full_default_batch=4, full_seconds=900.0, incremental_seconds=100.0,
               full_default_batch_seconds=950.0, speedup=9.0, ideal_ratio=10.4, target_speedup=8.0,
               extrapolated=True, windows_evaluated=64, base_state_mib=170.0)  # fmt: skip
    pd.DataFrame([row]).to_csv(env / "incremental.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BLOCK[0]}\nold table\n{README_BLOCK[1]}\noutro\n")
    assert update_project_readme(readme, tmp_path / "results") == readme
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert (
        "| vgg16 | efficient PDA | 15.8 min | 15.0 min | 1.7 min | 9.00× |  | 10.40× | ≥ 8× | 170 MiB |"
        in text
    )
    (tmp_path / "plain.md").write_text("no markers\n")
    assert update_project_readme(tmp_path / "plain.md", tmp_path / "results") is None


def test_kept_checkpoint_holds_the_finished_run(tmp_path, rng):
    """explain(keep_checkpoint=True) leaves a checkpoint with every chunk: a rerun (e.g. after a kill
    between the last window and the caller's write) recomputes nothing and gives the same map."""
    from pda_repro.explain import explain

    text = _input((1, 1, 12, 12)) + conv("c1", "data", "c1", 2, 3, pad=1) + head("c1", 3)
    net = TorchBackend(proto.parse_prototxt(text), batch=4, seed=2)
    x = rng.normal(size=(1, 12, 12)).astype(np.float32)
    ckpt = tmp_path / "run.ckpt.npz"
    args = dict(method="occlusion", window=3, stride=1, classes=[0, 1], progress=False, train_size=100)
    first = explain(net, x, checkpoint=ckpt, keep_checkpoint=True, **args)
    assert ckpt.exists()
    again = explain(net, x, checkpoint=ckpt, **args)
    assert again.params["resumed_evaluations"] == first.windows_evaluated == 100
    assert again.forward_passes == 1  # only the image itself
    np.testing.assert_array_equal(again.maps, first.maps)
    assert not ckpt.exists()
