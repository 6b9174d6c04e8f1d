"""Deep Taylor decomposition (Montavon et al., paper Eq. 6 and Table 2 row 2).

Relevance starts at the class's logit (the Softmax's input; R = z_c for class c, 0 elsewhere) and is
redistributed layer by layer, conserving its sum (Bach et al.'s principle, paper Eq. 5):

  * Convolution / InnerProduct above the input: the z⁺ rule
        R_i = Σ_j  z⁺_ij / Σ_i' z⁺_i'j · R_j,      z⁺_ij = (a_i w_ij)⁺.
    For ReLU outputs (a ≥ 0) this is Montavon's z⁺ rule a_i w⁺_ij; where a layer's input can be
    negative (e.g. LeNet's conv1 → pool1 → conv2 has no ReLU) the positive part of the product keeps
    it well defined and conserving (the α1β0 rule, identical to z⁺ for a ≥ 0).
  * the first Convolution / InnerProduct (on the input): the z^B rule with bounds l ≤ x ≤ h
        z^B_ij = x_i w_ij − l_i w⁺_ij − h_i w⁻_ij.
  * ReLU, Dropout: relevance passes through unchanged; max-pooling: all relevance of a pooled unit
    goes to the input that won the max (winner takes all).
Biases are not given relevance. A neuron whose denominator is 0 passes none on (it cannot happen for
ReLU outputs with non-positive biases). Other layer types (LRN, BatchNorm, Scale, Eltwise, Concat,
average pooling, ...) are an error naming the layer.

The rules run on the prototxt (backend.net_param) and weights (backend.get_weights(), Caffe layout)
in float64 with torch.nn.functional, so both backends give the same maps; the method checks that its
own forward pass reproduces the backend's logits. Maps are summed over channels; a map sums to z_c.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.methods.base import Method, MethodResult, RunContext, model_spec

SUPPORTED = ("Convolution", "InnerProduct", "ReLU", "Pooling (MAX)", "Dropout", "Softmax (last)", "Input")


@dataclass
class _Step:
    kind: str  # conv | ip | relu | maxpool | identity
    name: str
    weight: np.ndarray | None = None  # float64, Caffe layout
    bias: np.ndarray | None = None
    options: dict | None = None


def _float64_params(blobs: list[np.ndarray], bias_term: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A layer's weight and (if it has one) bias in float64."""
    bias = np.asarray(blobs[1], dtype=np.float64) if bias_term and len(blobs) > 1 else None
    return np.asarray(blobs[0], dtype=np.float64), bias


def _pair(values, h_value: int, w_value: int, default: int) -> tuple[int, int]:
    vals = list(values)
    if h_value or w_value:
        return int(h_value), int(w_value)
    if not vals:
        return default, default
    return (int(vals[0]), int(vals[-1]))


def _pool_pair(p, both: str, h: str, w: str, default: int) -> tuple[int, int]:
    if p.HasField(h) or p.HasField(w):
        return int(getattr(p, h)), int(getattr(p, w))
    return (int(getattr(p, both)),) * 2 if p.HasField(both) else (default, default)


def _build_chain(net: Backend) -> list[_Step]:
    """The net as a single chain input -> ... -> logits, or ValueError naming what is unsupported."""
    weights = net.get_weights()
    steps: list[_Step] = []
    current = net.input_blob
    for layer in net.net_param.layer:
        t, name = layer.type, layer.name
        if t == "Input":
            continue
        if t == "Softmax" and list(layer.top) == [net.prob_blob]:
            break
        if list(layer.bottom) != [current]:
            raise ValueError(
                f"deep_taylor needs a single chain of layers; layer {name!r} ({t}) reads {list(layer.bottom)}, "
                f"expected [{current!r}]"
            )
        if t == "Convolution":
            p = layer.convolution_param
            if p.axis not in (1,) or len(p.kernel_size) > 2:
                raise ValueError(f"deep_taylor supports 2-D convolutions only (layer {name!r})")
            steps.append(
                _Step(
                    "conv",
                    name,
                    *_float64_params(weights[name], p.bias_term),
                    {
                        "stride": _pair(p.stride, p.stride_h, p.stride_w, 1),
                        "padding": _pair(p.pad, p.pad_h, p.pad_w, 0),
                        "dilation": _pair(p.dilation, 0, 0, 1),
                        "groups": int(p.group),
                    },
                )
            )
        elif t == "InnerProduct":
            p = layer.inner_product_param
            if p.transpose or p.axis != 1:
                raise ValueError(
                    f"deep_taylor supports InnerProduct with axis 1, no transpose (layer {name!r})"
                )
            steps.append(_Step("ip", name, *_float64_params(weights[name], p.bias_term)))
        elif t == "ReLU":
            if layer.relu_param.negative_slope != 0:
                raise ValueError(f"deep_taylor supports plain ReLU only; layer {name!r} is leaky")
            steps.append(_Step("relu", name))
        elif t == "Pooling":
            p = layer.pooling_param
            if p.pool != p.MAX:
                raise ValueError(
                    f"deep_taylor supports max-pooling only; layer {name!r} uses {p.PoolMethod.Name(p.pool)}"
                )
            steps.append(
                _Step(
                    "maxpool",
                    name,
                    options={
                        "global": bool(p.global_pooling),
                        "kernel": _pool_pair(p, "kernel_size", "kernel_h", "kernel_w", 1),
                        "stride": _pool_pair(p, "stride", "stride_h", "stride_w", 1),
                        "padding": _pool_pair(p, "pad", "pad_h", "pad_w", 0),
                        # brocolli-caffe's ceil_mode (default true) = BVLC Caffe's rounding up
                        "ceil": not p.HasField("ceil_mode") or bool(p.ceil_mode),
                    },
                )
            )
        elif t == "Dropout":
            steps.append(_Step("identity", name))
        else:
            raise ValueError(
                f"deep_taylor cannot propagate through layer {name!r} of type {t!r}; "
                f"supported: {', '.join(SUPPORTED)}"
            )
        if len(layer.top) != 1:
            raise ValueError(f"deep_taylor needs one top per layer; layer {name!r} has {list(layer.top)}")
        current = layer.top[0]
    if current != net.logits_blob:
        raise ValueError(
            f"deep_taylor's chain ends at {current!r}, but the logits blob is {net.logits_blob!r}"
        )
    if not any(s.kind in ("conv", "ip") for s in steps):
        raise ValueError("deep_taylor needs at least one Convolution or InnerProduct layer")
    return steps


