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
import torch
import torch.nn.functional as F

from pda_repro.backends.base import Backend
from pda_repro.methods.base import Method, MethodResult, RunContext, model_spec

SUPPORTED = ("Convolution", "InnerProduct", "ReLU", "Pooling (MAX)", "Dropout", "Softmax (last)", "Input")


@dataclass
class _Step:
    kind: str  # conv | ip | relu | maxpool | identity
    name: str
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    options: dict | None = None


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
            w = weights[name]
            steps.append(
                _Step(
                    "conv",
                    name,
                    torch.from_numpy(np.asarray(w[0], dtype=np.float64)),
                    torch.from_numpy(np.asarray(w[1], dtype=np.float64)) if p.bias_term and len(w) > 1 else None,
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
                raise ValueError(f"deep_taylor supports InnerProduct with axis 1, no transpose (layer {name!r})")
            w = weights[name]
            steps.append(
                _Step(
                    "ip",
                    name,
                    torch.from_numpy(np.asarray(w[0], dtype=np.float64)),
                    torch.from_numpy(np.asarray(w[1], dtype=np.float64)) if p.bias_term and len(w) > 1 else None,
                )
            )
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
        raise ValueError(f"deep_taylor's chain ends at {current!r}, but the logits blob is {net.logits_blob!r}")
    if not any(s.kind in ("conv", "ip") for s in steps):
        raise ValueError("deep_taylor needs at least one Convolution or InnerProduct layer")
    return steps


def _linear(step: _Step, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    if step.kind == "conv":
        return F.conv2d(a, weight, bias, **step.options)
    return F.linear(a.flatten(1), weight, bias)


def _maxpool(step: _Step, a: torch.Tensor) -> torch.Tensor:
    o = step.options
    kernel = tuple(a.shape[2:]) if o["global"] else o["kernel"]
    stride = (1, 1) if o["global"] else o["stride"]
    padding = (0, 0) if o["global"] else o["padding"]
    return F.max_pool2d(a, kernel, stride, padding, ceil_mode=o["ceil"])


def _forward(steps: list[_Step], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    inputs = []
    a = x
    for s in steps:
        inputs.append(a)
        if s.kind in ("conv", "ip"):
            a = _linear(s, a, s.weight, s.bias)
        elif s.kind == "relu":
            a = torch.relu(a)
        elif s.kind == "maxpool":
            a = _maxpool(s, a)
    return inputs, a


def _safe_divide(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.where(z != 0, r / torch.where(z != 0, z, torch.ones_like(z)), torch.zeros_like(z))


def _zplus(step: _Step, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_i = Σ_j (a_i w_ij)⁺ / Σ_i' (a_i' w_i'j)⁺ · R_j (= a_i w⁺_ij / Σ a w⁺ for a ≥ 0)."""
    a_pos = a.clamp(min=0).detach().requires_grad_(True)
    a_neg = a.clamp(max=0).detach().requires_grad_(True)
    z = _linear(step, a_pos, step.weight.clamp(min=0)) + _linear(step, a_neg, step.weight.clamp(max=0))
    s = _safe_divide(r.reshape(z.shape), z).detach()
    g_pos, g_neg = torch.autograd.grad((z * s).sum(), (a_pos, a_neg))
    return a_pos.detach() * g_pos + a_neg.detach() * g_neg


def _zbox(step: _Step, x: torch.Tensor, r: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """z^B rule: R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / Σ_i'(...) · R_j."""
    x = x.detach().requires_grad_(True)
    low = low.expand_as(x).clone().requires_grad_(True)
    high = high.expand_as(x).clone().requires_grad_(True)
    w = step.weight
    z = _linear(step, x, w) - _linear(step, low, w.clamp(min=0)) - _linear(step, high, w.clamp(max=0))
    s = _safe_divide(r.reshape(z.shape), z).detach()
    gx, gl, gh = torch.autograd.grad((z * s).sum(), (x, low, high))
    return x.detach() * gx + low.detach() * gl + high.detach() * gh


def _winner_takes_all(step: _Step, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    a = a.detach().requires_grad_(True)
    out = _maxpool(step, a)
    (grad,) = torch.autograd.grad((out * r.reshape(out.shape)).sum(), (a,))
    return grad  # the pooled relevance summed onto each window's argmax


def deep_taylor_relevance(
    net: Backend,
    image: np.ndarray,
    classes: np.ndarray,
    bounds: tuple[Any, Any],
    check_logits: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Input relevance (n_classes, C, H, W) float64 and the logits z_c (n_classes,) it conserves."""
    steps = _build_chain(net)
    low = torch.as_tensor(np.broadcast_to(np.asarray(bounds[0], dtype=np.float64), image.shape).copy())
    high = torch.as_tensor(np.broadcast_to(np.asarray(bounds[1], dtype=np.float64), image.shape).copy())
    x = torch.from_numpy(np.asarray(image, dtype=np.float64))[None]
    if bool((x[0] < low).any() or (x[0] > high).any()):
        raise ValueError(
            f"image values {float(x.min()):.4g}..{float(x.max()):.4g} lie outside the deep Taylor bounds "
            f"{float(low.min()):.4g}..{float(high.max()):.4g}; pass bounds=(low, high)"
        )
    with torch.no_grad():
        inputs, logits = _forward(steps, x)
    logits = logits[0]
    if check_logits is not None:
        ref = torch.as_tensor(np.asarray(check_logits, dtype=np.float64))
        tol = 1e-3 * (1.0 + float(ref.abs().max()))
        diff = float((logits - ref).abs().max())
        if diff > tol:
            raise RuntimeError(
                f"deep_taylor's own forward pass of {net.net_param.name!r} differs from the backend's logits by "
                f"{diff:.3g} (> {tol:.3g}); the net uses semantics deep_taylor does not model"
            )
    first_linear = next(i for i, s in enumerate(steps) if s.kind in ("conv", "ip"))
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    relevance = torch.zeros((cls.numel(), logits.numel()), dtype=torch.float64)
    relevance[torch.arange(cls.numel()), cls] = logits[cls]
    r = relevance
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        a = inputs[i].expand(cls.numel(), *inputs[i].shape[1:])
        if s.kind in ("conv", "ip"):
            r = _zbox(s, a, r, low, high) if i == first_linear else _zplus(s, a, r)
        elif s.kind == "maxpool":
            r = _winner_takes_all(s, a, r)
        else:  # relu, dropout: pass through
            r = r.reshape(a.shape)
    return r.reshape(cls.numel(), *image.shape).numpy(), logits[cls].numpy()


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
        if len(self.bounds) != 2:
            raise ValueError(f"bounds must be (low, high), got {self.bounds!r}")
        low, high = (np.asarray(b, dtype=np.float64) for b in self.bounds)
        if not (np.isfinite(low).all() and np.isfinite(high).all()) or bool(np.any(low > high)):
            raise ValueError(f"bounds must be finite with low <= high, got {self.bounds!r}")
        _build_chain(net)  # unsupported layers: error before any forward

    def params(self) -> dict[str, Any]:
        low, high = (np.asarray(b, dtype=np.float64) for b in self.bounds)
        return {"bounds": [low.tolist() if low.ndim == 0 else "array", high.tolist() if high.ndim == 0 else "array"]}

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
