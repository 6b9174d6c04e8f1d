"""Where Caffe's arithmetic differs from PyTorch's defaults -- each difference named once, here.

The torch backend (pda_repro/backends/torch_backend.py) calls these functions instead of re-deriving the
rules; tests compare each one with a float64 brute-force loop written from Caffe's C++ source.

1. POOLING OUTPUT SIZE (`pooled_size`): Caffe rounds the output size up (ceil; brocolli-caffe's
   `ceil_mode` defaults to true, BVLC Caffe has no floor mode at all), then, when there is padding,
   drops a last window that would start in the padding: `if (pooled-1)*stride >= size + pad: pooled -= 1`.
   PyTorch's ceil_mode applies that rule even without padding, so it is not used; windows are laid
   out explicitly instead.
2. MAX POOLING (`max_pool`): padding never wins (Caffe loops only over real pixels); a window holding
   no real pixel yields -FLT_MAX, not -inf. Ties go to the first maximum in row-major order.
3. AVERAGE POOLING DIVISOR (`ave_pool`): the sum over real pixels is divided by the window's extent
   clipped to `size + pad` -- i.e. padding counts, the ceil-mode overhang beyond the padding does not.
4. LRN (`lrn`): ACROSS_CHANNELS is `x * (k + alpha/n * sum_{window} x^2)^-beta` with the window from
   c - (n-1)/2 to c + (n-1)/2 (n odd; Caffe CHECKs that). alpha is divided by local_size n -- so the
   prototxt's alpha=1e-4 means 2e-5 per squared value -- and k defaults to 1. WITHIN_CHANNEL is
   `x * (1 + alpha * avgpool_n(x^2))^-beta` with Caffe's average pooling (pad (n-1)/2, quirk 3), k
   ignored.
5. DROPOUT is the identity at test time (Caffe scales at training time: "inverted" dropout).
6. INNER PRODUCT flattens every axis from `axis` (default 1) on, C×H×W in C order; its weight is
   (num_output, C*H*W), or (C*H*W, num_output) with `transpose: true`.
7. SOFTMAX runs over `axis` (default 1, the channel axis), after subtracting the maximum.
8. BATCHNORM keeps three blobs: mean*s, variance*s and s, the moving-average scale factor; the
   statistics are blob/s (0 when s == 0), and y = (x - mean) / sqrt(var + eps), eps default 1e-5.
   `use_global_stats` defaults to true at test time; when false, statistics of the current batch are
   used (biased variance), and Caffe's update of the moving averages is not reproduced.
   The learned affine part is a separate Scale layer (`bias_term` adds the bias).
9. RELU's gradient at exactly 0 is `negative_slope` (Caffe: `(x > 0) + slope * (x <= 0)`), and
   brocolli-caffe's RELU6 is `min(max(x,0) + slope*min(x,0), threshold)` with gradient 0 at x >= threshold.
10. CHANNEL ORDER: the ILSVRC Model Zoo nets read BGR images, 0..255, minus the mean pixel
    (104, 117, 123) in B, G, R; see pda_repro/zoo.py.
11. CONVOLUTION weights are (num_output, C/group, kh, kw) -- the same layout as torch's; group splits
    input and output channels into equal consecutive parts, also as torch does.
12. CAFFEMODEL BLOBS written by old Caffe carry 4 legacy dims (num, channels, height, width); Caffe
    accepts them for a blob whose shape, left-padded with 1s to 4 axes, equals them (`legacy_match`).
13. ELTWISE MAX (`eltwise_max`): between the first two bottoms a tie goes to the SECOND, for later
    bottoms a tie keeps the earlier; the gradient goes to the chosen bottom only (torch.maximum
    would split it between tied inputs).
14. IN-PLACE CHAINS: Caffe's Sigmoid and TanH backward read their top blob; if a later in-place layer
    overwrote it (e.g. TanH then an in-place leaky ReLU), Caffe's gradient is not the derivative of
    the forward pass. We compute the true derivative; the zoo nets have no such chain (ReLU, ReLU6 and
    Dropout, whose backward reads a sign or nothing, are the only in-place layers after a learnable one).
15. FLOAT32 NEAR-TIES: Caffe (im2col + GEMM) and torch round differently (~1e-6 relative), so in a max
    pooling window whose two largest values are that close the backends may pick different maxima;
    outputs agree to rounding, but the input gradient then differs locally. Not a semantic difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

FLT_MAX = float(np.finfo(np.float32).max)


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True) -> int:
    """Quirk 1: Caffe's pooled output size along one axis (PoolingLayer::Reshape)."""
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _right_padding(size: int, kernel: int, stride: int, pad: int, pooled: int) -> int:
    """Extra elements after the input so that plain (floor) pooling yields exactly `pooled` windows."""
    return max(0, (pooled - 1) * stride + kernel - (size + pad))