def deep_taylor_relevance(
    net: Backend,
    image: np.ndarray,
    classes: np.ndarray,
    bounds: tuple[Any, Any],
    check_logits: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Input relevance (n_classes, C, H, W) float64 and the logits z_c (n_classes,) it conserves."""
    from pda_repro.methods import _deep_taylor_rules as rules  # noqa: PLC0415 - imports torch

    steps = _build_chain(net)
    low, high = check_bounds(bounds, image)
    return rules.propagate(steps, image, classes, low, high, check_logits, net.net_param.name)


def check_bounds(bounds: tuple[Any, Any], image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) broadcast to the image, float64; ValueError unless low <= image <= high."""
    if bounds is None or len(bounds) != 2:
        raise ValueError(f"bounds must be (low, high), got {bounds!r}")
    try:
        low, high = (np.broadcast_to(np.asarray(b, dtype=np.float64), image.shape).copy() for b in bounds)
    except ValueError as exc:
        raise ValueError(
            f"bounds must be scalars or arrays of the image's shape {image.shape}: {exc}"
        ) from None
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or bool(np.any(low > high)):
        raise ValueError(f"bounds must be finite with low <= high, got {bounds!r}")
    if bool(np.any(image < low) or np.any(image > high)):
        raise ValueError(
            f"image values {float(image.min()):.4g}..{float(image.max()):.4g} lie outside the deep Taylor bounds "
            f"{float(low.min()):.4g}..{float(high.max()):.4g}; pass bounds=(low, high)"
        )
    return low, high


class DeepTaylor(Method):
    """Deep Taylor decomposition (z⁺ / z^B rules) of the class logit; see the module docstring.

    bounds: (low, high) of the preprocessed input (scalars or C×H×W arrays); default the zoo entry's
    ModelSpec.input_range when the net carries its spec."""

    name = "deep_taylor"
    uses = frozenset()

    def __init__(self, bounds: tuple[Any, Any] | None = None) -> None:
        self.bounds = bounds

    def validate(self, net: Backend, image: np.ndarray) -> None:
        if self.bounds is None:
            spec = model_spec(net)
            if spec is None or not hasattr(spec, "input_range"):
                raise ValueError("deep_taylor needs the input's value bounds: pass bounds=(low, high)")
            self.bounds = tuple(spec.input_range)
        check_bounds(self.bounds, image)
        _build_chain(net)  # unsupported layers: error before any forward

    def params(self) -> dict[str, Any]:
        low, high = (np.asarray(b, dtype=np.float64) for b in self.bounds)
        return {
            "bounds": [
                low.tolist() if low.ndim == 0 else "array",
                high.tolist() if high.ndim == 0 else "array",
            ]
        }

    def run(self, ctx: RunContext) -> MethodResult:
        t0 = time.perf_counter()
        relevance, conserved = deep_taylor_relevance(ctx.net, ctx.image, ctx.classes, self.bounds, ctx.logits)
        seconds = time.perf_counter() - t0
        return MethodResult(
            maps=relevance.sum(axis=1),
            backward_passes=1,
            timings={"sampling": 0.0, "forward": 0.0, "backward": seconds, "other": 0.0},
            params={"units": "relevance (sums to the class logit)", "logits": conserved.tolist()},
        )
