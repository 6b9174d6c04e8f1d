"""The methods on the real backends: the tiny prototxts of models/tiny/ with weights written as a
.caffemodel by the test, run on torch and on pycaffe (marked `caffe`), compared with the float64 test
double and with each other; plus the zoo defaults (Laplace N, input bounds, Grad-CAM blob)."""

from __future__ import annotations

import numpy as np
import pytest

from pda_repro.backends import load_backend
from pda_repro.backends.caffemodel import write_caffemodel
from pda_repro.explain import explain, load_model
from pda_repro.methods.gradients import default_cam_blob, upsample_bilinear
from pda_repro.sampling import MarginalSampler, PatchGaussian
from tests.reference.methods_ref import (
    ALL_METHODS,
    TINY,
    NumpyChainBackend,
    parse_prototxt,
    random_spd,
    random_weights,
)

BACKENDS = ["torch", pytest.param("caffe", marks=pytest.mark.caffe)]
N_TRAIN = 1000


def tiny_net(name: str, backend: str, tmp_path, rng, scale: float = 0.5, request=None):
    """(backend net, weights) for models/tiny/<name>.prototxt with weights via a .caffemodel file."""
    if backend == "caffe":
        request.getfixturevalue("caffe")  # skip locally / fail in CI without pycaffe
    prototxt = TINY / f"{name}.prototxt"
    weights = random_weights(parse_prototxt(prototxt), rng, scale=scale)
    model = tmp_path / f"{name}.caffemodel"
    write_caffemodel(model, weights, net_name=f"tiny_{name}")
    return load_backend(prototxt, backend=backend, weights=model), weights


def gaussian(rng, k=3, l=5, channels=2):  # noqa: E741
    dim = channels * l * l
    return PatchGaussian(rng.standard_normal(dim) * 0.3, random_spd(dim, rng), k, l, channels)


