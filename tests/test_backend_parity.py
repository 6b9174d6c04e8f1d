"""pycaffe and the torch backend run the same zoo nets with the same weights and agree.

Weights go through a .caffemodel file in both directions (torch writes, caffe reads; caffe writes, torch
reads), then both backends see a batch of 4 real photos (scikit-image's astronaut, chelsea, coffee,
rocket): probabilities agree within 1e-5 absolute, logits and input gradients within 1e-4 / 1e-3
relative to their largest magnitude.

Gradients at non-differentiable points: the gradient of a max goes to the window's first maximum, a
ReLU passes it where its input is positive. Two float32 implementations round differently (Caffe's
im2col+GEMM vs torch's convolution: ~1e-6 relative), so in the few max-pooling windows whose two
largest values are that close (flat photo regions, or chance among the millions of windows of
VGG/GoogLeNet) and the few ReLU inputs that close to 0, Caffe and torch take different branches, and
the input gradient then differs locally by a lot (caffe_quirks 15). That is rounding, not semantics;
so the gradient test (1) checks that the inputs of every MAX pooling and ReLU agree to 1e-4 and that the
branches differ in fewer than 1e-2 of the windows / 1e-4 of the units (a semantic error -- window
offsets, tie rule, padding -- would make them differ everywhere), and (2) compares the gradients with
torch taking Caffe's branches.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pda_repro import proto, zoo
from pda_repro.backends import load_backend
from tests.conftest import require_caffe

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
MODELS = [
    "mnist",
    "alexnet",
    pytest.param("googlenet", marks=pytest.mark.slow),
    pytest.param("vgg16", marks=pytest.mark.slow),
]


def photo_batch(spec: zoo.ModelSpec) -> np.ndarray:
    """The 4 photos as this net's input: shorter side to `resize`, centre crop, channel order, mean, scale.
    (A tiny local stand-in for pda_repro.preprocess, enough for equal inputs on both backends.)"""
    c, h, w = spec.input_shape
    batch = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)())
        if spec.channel_order == "GRAY":
            image = image.convert("L")
        if spec.resize:
            factor = spec.resize / min(image.size)
            image = image.resize((round(image.width * factor), round(image.height * factor)), Image.BILINEAR)
            left, top = (image.width - w) // 2, (image.height - h) // 2
            image = image.crop((left, top, left + w, top + h))
        else:
            image = image.resize((w, h), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32).reshape(h, w, -1).transpose(2, 0, 1)
        if spec.channel_order == "BGR":
            pixels = pixels[::-1]
        batch.append((pixels - np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)) * spec.scale)
    x = np.ascontiguousarray(np.stack(batch), dtype=np.float32)
    assert x.shape == (len(PHOTOS), c, h, w)
    return x


def lively_weights(name: str, x: np.ndarray, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Random weights under which the net's output depends strongly on its input.

    The zoo's own fillers (e.g. AlexNet's gaussian 0.01 with bias 0.1) make a random net's logits almost
    input-independent, which would make the comparison weak. Here weights are He-scaled (std
    sqrt(2/fan_in)) with small random biases, and the logits layer is rescaled -- logits are linear in
    it -- so that the logits of these photos have standard deviation 3."""
    from pda_repro.backends.torch_backend import TorchBackend  # noqa: PLC0415

    net = proto.deploy_net(proto.read_prototxt(zoo.get(name).prototxt))
    shapes = proto.infer_shapes(net).params
    weights = {}
    for layer, blob_shapes in shapes.items():
        w_shape, b_shape = blob_shapes
        fan_in = int(np.prod(w_shape[1:]))
        weights[layer] = [
            (rng.standard_normal(w_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
            (0.05 * rng.standard_normal(b_shape)).astype(np.float32),
        ]
    probe = TorchBackend(net, weights=weights)
    _, logits = probe.forward(x)
    last = [layer.name for layer in net.layer if probe.logits_blob in layer.top][-1]
    weights[last] = [blob * np.float32(3.0 / logits.std()) for blob in weights[last]]
    return weights


def assert_close_relative(a: np.ndarray, b: np.ndarray, rel: float, what: str) -> None:
    scale = float(np.abs(b).max())
    assert scale > 0, f"{what}: all zero, nothing compared"
    err = float(np.abs(a - b).max())
    assert err <= rel * scale, f"{what}: max |difference| {err:.3g} > {rel} x max |value| {scale:.3g}"


def _pool_windows(bottom: np.ndarray, layer, shape) -> np.ndarray:
    """N×C×oh×ow×(kh*kw) view of a MAX pooling layer's windows (padding as -inf, Caffe's geometry)."""
    g = proto.pool_geometry(layer, shape)
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = g["kernel"], g["stride"], g["pad"], g["out"]
    n, c, h, w = bottom.shape
    padded = np.full(
        (n, c, max((oh - 1) * sh + kh, h + ph), max((ow - 1) * sw + kw, w + pw)), -np.inf, np.float32
    )
    padded[:, :, ph : ph + h, pw : pw + w] = bottom
    view = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    return view.reshape(*view.shape[:4], kh * kw)


def route_torch_like_caffe(caffe_net, torch_net, x: np.ndarray) -> tuple[int, int]:
    """Make torch take the same branch as Caffe at every non-differentiable point for input x: MAX
    pooling picks Caffe's first maxima, ReLU passes where Caffe's input is positive. Returns how many
    windows / ReLU units had gone the other way, after checking that the inputs of those layers agree
    to rounding and that such units are rare (see the module docstring)."""
    net = torch_net.net_param
    shapes = proto.infer_shapes(net, batch=x.shape[0])
    pools = [layer for layer in net.layer if layer.type == "Pooling" and layer.pooling_param.pool == 0]
    relus = [layer for layer in net.layer if layer.type == "ReLU" and not layer.relu_param.negative_slope]
    relu_input = {}  # the ReLU's bottom as its producer left it ("conv1@conv1"), before the in-place ReLU
    for i, layer in enumerate(net.layer):
        if layer in relus:
            producer = [p for p in net.layer[:i] if layer.bottom[0] in p.top][-1]
            relu_input[layer.name] = f"{layer.bottom[0]}@{producer.name}"
    names = sorted({layer.bottom[0] for layer in pools} | set(relu_input.values()))
    ours, theirs = torch_net.blobs(x, names), caffe_net.blobs(x, names)
    for name in names:
        assert_close_relative(ours[name], theirs[name], 1e-4, name)
    pool_flips = relu_flips = 0
    for layer in pools:
        bottom = layer.bottom[0]
        caffe_windows = _pool_windows(theirs[bottom], layer, shapes.blobs[bottom])
        caffe_pick = caffe_windows.argmax(axis=-1)  # np.argmax: first maximum, as Caffe's strict ">"
        differs = caffe_pick != _pool_windows(ours[bottom], layer, shapes.blobs[bottom]).argmax(axis=-1)
        # the inputs agree to rounding (above), so a differing pick is a near-tie; a semantic error (window
        # offsets, tie rule, padding) would make the picks differ in a large share of the windows
        assert differs.mean() < 1e-2, (
            f"{layer.name}: maxima differ in {differs.sum()} of {differs.size} windows"
        )
        pool_flips += int(differs.sum())
        g = proto.pool_geometry(layer, shapes.blobs[bottom])
        (_, kw), (sh, sw), (ph, pw), (oh, ow) = g["kernel"], g["stride"], g["pad"], g["out"]
        width = shapes.blobs[bottom][3]
        rows = np.arange(oh)[:, None] * sh - ph + caffe_pick // kw
        cols = np.arange(ow)[None, :] * sw - pw + caffe_pick % kw
        index = torch.from_numpy(rows * width + cols).reshape(x.shape[0], -1, oh * ow)

        def gathered(value, *_, index=index, out=(oh, ow)):
            return value.flatten(2).gather(2, index).reshape(*value.shape[:2], *out)

        torch_net.model.by_name[layer.name].method = gathered
    for layer in relus:
        caffe_input = theirs[relu_input[layer.name]]
        differs = (caffe_input > 0) != (ours[relu_input[layer.name]] > 0)
        assert differs.mean() < 1e-4, f"{layer.name}: signs differ in {differs.sum()} of {differs.size} units"
        relu_flips += int(differs.sum())
        mask = torch.from_numpy(caffe_input > 0)
        torch_net.model.by_name[layer.name].forward = lambda value, mask=mask: [torch.where(mask, value, 0.0)]
    return pool_flips, relu_flips


@pytest.mark.caffe
@pytest.mark.parametrize("name", MODELS)
def test_backends_agree_on_real_photos(name, rng, tmp_path):
    require_caffe()
    spec = zoo.get(name)
    x = photo_batch(spec)
    weights = lively_weights(name, x, rng)
    torch_writer = load_backend(name, "torch", weights=weights, batch=4)
    torch_writer.save_weights(tmp_path / "from_torch.caffemodel")
    del torch_writer
    caffe_net = load_backend(name, "caffe", weights=tmp_path / "from_torch.caffemodel", batch=4)
    caffe_net.save_weights(tmp_path / "from_caffe.caffemodel")
    torch_net = load_backend(name, "torch", weights=tmp_path / "from_caffe.caffemodel", batch=4)
    for layer, blobs in weights.items():  # the round trip is exact
        for ours, original in zip(torch_net.get_weights()[layer], blobs, strict=True):
            np.testing.assert_array_equal(ours, original)

    probs_c, logits_c = caffe_net.forward(x)
    probs_t, logits_t = torch_net.forward(x)
    assert logits_c.std(axis=0).mean() > 0.3, "logits hardly depend on the photo: weak comparison"
    np.testing.assert_allclose(probs_t, probs_c, rtol=0, atol=1e-5)
    assert_close_relative(logits_t, logits_c, 1e-4, f"{name} logits")
    # per photo, the class most specific to it (a random net may rank one class first for every photo)
    top = (logits_c - logits_c.mean(axis=0)).argmax(axis=1)
    pool_flips, relu_flips = route_torch_like_caffe(caffe_net, torch_net, x)
    print(f"{name}: {pool_flips} max-pooling windows and {relu_flips} ReLU units went the other way in torch")
    for output in ("prob", "logit"):
        grad_c = caffe_net.input_gradient(x, top, output=output)
        grad_t = torch_net.input_gradient(x, top, output=output)
        for n in range(len(x)):
            assert_close_relative(grad_t[n], grad_c[n], 1e-3, f"{name} photo {n} d{output}/dx")


@pytest.mark.caffe
def test_intermediate_blobs_and_blob_gradients_agree(rng):
    require_caffe()
    x = photo_batch(zoo.get("alexnet"))
    weights = lively_weights("alexnet", x, rng)
    caffe_net = load_backend("alexnet", "caffe", weights=weights, batch=3)  # 4 photos: chunks of 3 and 1
    torch_net = load_backend("alexnet", "torch", weights=weights, batch=3)
    names = ["fc6@fc6", "fc6", "fc7@fc7", "conv5", "norm1", "data"]
    blobs_c, blobs_t = caffe_net.blobs(x, names), torch_net.blobs(x, names)
    assert (blobs_c["fc6@fc6"] < 0).any() and (blobs_c["fc6"] >= 0).all()  # before / after relu6
    for name in names:
        assert_close_relative(blobs_t[name], blobs_c[name], 1e-4, name)
    for blob in ("conv5", "fc6@fc6"):
        act_c, grad_c = caffe_net.blob_gradient(x, blob, [1, 2, 3, 4], output="logit")
        act_t, grad_t = torch_net.blob_gradient(x, blob, [1, 2, 3, 4], output="logit")
        assert_close_relative(act_t, act_c, 1e-4, f"{blob} activation")
        assert_close_relative(grad_t, grad_c, 1e-3, f"{blob} gradient")


KITCHEN_SINK = """
name: "kitchen_sink"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 11 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 pad: 2 stride: 1 dilation: 2 group: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu6" type: "ReLU6" bottom: "conv" top: "conv" relu6_param { negative_slope: 0.1 threshold: 1.5 } }
layer { name: "split" type: "Split" bottom: "conv" top: "c1" top: "c2" top: "c3" }
layer { name: "avg" type: "Pooling" bottom: "c1" top: "avg" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "c2" top: "max" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "dw" type: "Convolution" bottom: "c3" top: "dw"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 6 } }
layer { name: "sum" type: "Eltwise" bottom: "avg" bottom: "max" top: "sum" eltwise_param { coeff: 0.5 coeff: -1.5 } }
layer { name: "emax" type: "Eltwise" bottom: "sum" bottom: "dw" bottom: "avg" top: "emax" eltwise_param { operation: MAX } }
layer { name: "prod" type: "Eltwise" bottom: "emax" bottom: "max" top: "prod" eltwise_param { operation: PROD } }
layer { name: "cat" type: "Concat" bottom: "prod" bottom: "emax" top: "cat" }
layer { name: "lrn_w" type: "LRN" bottom: "cat" top: "lrn_w" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "lrn_a" type: "LRN" bottom: "lrn_w" top: "lrn_a" lrn_param { local_size: 3 alpha: 0.3 beta: 0.6 k: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "lrn_a" top: "sig" }
layer { name: "gap" type: "Pooling" bottom: "sig" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "sig" top: "flat" }
layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param { num_output: 8 transpose: true } }
layer { name: "leaky" type: "ReLU" bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.2 } }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "tanh" type: "TanH" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""


@pytest.mark.caffe
def test_every_supported_layer_type_agrees_with_caffe(rng, tmp_path):
    """One tiny net using every layer type the torch backend supports (and the quirky geometries).

    The in-place chain ip1 -> leaky -> drop -> tanh ends with the TanH on purpose: see caffe_quirks 14."""
    require_caffe()
    path = tmp_path / "sink.prototxt"
    path.write_text(KITCHEN_SINK)
    net = proto.deploy_net(proto.read_prototxt(path))
    covered = {layer.type for layer in net.layer}
    assert covered == set(proto.LAYER_SHAPES), set(proto.LAYER_SHAPES) - covered
    shapes = proto.infer_shapes(net).params
    weights = {
        name: [(0.7 * rng.standard_normal(s)).astype(np.float32) for s in blob_shapes]
        for name, blob_shapes in shapes.items()
    }
    weights["bn"] = [
        rng.standard_normal(6).astype(np.float32),
        (rng.random(6) + 0.2).astype(np.float32),
        np.array([0.5], np.float32),
    ]
    caffe_net = load_backend(path, "caffe", weights=weights, batch=2)
    torch_net = load_backend(path, "torch", weights=weights, batch=2)
    x = (2.0 * rng.standard_normal((3, 3, 11, 9))).astype(np.float32)
    probs_c, logits_c = caffe_net.forward(x)
    probs_t, logits_t = torch_net.forward(x)
    np.testing.assert_allclose(probs_t, probs_c, atol=1e-6)
    assert_close_relative(logits_t, logits_c, 1e-5, "logits")
    names = [
        "conv@bn",
        "conv@relu6",
        "avg",
        "max",
        "dw",
        "sum",
        "emax",
        "prod",
        "lrn_w",
        "lrn_a",
        "gap",
        "ip1@ip1",
        "ip1",
    ]
    blobs_c, blobs_t = caffe_net.blobs(x, names), torch_net.blobs(x, names)
    for name in names:
        assert blobs_c[name].shape == blobs_t[name].shape, name
        assert_close_relative(blobs_t[name], blobs_c[name], 1e-5, name)
    for output in ("prob", "logit"):
        assert_close_relative(
            torch_net.input_gradient(x, [0, 3, 4], output),
            caffe_net.input_gradient(x, [0, 3, 4], output),
            1e-4,
            output,
        )
