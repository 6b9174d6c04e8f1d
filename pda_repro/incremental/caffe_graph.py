"""The SpatialGraph of a Caffe net run by the torch backend (pda_repro.backends.torch_backend.CaffeNet).

Each Caffe layer keeps its own module for full computation; what is added here is its spatial kind
and, for local layers, the geometry and the block computation. Caffe's in-place layers (top ==
bottom) become new SSA values "blob#n", so the stored activation each layer reads is unambiguous.
Pooling and LRN follow pda_repro.caffe_quirks exactly: max pooling pads with -FLT_MAX (quirk 2),
average pooling divides the block's sum by Caffe's clipped divisor at the block's absolute position
(quirk 3), LRN within a channel is x * (1 + alpha * avgpool(x^2))^-beta with a constant divisor n^2
(quirk 4: stride 1, pad (n-1)/2, so the window never reaches the overhang).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pda_repro import caffe_quirks
from pda_repro.incremental.graph import LocalGeometry, Node, SpatialGraph

POINTWISE = {"ReLU", "ReLU6", "Sigmoid", "TanH", "Dropout", "Split"}
DENSE = {"InnerProduct", "Flatten", "Softmax"}


def _conv(module: Any, layer: Any, in_shape: tuple, out_shape: tuple) -> tuple[LocalGeometry, Any, int]:
    weight = module.blobs[0]
    kernel = tuple(int(s) for s in weight.shape[2:])
    geometry = LocalGeometry(
        kernel, tuple(module.stride), tuple(module.pad), tuple(module.dilation), in_shape[2:], out_shape[2:]
    )

    def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
        bias = module.blobs[1] if len(module.blobs) > 1 else None
        return F.conv2d(block, module.blobs[0], bias, module.stride, 0, module.dilation, module.group)

    macs = int(weight.shape[0] * weight.shape[1] * kernel[0] * kernel[1])
    return geometry, region, macs


def _pool(module: Any, in_shape: tuple, out_shape: tuple) -> tuple[LocalGeometry, Any]:
    kernel, stride, pad = tuple(module.kernel), tuple(module.stride), tuple(module.pad)
    is_max = module.method is caffe_quirks.max_pool
    geometry = LocalGeometry(
        kernel, stride, pad, (1, 1), in_shape[2:], out_shape[2:], -caffe_quirks.FLT_MAX if is_max else 0.0
    )
    if is_max:

        def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
            return F.max_pool2d(block, kernel, stride)

        return geometry, region
    h, w = in_shape[2:]
    div_h = caffe_quirks.ave_pool_divisors(h, kernel[0], stride[0], pad[0], out_shape[2])
    div_w = caffe_quirks.ave_pool_divisors(w, kernel[1], stride[1], pad[1], out_shape[3])
    correction = (kernel[0] * kernel[1]) / np.outer(div_h, div_w)  # 1 where Caffe divides by K*K
    uniform = bool(np.all(correction == 1.0))

    def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
        mean = F.avg_pool2d(block, kernel, stride)
        if uniform:
            return mean
        oh, ow = mean.shape[-2:]
        rr = rows0[:, None, None] + np.arange(oh)[None, :, None]
        cc = cols0[:, None, None] + np.arange(ow)[None, None, :]
        factor = torch.as_tensor(correction[rr, cc], dtype=block.dtype, device=block.device)
        return mean * factor[:, None]

    return geometry, region


def _lrn_within(module: Any, in_shape: tuple) -> tuple[LocalGeometry, Any]:
    n, half = module.size, (module.size - 1) // 2
    geometry = LocalGeometry((n, n), (1, 1), (half, half), (1, 1), in_shape[2:], in_shape[2:])

    def region(block: torch.Tensor, rows0: np.ndarray, cols0: np.ndarray) -> torch.Tensor:
        mean_square = F.avg_pool2d(block * block, (n, n), (1, 1))
        centre = block[..., half : block.shape[-2] - half, half : block.shape[-1] - half]
        return centre * (1.0 + module.alpha * mean_square).pow(-module.beta)

    return geometry, region


def _kind(layer: Any, module: Any, bottoms: list[tuple]) -> str | None:
    """The spatial kind of a Caffe layer, or None when it has no incremental rule."""
    t = layer.type
    spatial = len(bottoms[0]) == 4
    if t in DENSE or not spatial:
        return "dense"
    if t in POINTWISE:
        return "pointwise"
    if t == "Convolution":
        return "local"
    if t == "Pooling":
        return "dense" if layer.pooling_param.global_pooling else "local"
    if t == "LRN":
        return "pointwise" if module.across else "local"
    if t == "BatchNorm":
        return "pointwise" if module.global_stats else None  # batch statistics mix the windows
    if t == "Scale":
        return "pointwise" if module.learned_scale and module.axis == 1 else None
    if t == "Eltwise":
        return "merge"
    if t == "Concat":
        return "merge" if module.axis == 1 else None
    return None


def caffe_graph(net: Any) -> SpatialGraph:
    """The SpatialGraph of a CaffeNet (its modules compute; shapes from its NetShapes at batch 1)."""
    version: dict[str, int] = {}
    current: dict[str, str] = {net.input_blob: net.input_blob}
    shapes: dict[str, tuple] = {net.input_blob: tuple(net.shapes.inputs[net.input_blob])}
    nodes: list[Node] = []
    unsupported: list[str] = []
    for layer, module in zip(net.layer_params, net.layers, strict=True):
        inputs = tuple(current[b] for b in layer.bottom)
        outputs = []
        for top, shape in zip(layer.top, net.shapes.tops[layer.name], strict=True):
            if top in current:
                version[top] = version.get(top, 0) + 1
                value = f"{top}#{version[top]}"
            else:
                value = top
            current[top] = value
            shapes[value] = tuple(shape)
            outputs.append(value)
        bottoms = [shapes[v] for v in inputs]
        kind = _kind(layer, module, bottoms)
        if kind is None:
            unsupported.append(f"layer {layer.name!r} ({layer.type})")
            kind = "dense"
        node = Node(layer.name, layer.type, kind, inputs, tuple(outputs), module.forward)
        if kind == "local":
            if layer.type == "Convolution":
                node.geometry, node.region, node.macs_per_pixel = _conv(
                    module, layer, bottoms[0], shapes[outputs[0]]
                )
            elif layer.type == "Pooling":
                node.geometry, node.region = _pool(module, bottoms[0], shapes[outputs[0]])
            else:
                node.geometry, node.region = _lrn_within(module, bottoms[0])
        elif layer.type == "InnerProduct":
            node.macs_per_pixel = int(np.prod(module.blobs[0].shape))
        nodes.append(node)
    # the last Softmax's output and input (the backend's prob and logits blobs)
    softmax = [n for n in nodes if n.type == "Softmax"]
    outputs = {"prob": softmax[-1].outputs[0], "logits": softmax[-1].inputs[0]} if softmax else {}
    return SpatialGraph(nodes, net.input_blob, outputs, shapes, unsupported)
