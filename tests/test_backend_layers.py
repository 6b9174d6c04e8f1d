"""Torch backend layers against float64 transcriptions of Caffe's C++ (tests/reference/caffe_ref.py)
and against closed-form answers of hand-set nets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pda_repro import caffe_quirks, proto
from pda_repro.backends.base import BackendError
from pda_repro.backends.torch_backend import CaffeNet, TorchBackend
from tests.reference import caffe_ref


def _net(body: str, shape: tuple[int, ...], extra_inputs: str = "") -> CaffeNet:
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n{extra_inputs}{body}'
    return CaffeNet(proto.deploy_net(proto.parse_prototxt(text))).double()


def f32(value: float) -> float:
    """A prototxt float field holds float32: the reference must use the same number."""
    return float(np.float32(value))


def _run(net: CaffeNet, x: np.ndarray, blob: str) -> np.ndarray:
    return net.run(torch.from_numpy(x), [blob])[blob].detach().numpy()


def _set(net: CaffeNet, layer: str, *arrays: np.ndarray) -> None:
    with torch.no_grad():
        for param, array in zip(net.by_name[layer].blobs, arrays, strict=True):
            param.copy_(torch.from_numpy(np.asarray(array, dtype=np.float64)))


# -- pooling ----------------------------------------------------------------------------------------
def test_pooled_size_matches_caffe_everywhere():
    for size, kernel, stride, ceil_mode in itertools.product(
        range(1, 13), range(1, 6), range(1, 5), (True, False)
    ):
        for pad in range(kernel):
            if size + 2 * pad < kernel:
                continue
            expected = caffe_ref.pooled_size(size, kernel, stride, pad, ceil_mode)
            assert caffe_quirks.pooled_size(size, kernel, stride, pad, ceil_mode) == expected, (
                size,
                kernel,
                stride,
                pad,
            )


POOL_CASES = [
    # (H, W, kernel, stride, pad): ceil overhang, the drop-the-last-window rule, k < stride, asymmetric
    (6, 6, (3, 3), (2, 2), (1, 1)),
    (5, 5, (2, 2), (2, 2), (1, 1)),  # ceil gives 4 windows, the 4th starts in the padding: dropped
    (7, 9, (3, 2), (2, 3), (0, 1)),
    (13, 13, (3, 3), (2, 2), (0, 0)),  # AlexNet pool5: ceil((13-3)/2)+1 = 6
    (5, 5, (1, 1), (3, 3), (0, 0)),  # Caffe keeps a window that starts past the input (no padding)
    (7, 7, (7, 7), (1, 1), (0, 0)),  # GoogLeNet pool5/7x7_s1
    (8, 5, (3, 3), (1, 1), (1, 1)),  # inception pool: same size
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_caffe_loops(rng, method, case):
    h, w, kernel, stride, pad = case
    x = rng.standard_normal((2, 3, h, w))
    body = (
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ pool: {method} '
        f"kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} "
        f"pad_h: {pad[0]} pad_w: {pad[1]} }} }}"
    )
    got = _run(_net(body, x.shape), x, "pool")
    np.testing.assert_allclose(got, caffe_ref.pool(x, kernel, stride, pad, method), rtol=1e-12, atol=1e-12)


def test_max_pool_ignores_padding_even_for_negative_inputs(rng):
    x = -1.0 - rng.random((1, 1, 4, 4))  # all negative: zero padding would win
    out = (caffe_quirks.pooled_size(4, 3, 2, 1),) * 2  # 3 windows per axis
    got = caffe_quirks.max_pool(torch.from_numpy(x), (3, 3), (2, 2), (1, 1), out).numpy()
    assert got.shape == (1, 1, 3, 3)
    assert (got < -1.0).all()
    np.testing.assert_allclose(got, caffe_ref.pool(x, (3, 3), (2, 2), (1, 1), "MAX"))


def test_global_average_pooling(rng):
    x = rng.standard_normal((2, 4, 5, 3))
    body = 'layer { name: "gap" type: "Pooling" bottom: "data" top: "gap" pooling_param { pool: AVE global_pooling: true } }'
    got = _run(_net(body, x.shape), x, "gap")
    np.testing.assert_allclose(got, x.mean(axis=(2, 3), keepdims=True), rtol=1e-12)


# -- LRN ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k"), [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.6, 2.0), (1, 2.0, 1.0, 1.0)]
)
def test_lrn_across_channels(rng, size, alpha, beta, k):
    x = 30.0 * rng.standard_normal((2, 7, 3, 4))
    body = (
        f'layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm" '
        f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }} }}"
    )
    got = _run(_net(body, x.shape), x, "norm")
    np.testing.assert_allclose(
        got, caffe_ref.lrn_across_channels(x, size, f32(alpha), f32(beta), f32(k)), rtol=1e-12
    )


def test_lrn_alpha_is_divided_by_local_size():
    """One channel carrying 1, local_size 5, alpha 5, beta 1: scale = 1 + 5/5 * 1 = 2, so y = 0.5."""
    x = np.zeros((1, 5, 1, 1))
    x[0, 2] = 1.0
    y = caffe_quirks.lrn_across_channels(torch.from_numpy(x), 5, 5.0, 1.0, 1.0).numpy()
    assert y[0, 2, 0, 0] == pytest.approx(0.5)


def test_lrn_within_channel(rng):
    x = 3.0 * rng.standard_normal((2, 2, 5, 6))
    body = (
        'layer { name: "norm" type: "LRN" bottom: "data" top: "norm" '
        "lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL } }"
    )
    got = _run(_net(body, x.shape), x, "norm")
    np.testing.assert_allclose(got, caffe_ref.lrn_within_channel(x, 3, f32(0.3), f32(0.75)), rtol=1e-12)


# -- convolution and inner product --------------------------------------------------------------------
def test_convolution_grouped_dilated_strided(rng):
    x = rng.standard_normal((2, 4, 9, 8))
    body = (
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { '
        "num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 2 dilation: 2 } }"
    )
    net = _net(body, x.shape)
    weight, bias = rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(6)
    _set(net, "conv", weight, bias)
    expected = caffe_ref.convolution(x, weight, bias, (2, 1), (1, 2), (2, 2), 2)
    np.testing.assert_allclose(_run(net, x, "conv"), expected, rtol=1e-10, atol=1e-12)


def test_depthwise_convolution(rng):
    x = rng.standard_normal((1, 3, 5, 5))
    body = (
        'layer { name: "dw" type: "Convolution" bottom: "data" top: "dw" convolution_param { '
        "num_output: 3 group: 3 kernel_size: 3 pad: 1 bias_term: false } }"
    )
    net = _net(body, x.shape)
    weight = rng.standard_normal((3, 1, 3, 3))
    _set(net, "dw", weight)
    expected = caffe_ref.convolution(x, weight, None, (1, 1), (1, 1), (1, 1), 3)
    np.testing.assert_allclose(_run(net, x, "dw"), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("axis", "transpose"), [(1, False), (2, True), (-1, False)])
def test_inner_product_axis_and_transpose(rng, axis, transpose):
    x = rng.standard_normal((2, 3, 4, 5))
    body = (
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        f"inner_product_param {{ num_output: 7 axis: {axis} transpose: {str(transpose).lower()} }} }}"
    )
    net = _net(body, x.shape)
    a = axis % 4
    k = int(np.prod(x.shape[a:]))
    weight, bias = rng.standard_normal((k, 7) if transpose else (7, k)), rng.standard_normal(7)
    _set(net, "ip", weight, bias)
    flat = x.reshape(*x.shape[:a], k)  # C order: C×H×W flattening (caffe_quirks 6)
    expected = flat @ (weight if transpose else weight.T) + bias
    np.testing.assert_allclose(_run(net, x, "ip"), expected, rtol=1e-12)


# -- element-wise and normalisation layers --------------------------------------------------------------
def test_eltwise_max_ties_and_gradient_routing():
    a = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 1.0, 4.0, 5.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.0, 2.0, 4.0, 6.0], dtype=torch.float64, requires_grad=True)
    top = caffe_quirks.eltwise_max([a, b, c])
    ref_top, mask = caffe_ref.eltwise_max([a.detach().numpy(), b.detach().numpy(), c.detach().numpy()])
    np.testing.assert_array_equal(top.detach().numpy(), ref_top)
    top.sum().backward()
    for index, tensor in enumerate((a, b, c)):  # the gradient goes only to Caffe's winning bottom
        np.testing.assert_array_equal(tensor.grad.numpy(), (mask == index).astype(float))
    assert mask.tolist() == [1, 0, 1, 2]  # tie of a and b -> b; tie of top(a) and c -> a kept


def test_eltwise_sum_with_coefficients_and_product(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    extra = 'layer { name: "s" type: "Split" bottom: "data" top: "d1" top: "d2" top: "d3" }\n'
    body = (
        'layer { name: "sq" type: "Eltwise" bottom: "d1" bottom: "d2" top: "sq" eltwise_param { operation: PROD } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "sq" bottom: "d3" top: "sum" '
        "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }"
    )
    got = _run(_net(body, x.shape, extra), x, "sum")
    np.testing.assert_allclose(got, 0.5 * x * x - 2.0 * x, rtol=1e-12)


@pytest.mark.parametrize("factor", [2.0, 0.0])
def test_batch_norm_global_stats_with_moving_average_factor(rng, factor):
    x = rng.standard_normal((2, 3, 2, 2))
    body = 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0.001 } }'
    net = _net(body, x.shape)
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    _set(net, "bn", mean, var, [factor])
    expected = caffe_ref.batch_norm_global(x, mean, var, factor, f32(0.001))
    np.testing.assert_allclose(_run(net, x, "bn"), expected, rtol=1e-12)


def test_batch_norm_batch_statistics(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    body = 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }'
    got = _run(_net(body, x.shape), x, "bn")
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + f32(1e-5)), rtol=1e-12)


def test_scale_with_bias_and_second_bottom(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    body = 'layer { name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param { bias_term: true } }'
    net = _net(body, x.shape)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    _set(net, "sc", gamma, beta)
    np.testing.assert_allclose(_run(net, x, "sc"), x * gamma[:, None, None] + beta[:, None, None], rtol=1e-12)
    extra = (
        'layer { name: "s" type: "Split" bottom: "data" top: "d1" top: "d2" }\n'
        'layer { name: "gap" type: "Pooling" bottom: "d2" top: "gap" pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "flat" type: "Flatten" bottom: "gap" top: "g" }\n'
    )
    body = 'layer { name: "sc" type: "Scale" bottom: "d1" bottom: "g" top: "sc" scale_param { axis: 0 } }'
    got = _run(_net(body, x.shape, extra), x, "sc")
    np.testing.assert_allclose(got, x * x.mean(axis=(2, 3), keepdims=True), rtol=1e-12)


def test_relu_variants_values_and_gradients():
    x = torch.tensor([-2.0, 0.0, 3.0, 6.0, 7.0], dtype=torch.float64, requires_grad=True)
    body6 = 'layer { name: "r" type: "ReLU6" bottom: "data" top: "r" relu6_param { negative_slope: 0.1 threshold: 6 } }'
    net = _net(body6, (5,))
    y = net.run(x, ["r"])["r"]
    np.testing.assert_allclose(y.detach().numpy(), [-0.2, 0.0, 3.0, 6.0, 6.0])
    (grad,) = torch.autograd.grad(y.sum(), x)
    # Caffe: ((x > 0) + slope * (x <= 0)) * (x < threshold)
    np.testing.assert_allclose(grad.numpy(), [0.1, 0.1, 1.0, 0.0, 0.0])
    # no slope (EfficientNet-Lite0's ReLU6): the gradient is 0 at x = 0 as well
    plain6 = _net(
        'layer { name: "r" type: "ReLU6" bottom: "data" top: "r" relu6_param { threshold: 6 } }', (5,)
    )
    y = plain6.run(x, ["r"])["r"]
    np.testing.assert_array_equal(y.detach().numpy(), [0.0, 0.0, 3.0, 6.0, 6.0])
    (grad,) = torch.autograd.grad(y.sum(), x)
    np.testing.assert_array_equal(grad.numpy(), [0.0, 0.0, 1.0, 0.0, 0.0])
    r = torch.randn(4096, dtype=torch.float32, generator=torch.Generator().manual_seed(0)) * 8
    ref = torch.where(r < 6.0, torch.relu(r), torch.full_like(r, 6.0))  # Caffe's formula, bitwise
    assert torch.equal(plain6.by_name["r"].forward(r)[0], ref)
    leaky = _net(
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { negative_slope: 0.25 } }', (5,)
    )
    (grad,) = torch.autograd.grad(leaky.run(x, ["r"])["r"].sum(), x)
    np.testing.assert_allclose(grad.numpy(), [0.25, 0.25, 1.0, 1.0, 1.0])


def test_sigmoid_tanh_softmax_concat_flatten(rng):
    x = rng.standard_normal((2, 3, 2, 2))
    extra = 'layer { name: "s" type: "Split" bottom: "data" top: "a" top: "b" }\n'
    body = (
        'layer { name: "sig" type: "Sigmoid" bottom: "a" top: "sig" }\n'
        'layer { name: "tanh" type: "TanH" bottom: "b" top: "tanh" }\n'
        'layer { name: "cat" type: "Concat" bottom: "sig" bottom: "tanh" top: "cat" concat_param { axis: 2 } }\n'
        'layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }\n'
        'layer { name: "prob" type: "Softmax" bottom: "flat" top: "prob" }'
    )
    net = _net(body, x.shape, extra)
    out = net.run(torch.from_numpy(x), ["cat", "flat", "prob"])
    cat = np.concatenate([1 / (1 + np.exp(-x)), np.tanh(x)], axis=2)
    np.testing.assert_allclose(out["cat"].numpy(), cat, rtol=1e-12)
    np.testing.assert_allclose(out["flat"].numpy(), cat.reshape(2, -1), rtol=1e-12)
    np.testing.assert_allclose(out["prob"].numpy(), caffe_ref.softmax(cat.reshape(2, -1)), rtol=1e-12)


# -- whole backend on hand-set nets ---------------------------------------------------------------------
IDENTITY_NET = """
name: "identity"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 1 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _identity_backend(batch: int = 160) -> TorchBackend:
    weights = {"ip": [np.eye(3, dtype=np.float32), np.zeros(3, dtype=np.float32)]}
    return TorchBackend(proto.parse_prototxt(IDENTITY_NET), batch=batch, weights=weights)


