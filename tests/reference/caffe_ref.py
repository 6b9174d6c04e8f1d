"""Slow float64 references of Caffe layers, transcribed loop by loop from BVLC Caffe's C++ (CPU paths).

Each function mirrors the named Caffe source so a reader can check it line by line; the torch backend
and pda_repro.caffe_quirks are tested against these.
"""

from __future__ import annotations

import math

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True) -> int:
    """PoolingLayer::Reshape."""
    if ceil_mode:
        pooled = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    else:
        pooled = int(math.floor((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def pool(x: np.ndarray, kernel, stride, pad, method: str, ceil_mode: bool = True) -> np.ndarray:
    """PoolingLayer::Forward_cpu, MAX and AVE, for N×C×H×W x; kernel/stride/pad are (h, w)."""
    n, c, height, width = x.shape
    ph_n = pooled_size(height, kernel[0], stride[0], pad[0], ceil_mode)
    pw_n = pooled_size(width, kernel[1], stride[1], pad[1], ceil_mode)
    top = np.zeros((n, c, ph_n, pw_n))
    for i in range(n):
        for ch in range(c):
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hstart = ph * stride[0] - pad[0]
                    wstart = pw * stride[1] - pad[1]
                    if method == "MAX":
                        hend = min(hstart + kernel[0], height)
                        wend = min(wstart + kernel[1], width)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        best = -FLT_MAX
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                if x[i, ch, h, w] > best:
                                    best = x[i, ch, h, w]
                        top[i, ch, ph, pw] = best
                    else:
                        hend = min(hstart + kernel[0], height + pad[0])
                        wend = min(wstart + kernel[1], width + pad[1])
                        pool_size = (hend - hstart) * (wend - wstart)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        hend, wend = min(hend, height), min(wend, width)
                        total = 0.0
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                total += x[i, ch, h, w]
                        top[i, ch, ph, pw] = total / pool_size
    return top


def lrn_across_channels(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """LRNLayer::CrossChannelForward_cpu: scale = k + alpha/size * sum of squares in the window."""
    n, c = x.shape[:2]
    pre_pad = (size - 1) // 2
    top = np.zeros_like(x, dtype=np.float64)
    for i in range(n):
        for ch in range(c):
            scale = k
            for j in range(ch - pre_pad, ch - pre_pad + size):
                if 0 <= j < c:
                    scale = scale + alpha / size * x[i, j] ** 2
            top[i, ch] = x[i, ch] * scale ** (-beta)
    return top


def lrn_within_channel(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    """LRNLayer::WithinChannelForward: x * (1 + alpha * AVE-pool(x^2, size, stride 1, pad (size-1)/2))^-beta."""
    pad = (size - 1) // 2
    mean_square = pool(x.astype(np.float64) ** 2, (size, size), (1, 1), (pad, pad), "AVE")
    return x * (1.0 + alpha * mean_square) ** (-beta)


def convolution(x: np.ndarray, weight: np.ndarray, bias, stride, pad, dilation, group: int) -> np.ndarray:
    """Direct convolution with Caffe's grouping (consecutive channel blocks), float64."""
    n, c, height, width = x.shape
    out_c, in_per_group, kh, kw = weight.shape
    oh = (height + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (width + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    padded = np.zeros((n, c, height + 2 * pad[0], width + 2 * pad[1]))
    padded[:, :, pad[0] : pad[0] + height, pad[1] : pad[1] + width] = x
    out = np.zeros((n, out_c, oh, ow))
    out_per_group = out_c // group
    for o in range(out_c):
        g = o // out_per_group
        for y in range(oh):
            for z in range(ow):
                total = 0.0 if bias is None else float(bias[o])
                for ci in range(in_per_group):
                    for a in range(kh):
                        for b in range(kw):
                            total = (
                                total
                                + weight[o, ci, a, b]
                                * padded[
                                    :,
                                    g * in_per_group + ci,
                                    y * stride[0] + a * dilation[0],
                                    z * stride[1] + b * dilation[1],
                                ]
                            )
                out[:, o, y, z] = total
    return out


def eltwise_max(bottoms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """EltwiseLayer::Forward_cpu MAX: (top, mask of the winning bottom index)."""
    a, b = bottoms[0].ravel(), bottoms[1].ravel()
    top = np.empty(a.size)
    mask = np.empty(a.size, dtype=int)
    for idx in range(a.size):
        if a[idx] > b[idx]:
            top[idx], mask[idx] = a[idx], 0
        else:
            top[idx], mask[idx] = b[idx], 1
    for blob_idx in range(2, len(bottoms)):
        c = bottoms[blob_idx].ravel()
        for idx in range(a.size):
            if c[idx] > top[idx]:
                top[idx], mask[idx] = c[idx], blob_idx
    return top.reshape(bottoms[0].shape), mask.reshape(bottoms[0].shape)


def batch_norm_global(x: np.ndarray, mean_blob, var_blob, factor: float, eps: float) -> np.ndarray:
    """BatchNormLayer::Forward_cpu with use_global_stats."""
    scale = 0.0 if factor == 0 else 1.0 / factor
    mean = np.asarray(mean_blob, dtype=np.float64) * scale
    var = np.asarray(var_blob, dtype=np.float64) * scale
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """SoftmaxLayer::Forward_cpu: subtract the max, exponentiate, normalise."""
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)