def ave_pool_divisors(size: int, kernel: int, stride: int, pad: int, pooled: int) -> np.ndarray:
    """Quirk 3: per-window divisor along one axis: extent of [start, min(start+kernel, size+pad))."""
    start = np.arange(pooled) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    return (end - start).astype(np.float64)


def _pad_for_pooling(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    out: Sequence[int],
    value: float,
) -> torch.Tensor:
    """`x` padded by `pad` on the top/left and by Caffe's extra right/bottom padding (quirk 1) with `value`."""
    import torch.nn.functional as F  # noqa: PLC0415

    h, w = x.shape[-2:]
    right = [
        _right_padding(s, k, st, p, o)
        for s, k, st, p, o in zip((h, w), kernel, stride, pad, out, strict=True)
    ]
    if any(pad) or any(right):
        x = F.pad(x, (pad[1], right[1], pad[0], right[0]), value=value)
    return x


def max_pool(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], out: Sequence[int]
) -> torch.Tensor:
    """Quirks 1-2: Caffe MAX pooling of N×C×H×W `x` into `out` = (pooled_h, pooled_w) windows."""
    import torch.nn.functional as F  # noqa: PLC0415

    x = _pad_for_pooling(x, kernel, stride, pad, out, -FLT_MAX)
    y = F.max_pool2d(x, tuple(kernel), tuple(stride))
    return y[..., : out[0], : out[1]]


def ave_pool(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], out: Sequence[int]
) -> torch.Tensor:
    """Quirks 1 and 3: Caffe AVE pooling: window sum over real pixels / Caffe's divisor."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    h, w = x.shape[-2:]
    x = _pad_for_pooling(x, kernel, stride, pad, out, 0.0)
    mean = F.avg_pool2d(x, tuple(kernel), tuple(stride))[..., : out[0], : out[1]]
    div_h = ave_pool_divisors(h, kernel[0], stride[0], pad[0], out[0])
    div_w = ave_pool_divisors(w, kernel[1], stride[1], pad[1], out[1])
    if np.all(div_h == kernel[0]) and np.all(div_w == kernel[1]):
        return mean
    # mean = window sum / (kh*kw); Caffe divides the same sum by its clipped extent instead.
    correction = (kernel[0] * kernel[1]) / np.outer(div_h, div_w)
    return mean * torch.as_tensor(correction, dtype=x.dtype, device=x.device)


def lrn_across_channels(
    x: torch.Tensor, local_size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """Quirk 4: Caffe LRN ACROSS_CHANNELS (local_size odd)."""
    import torch.nn.functional as F  # noqa: PLC0415

    half = (local_size - 1) // 2
    square = F.pad(x * x, (0, 0, 0, 0, half, half))
    channels = x.shape[1]
    window_sum = square[:, 0:channels]
    for offset in range(1, local_size):
        window_sum = window_sum + square[:, offset : offset + channels]
    return x * (k + (alpha / local_size) * window_sum).pow(-beta)


def lrn_within_channel(x: torch.Tensor, local_size: int, alpha: float, beta: float) -> torch.Tensor:
    """Quirk 4: Caffe LRN WITHIN_CHANNEL = x * (1 + alpha * caffe_avgpool(x^2))^-beta."""
    half = (local_size - 1) // 2
    h, w = x.shape[-2:]
    out = (pooled_size(h, local_size, 1, half), pooled_size(w, local_size, 1, half))
    mean_square = ave_pool(x * x, (local_size, local_size), (1, 1), (half, half), out)
    return x * (1.0 + alpha * mean_square).pow(-beta)


def batch_norm_statistics(
    mean_blob: torch.Tensor, var_blob: torch.Tensor, factor_blob: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quirk 8: the mean and variance a Caffe BatchNorm layer with use_global_stats uses: its blobs
    divided by the moving-average factor (blob 2), with a zero factor giving zeros."""
    import torch  # noqa: PLC0415

    factor = factor_blob.reshape(-1)[0]
    scale = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
    return mean_blob * scale, var_blob * scale


def legacy_match(blob_shape: Sequence[int], expected: Sequence[int]) -> bool:
    """Quirk 12: does a blob read with shape `blob_shape` fit a parameter of shape `expected`?

    Exact match, or (Caffe's Blob::ShapeEquals for legacy blobs) a 4-axis blob equal to `expected`
    left-padded with 1s to 4 axes."""
    blob_shape, expected = tuple(blob_shape), tuple(expected)
    if blob_shape == expected:
        return True
    if len(blob_shape) == 4 and len(expected) <= 4:
        return blob_shape == (1,) * (4 - len(expected)) + expected
    return False


def eltwise_max(bottoms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Quirk 13: Caffe's Eltwise MAX (EltwiseLayer::Forward_cpu's mask rule)."""
    import torch  # noqa: PLC0415

    first, second = bottoms[0], bottoms[1]
    top = torch.where(first > second, first, second)
    for later in bottoms[2:]:
        top = torch.where(later > top, later, top)
    return top