def test_closed_form_probabilities_and_gradients(rng):
    """ip = identity, relu, softmax: p = softmax(relu(x)); dp_c/dx_j = p_c (δ_cj - p_j) where x_j > 0."""
    backend = _identity_backend()
    x = rng.random((5, 3, 1, 1)).astype(np.float32) + 0.1  # positive: the ReLU passes everything
    probs, logits = backend.forward(x)
    z = x.reshape(5, 3).astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, p, rtol=1e-6)
    np.testing.assert_allclose(logits, z, rtol=1e-7)
    classes = np.array([0, 1, 2, 1, 0])
    grad = backend.input_gradient(x, classes, output="prob").reshape(5, 3)
    expected = np.stack([p[n, c] * (np.eye(3)[c] - p[n]) for n, c in enumerate(classes)])
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
    grad_logit = backend.input_gradient(x, classes, output="logit").reshape(5, 3)
    np.testing.assert_array_equal(grad_logit, np.eye(3)[classes])


def test_blob_names_before_and_after_in_place_layers(rng):
    backend = _identity_backend()
    x = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    out = backend.blobs(x, ["ip", "ip@ip", "data"])
    np.testing.assert_allclose(out["ip@ip"], x.reshape(4, 3), rtol=1e-7)  # before the in-place ReLU
    np.testing.assert_allclose(out["ip"], np.maximum(x.reshape(4, 3), 0), rtol=1e-7)
    np.testing.assert_array_equal(out["data"], x)
    act, grad = backend.blob_gradient(x, "ip@ip", 1, output="logit")
    np.testing.assert_array_equal(grad, np.tile([0.0, 1.0, 0.0], (4, 1)) * (x.reshape(4, 3) > 0))
    with pytest.raises(BackendError, match="unknown blob 'fc9'"):
        backend.blobs(x, ["fc9"])
    with pytest.raises(BackendError, match="does not write blob"):
        backend.blobs(x, ["data@ip"])