def run_all(net, x, sampler, methods, **extra):
    out = {}
    for m in methods:
        opts = dict(extra)
        if m == "deep_taylor":
            opts["bounds"] = (float(x.min()) - 1, float(x.max()) + 1)
        out[m] = explain(
            net, x, method=m, window=3, outer=5, samples=3, sampler=sampler, train_size=N_TRAIN,
            rng=np.random.default_rng(2), progress=False, batch=16, **opts,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_net_on_backend_matches_float64_double(backend, tmp_path, rng, request):
    net, weights = tiny_net("linear", backend, tmp_path, rng, request=request)
    double = NumpyChainBackend(TINY / "linear.prototxt", weights)
    x = rng.standard_normal(net.input_shape).astype(np.float32)
    sampler = gaussian(rng)
    methods = [m for m in ALL_METHODS if m != "gradcam"]  # no feature map in a linear net
    ours, ref = run_all(net, x, sampler, methods), run_all(double, x, sampler, methods)
    for m in methods:
        scale = np.abs(ref[m].maps).max()
        assert scale > 1e-3, m
        np.testing.assert_allclose(ours[m].maps, ref[m].maps, rtol=1e-4, atol=1e-4 * scale, err_msg=m)


@pytest.mark.caffe
def test_conv_net_torch_and_caffe_give_the_same_maps(tmp_path, rng, request):
    caffe_net, _ = tiny_net("conv", "caffe", tmp_path, np.random.default_rng(9), scale=0.2, request=request)
    torch_net, _ = tiny_net("conv", "torch", tmp_path, np.random.default_rng(9), scale=0.2)
    x = rng.standard_normal(torch_net.input_shape).astype(np.float32)
    sampler = gaussian(rng)
    maps_t, maps_c = run_all(torch_net, x, sampler, ALL_METHODS), run_all(caffe_net, x, sampler, ALL_METHODS)
    for m in ALL_METHODS:
        scale = np.abs(maps_t[m].maps).max()
        assert scale > 1e-4, m
        np.testing.assert_allclose(maps_c[m].maps, maps_t[m].maps, rtol=1e-4, atol=1e-4 * scale, err_msg=m)
    assert maps_t["gradcam"].params["blob"] == "conv1"


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcam_known_answer(backend, tmp_path, rng, request):
    """conv1 -> ReLU -> fc: d logit_c / d A = W_c (reshaped), so a_k = mean(W_c[k])."""
    prototxt = tmp_path / "convfc.prototxt"
    text = (TINY / "conv.prototxt").read_text()
    text = text.replace("kernel_size: 3 pad: 1", "kernel_size: 3")  # 8×8 map, upsampled to 10×10
    start = text.index('layer {\n  name: "pool1"')
    end = text.index('layer {\n  name: "fc"')
    text = text[:start] + text[end:].replace('bottom: "pool1"', 'bottom: "conv1"')
    prototxt.write_text(text)
    if backend == "caffe":
        request.getfixturevalue("caffe")
    weights = random_weights(parse_prototxt(prototxt), rng, scale=0.3)
    net = load_backend(prototxt, backend=backend, weights=weights)
    x = rng.standard_normal(net.input_shape).astype(np.float32)
    res = explain(net, x, method="gradcam", classes=[0, 2], progress=False)
    assert res.params["blob"] == "conv1"
    act = net.blobs(x[None], ["conv1"])["conv1"][0].astype(np.float64)  # after the in-place ReLU
    w_fc = weights["fc"][0].astype(np.float64).reshape(4, *act.shape)
    for i, c in enumerate([0, 2]):
        a = w_fc[c].mean(axis=(1, 2))
        cam = np.maximum(np.einsum("k,kij->ij", a, act), 0)
        np.testing.assert_allclose(res.maps[i], upsample_bilinear(cam[None], 10, 10)[0], rtol=1e-5, atol=1e-6)
    assert res.maps.max() > 0


def test_deep_taylor_conserves_relevance_through_conv_and_pooling(tmp_path, rng):
    net, _ = tiny_net("conv", "torch", tmp_path, rng, scale=0.3)
    x = rng.uniform(-1, 1, net.input_shape).astype(np.float32)
    _, logits = net.forward(x[None])
    res = explain(net, x, method="deep_taylor", bounds=(-1.0, 1.0), progress=False)
    np.testing.assert_allclose(res.maps.sum(axis=(1, 2)), logits[0], rtol=1e-5, atol=1e-5)
    pos = logits[0] > 0
    assert pos.any()
    # for a positive logit with non-negative evidence through ReLUs, z^B relevance is mostly positive
    assert (res.maps[pos] > 0).mean() > 0.5


def test_deep_taylor_rejects_other_layer_types_before_running(tmp_path, rng, monkeypatch):
    text = (
        (TINY / "conv.prototxt")
        .read_text()
        .replace(
            'layer {\n  name: "pool1"',
            'layer {\n  name: "norm1"\n  type: "LRN"\n  bottom: "conv1"\n  top: "norm1"\n'
            "  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 }\n}\n"
            'layer {\n  name: "pool1"',
        )
        .replace(
            'name: "pool1"\n  type: "Pooling"\n  bottom: "conv1"',
            'name: "pool1"\n  type: "Pooling"\n  bottom: "norm1"',
        )
    )
    prototxt = tmp_path / "lrn.prototxt"
    prototxt.write_text(text)
    net = load_backend(
        prototxt, backend="torch", weights=random_weights(parse_prototxt(TINY / "conv.prototxt"), rng)
    )
    monkeypatch.setattr(net, "forward", lambda x: pytest.fail("ran a forward pass before rejecting"))
    x = rng.standard_normal(net.input_shape).astype(np.float32)
    with pytest.raises(ValueError, match=r"'norm1' of type 'LRN'"):
        explain(net, x, method="deep_taylor", bounds=(-5, 5), progress=False)


def test_batch_size_on_torch_changes_maps_only_by_float_rounding(tmp_path, rng):
    """The loop itself is batch-exact (tests/test_methods.py); torch's kernels may round differently."""
    net, _ = tiny_net("conv", "torch", tmp_path, rng, scale=0.2)
    x = rng.standard_normal(net.input_shape).astype(np.float32)
    sampler = gaussian(rng)
    maps = [
        explain(
            net, x, method="pda", window=3, outer=5, samples=3, sampler=sampler, batch=b, train_size=N_TRAIN,
            rng=np.random.default_rng(1), progress=False,
        ).maps
        for b in (1, 7, 160)
    ]  # fmt: skip
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], rtol=0, atol=1e-5)


def test_zoo_defaults_for_mnist():
    net = load_model("mnist", backend="torch")
    x = np.random.default_rng(0).uniform(0, 0.99, net.input_shape).astype(np.float32)
    occ = explain(net, x, method="occlusion", window=4, stride=4, classes=[3], progress=False)
    assert occ.params["train_size"] == 60000  # the zoo's N for the Laplace correction
    assert occ.windows_evaluated == 49
    assert default_cam_blob(net) == "conv2"
    dt = explain(net, x, method="deep_taylor", classes=[3], progress=False)  # bounds from input_range
    assert dt.maps.sum() == pytest.approx(dt.params["logits"][0], rel=1e-5, abs=1e-6)
    digits = np.random.default_rng(1).uniform(0, 0.99, (6, *net.input_shape)).astype(np.float32)
    pda = explain(
        net, x, method="pda", window=4, outer=8, samples=3, sampler=MarginalSampler(digits, 4), classes=[3],
        window_subset=10, batch=8, progress=False,
    )  # fmt: skip
    assert pda.windows_evaluated == 10 and pda.params["images_forwarded"] == 1 + 30
    assert pda.forward_passes == 1 + 4  # 30 images in batches of at most 8
    assert np.isfinite(pda.maps).all() and np.abs(pda.maps).max() > 0


def test_default_gradcam_blob_of_googlenet():
    net = load_model("googlenet", backend="torch", weights="random")
    assert default_cam_blob(net) == "inception_5b/output"
