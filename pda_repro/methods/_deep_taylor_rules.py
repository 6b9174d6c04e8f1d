"""The relevance rules of deep Taylor decomposition in torch (float64, CPU); see deep_taylor.py.

Kept apart so that importing pda_repro.methods does not import torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _linear(step, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    if step.kind == "conv":
        return F.conv2d(a, weight, bias, **step.options)
    return F.linear(a.flatten(1), weight, bias)


def _maxpool(step, a: torch.Tensor) -> torch.Tensor:
    o = step.options
    kernel = tuple(a.shape[2:]) if o["global"] else o["kernel"]
    stride = (1, 1) if o["global"] else o["stride"]
    padding = (0, 0) if o["global"] else o["padding"]
    return F.max_pool2d(a, kernel, stride, padding, ceil_mode=o["ceil"])


def _forward(steps, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    inputs = []
    a = x
    for s in steps:
        inputs.append(a)
        if s.kind in ("conv", "ip"):
            a = _linear(s, a, _t(s.weight), _t(s.bias))
        elif s.kind == "relu":
            a = torch.relu(a)
        elif s.kind == "maxpool":
            a = _maxpool(s, a)
    return inputs, a


def _safe_divide(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.where(z != 0, r / torch.where(z != 0, z, torch.ones_like(z)), torch.zeros_like(z))


def _zplus(step, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """R_i = Σ_j (a_i w_ij)⁺ / Σ_i' (a_i' w_i'j)⁺ · R_j (= a_i w⁺_ij / Σ a w⁺ for a ≥ 0)."""
    a_pos = a.clamp(min=0).detach().requires_grad_(True)
    a_neg = a.clamp(max=0).detach().requires_grad_(True)
    w = _t(step.weight)
    z = _linear(step, a_pos, w.clamp(min=0)) + _linear(step, a_neg, w.clamp(max=0))
    s = _safe_divide(r.reshape(z.shape), z).detach()
    g_pos, g_neg = torch.autograd.grad((z * s).sum(), (a_pos, a_neg))
    return a_pos.detach() * g_pos + a_neg.detach() * g_neg


def _zbox(step, x: torch.Tensor, r: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """z^B rule: R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / Σ_i'(...) · R_j."""
    x = x.detach().requires_grad_(True)
    low = low.expand_as(x).clone().requires_grad_(True)
    high = high.expand_as(x).clone().requires_grad_(True)
    w = _t(step.weight)
    z = _linear(step, x, w) - _linear(step, low, w.clamp(min=0)) - _linear(step, high, w.clamp(max=0))
    s = _safe_divide(r.reshape(z.shape), z).detach()
    gx, gl, gh = torch.autograd.grad((z * s).sum(), (x, low, high))
    return x.detach() * gx + low.detach() * gl + high.detach() * gh


def _winner_takes_all(step, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    a = a.detach().requires_grad_(True)
    out = _maxpool(step, a)
    (grad,) = torch.autograd.grad((out * r.reshape(out.shape)).sum(), (a,))
    return grad  # the pooled relevance summed onto each window's argmax


def propagate(steps, image, classes, low, high, check_logits, net_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Forward the chain, check its logits against the backend's, propagate the class logits down."""
    low, high = _t(low), _t(high)
    x = _t(image)[None]
    with torch.no_grad():
        inputs, logits = _forward(steps, x)
    logits = logits[0]
    if check_logits is not None:
        ref = _t(np.asarray(check_logits))
        tol = 1e-3 * (1.0 + float(ref.abs().max()))
        diff = float((logits - ref).abs().max())
        if diff > tol:
            raise RuntimeError(
                f"deep_taylor's own forward pass of {net_name!r} differs from the backend's logits by "
                f"{diff:.3g} (> {tol:.3g}); the net uses semantics deep_taylor does not model"
            )
    first_linear = next(i for i, s in enumerate(steps) if s.kind in ("conv", "ip"))
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    r = torch.zeros((cls.numel(), logits.numel()), dtype=torch.float64)
    r[torch.arange(cls.numel()), cls] = logits[cls]  # relevance at the top: the class logit
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