def test_batches_are_split_and_results_do_not_depend_on_the_split(rng, monkeypatch):
    whole = _identity_backend(batch=160)
    split = _identity_backend(batch=4)
    x = rng.standard_normal((10, 3, 1, 1)).astype(np.float32)
    sizes = []
    original = split.model.run
    monkeypatch.setattr(
        split.model, "run", lambda chunk, names: sizes.append(chunk.shape[0]) or original(chunk, names)
    )
    np.testing.assert_array_equal(split.forward(x)[0], whole.forward(x)[0])
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(split.input_gradient(x, 2), whole.input_gradient(x, 2))


def test_unknown_layer_type_names_layer_and_type():
    text = IDENTITY_NET.replace('type: "ReLU"', 'type: "Swish"')
    with pytest.raises(proto.ProtoError, match="layer 'relu' has unsupported type 'Swish'"):
        TorchBackend(proto.parse_prototxt(text))


def test_caffe_checks_are_reported_not_crashed():
    bad_lrn = IDENTITY_NET.replace(
        'layer { name: "relu"',
        'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 4 } }\nlayer { name: "relu"',
    )
    with pytest.raises(proto.ProtoError, match="layer 'n': LRN local_size must be odd"):
        TorchBackend(proto.parse_prototxt(bad_lrn))
    missing = IDENTITY_NET.replace('bottom: "data" top: "ip"', 'bottom: "nothing" top: "ip"')
    with pytest.raises(proto.ProtoError, match="layer 'ip' .* reads blob 'nothing'"):
        TorchBackend(proto.parse_prototxt(missing))
