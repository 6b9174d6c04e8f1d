"""Seeded random weights from a prototxt's fillers (Caffe's filler.hpp, drawn with numpy).

Both backends take these arrays, so the same seed gives the very same random net on caffe and torch.

Fallbacks where the prototxt gives no filler:
  - Convolution / InnerProduct weights without `weight_filler`: "xavier" (uniform, variance 1/fan_in).
    Caffe itself would fill zeros (FillerParameter's default type is "constant" 0), which makes every
    output equal -- useless for anything we test or explain.
  - biases without `bias_filler`: constant 0 (Caffe's default).
  - Scale: scale `filler` default constant 1 (Caffe's default), bias constant 0.
  - BatchNorm: mean 0, variance 1, moving-average factor 1 -- the identity normalisation. (Caffe
    fills all three with 0, which with factor 0 divides by sqrt(eps).)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from pda_repro import proto
from pda_repro.backends.base import BackendError
from pda_repro.backends.caffemodel import match_weights


def fill(filler: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One blob drawn from a caffe_pb2.FillerParameter, float32, Caffe's semantics:
    constant(value), uniform(min, max), gaussian(mean, std; `sparse`), xavier and msra (variance_norm
    FAN_IN / FAN_OUT / AVERAGE with fan_in = count/shape[0], fan_out = count/shape[1])."""
    count = math.prod(shape)
    kind = filler.type
    if kind == "constant":
        return np.full(shape, filler.value, dtype=np.float32)
    if kind == "uniform":
        if filler.max < filler.min:
            raise BackendError(f"uniform filler max {filler.max} < min {filler.min}")
        return (filler.min + (filler.max - filler.min) * rng.random(shape, dtype=np.float32)).astype(
            np.float32
        )
    if kind == "gaussian":
        values = (filler.mean + filler.std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        if filler.sparse >= 0:
            # Caffe: each weight kept with probability sparse / num_outputs, num_outputs = shape[0].
            keep = rng.random(shape) < filler.sparse / shape[0]
            values *= keep
        return values
    if kind in ("xavier", "msra"):
        fan_in = count / shape[0] if shape else 1.0
        fan_out = count / shape[1] if len(shape) > 1 else float(count)
        norm = filler.variance_norm
        n = {0: fan_in, 1: fan_out, 2: (fan_in + fan_out) / 2.0}[norm]
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            return (scale * (2.0 * rng.random(shape, dtype=np.float32) - 1.0)).astype(np.float32)
        return (math.sqrt(2.0 / n) * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    raise BackendError(f"filler type {kind!r} is not supported (constant, uniform, gaussian, xavier, msra)")


def layer_fillers(layer: Any, count: int) -> list[Any]:
    """The FillerParameter for each of a layer's `count` learnable blobs (with our fallbacks)."""
    pb = proto.caffe_pb2()
    constant = pb.FillerParameter(type="constant", value=0.0)
    if layer.type in ("Convolution", "InnerProduct"):
        p = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
        weight = p.weight_filler if p.HasField("weight_filler") else pb.FillerParameter(type="xavier")
        bias = p.bias_filler if p.HasField("bias_filler") else constant
        return [weight, bias][:count]
    if layer.type == "Scale":
        p = layer.scale_param
        scale = p.filler if p.HasField("filler") else pb.FillerParameter(type="constant", value=1.0)
        bias = p.bias_filler if p.HasField("bias_filler") else constant
        return ([scale, bias] if len(layer.bottom) == 1 else [bias])[:count]
    if layer.type == "BatchNorm":
        one = pb.FillerParameter(type="constant", value=1.0)
        return [constant, one, one]
    raise BackendError(f"layer {layer.name!r} ({layer.type}) has learnable blobs but no known fillers")


def random_weights(net: Any, rng: np.random.Generator | int) -> dict[str, list[np.ndarray]]:
    """Every learnable blob of a deploy net, drawn from its fillers, in layer order (Caffe layout)."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    net = proto.deploy_net(net)
    shapes = proto.infer_shapes(net, batch=1)
    weights: dict[str, list[np.ndarray]] = {}
    for layer in net.layer:
        blob_shapes = shapes.params.get(layer.name)
        if not blob_shapes:
            continue
        fillers = layer_fillers(layer, len(blob_shapes))
        weights[layer.name] = [fill(f, s, rng) for f, s in zip(fillers, blob_shapes, strict=True)]
    return weights


def missing_layers(net: Any, weights: dict[str, list[np.ndarray]]) -> list[str]:
    """The learnable layers of `net` that `weights` lacks, in layer order (the layers it has are checked
    first: blob counts, shapes, finite values; a mismatch is a CaffemodelError naming the layer)."""
    expected = proto.infer_shapes(proto.deploy_net(net), batch=1).params
    match_weights(weights, expected)
    return [name for name in expected if name not in weights]


def initial_weights(
    net: Any, weights: dict[str, list[np.ndarray]] | None, seed: int
) -> dict[str, list[np.ndarray]]:
    """The weights a backend starts from: `weights` where given; every learnable layer that `weights`
    lacks gets seeded random filler values (with a warning naming those layers, unless weights is None)."""
    if weights is None:
        return random_weights(net, np.random.default_rng(seed))
    expected = proto.infer_shapes(proto.deploy_net(net), batch=1).params
    weights = match_weights(weights, expected)  # shape checks; at least one layer must match
    missing = [name for name in expected if name not in weights]
    if not missing:
        return weights
    if len(missing) < len(expected):
        warnings.warn(
            f"no weights given for layers {', '.join(missing)}; they get seeded random filler values (seed {seed})",
            stacklevel=3,
        )
    merged = random_weights(net, np.random.default_rng(seed))
    merged.update(weights)
    return merged
