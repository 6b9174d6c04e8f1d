"""PyTorch backend: a torch.nn graph built from a Caffe NetParameter (parsed with protobuf text_format).

Every layer is a small module holding its learnable blobs in Caffe's layout; where Caffe's arithmetic
differs from PyTorch's defaults the module calls pda_repro.caffe_quirks (each difference named there).
Gradients come from autograd. Only one batch of `batch` images is ever in flight: inputs are cut into
chunks, and blobs are dropped as soon as no later layer reads them.

Blob names: "fc6" is the blob's value at the end of the forward pass (what pycaffe's net.blobs shows,
i.e. after in-place layers such as relu6); "fc6@fc6" is its value right after layer "fc6" ran (the
fully connected output before its in-place ReLU). Generally "<blob>@<layer>" with `layer` writing `blob`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pda_repro import caffe_quirks, proto
from pda_repro.backends.base import Backend, BackendError, Output, resolve_blob_name
from pda_repro.backends.caffemodel import match_weights
from pda_repro.incremental.caffe_graph import caffe_graph
from pda_repro.incremental.engine import BaseState, IncrementalEngine

DENSE_TAIL_BYTES = 32 * 2**20  # dense-tail weights above which incremental calls take more windows
DENSE_TAIL_WINDOWS = 64


class CaffeLayer(nn.Module):
    """One Caffe layer: `blobs` are its learnable blobs in Caffe's layout; each subclass's
    forward(*bottoms) returns the list of its tops."""

    def __init__(self, layer: Any, bottom_shapes: list[tuple], param_shapes: list[tuple]):
        super().__init__()
        self.layer_name = layer.name
        self.blobs = nn.ParameterList(
            [nn.Parameter(torch.zeros(shape), requires_grad=False) for shape in param_shapes]
        )


class Convolution(CaffeLayer):
    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        g = proto.conv_geometry(layer)
        self.stride, self.pad, self.dilation = g["stride"], g["pad"], g["dilation"]
        self.group = layer.convolution_param.group

    def forward(self, x):
        bias = self.blobs[1] if len(self.blobs) > 1 else None
        return [F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)]


class InnerProduct(CaffeLayer):
    """caffe_quirks 6: flattens from `axis` on; weight (out, in) or (in, out) with transpose."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        self.axis = layer.inner_product_param.axis % len(bottom_shapes[0])
        self.transpose = layer.inner_product_param.transpose

    def forward(self, x):
        x = x.reshape(*x.shape[: self.axis], -1)
        weight = self.blobs[0].t() if self.transpose else self.blobs[0]
        bias = self.blobs[1] if len(self.blobs) > 1 else None
        return [F.linear(x, weight, bias)]


class Pooling(CaffeLayer):
    """caffe_quirks 1-3: Caffe's output size, max over real pixels, Caffe's average divisor."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        g = proto.pool_geometry(layer, bottom_shapes[0])
        self.kernel, self.stride, self.pad, self.out = g["kernel"], g["stride"], g["pad"], g["out"]
        self.method = caffe_quirks.max_pool if layer.pooling_param.pool == 0 else caffe_quirks.ave_pool

    def forward(self, x):
        return [self.method(x, self.kernel, self.stride, self.pad, self.out)]


class LRN(CaffeLayer):
    """caffe_quirks 4."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        p = layer.lrn_param
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.across = p.norm_region == p.ACROSS_CHANNELS

    def forward(self, x):
        if self.across:
            return [caffe_quirks.lrn_across_channels(x, self.size, self.alpha, self.beta, self.k)]
        return [caffe_quirks.lrn_within_channel(x, self.size, self.alpha, self.beta)]


class ReLU(CaffeLayer):
    """caffe_quirks 9: leaky_relu's gradient at 0 is the slope, as Caffe's; relu's is 0, as Caffe's."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        self.slope = layer.relu_param.negative_slope

    def forward(self, x):
        return [F.leaky_relu(x, self.slope) if self.slope else F.relu(x)]


class ReLU6(CaffeLayer):
    """caffe_quirks 9: min(max(x,0) + slope*min(x,0), threshold), gradient 0 where x >= threshold."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        self.slope = layer.relu6_param.negative_slope
        self.threshold = layer.relu6_param.threshold

    def forward(self, x):
        if not self.slope and self.threshold > 0:
            # the same values and gradient (0 at x <= 0 and x >= threshold) in one kernel, not four
            return [F.hardtanh(x, 0.0, self.threshold)]
        rectified = F.leaky_relu(x, self.slope) if self.slope else F.relu(x)
        return [torch.where(x < self.threshold, rectified, torch.full_like(x, self.threshold))]


class Sigmoid(CaffeLayer):
    def forward(self, x):
        return [torch.sigmoid(x)]


class TanH(CaffeLayer):
    def forward(self, x):
        return [torch.tanh(x)]


class Dropout(CaffeLayer):
    """caffe_quirks 5: the identity at test time."""

    def forward(self, x):
        return [x]


class Split(CaffeLayer):
    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        self.copies = len(layer.top)

    def forward(self, x):
        return [x] * self.copies


class Concat(CaffeLayer):
    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        p = layer.concat_param
        self.axis = (p.concat_dim if p.HasField("concat_dim") else p.axis) % len(bottom_shapes[0])

    def forward(self, *xs):
        return [torch.cat(xs, dim=self.axis)]


class Softmax(CaffeLayer):
    """caffe_quirks 7."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        self.axis = layer.softmax_param.axis % len(bottom_shapes[0])

    def forward(self, x):
        return [torch.softmax(x, dim=self.axis)]


def _channel_view(ndim: int, axis: int, count: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector of `count` entries along `axis` of an ndim tensor."""
    return (1,) * axis + (count,) + (1,) * (ndim - axis - 1)


class BatchNorm(CaffeLayer):
    """caffe_quirks 8: statistics = blob / moving-average factor; y = (x - mean) / sqrt(var + eps)."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        p = layer.batch_norm_param
        self.eps = p.eps
        self.global_stats = p.use_global_stats if p.HasField("use_global_stats") else True

    def forward(self, x):
        channels = 1 if x.dim() == 1 else x.shape[1]
        view = _channel_view(x.dim(), min(1, x.dim() - 1), channels)
        if self.global_stats:
            mean, var = caffe_quirks.batch_norm_statistics(self.blobs[0], self.blobs[1], self.blobs[2])
            mean, var = mean.reshape(view), var.reshape(view)
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.mean(dim=dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        return [(x - mean) / torch.sqrt(var + self.eps)]


class Scale(CaffeLayer):
    """y = x * scale (+ bias), scale broadcast over axes [axis, axis + num_axes) (or the 2nd bottom)."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        p = layer.scale_param
        x = bottom_shapes[0]
        self.axis = p.axis % len(x) if len(x) else 0
        self.learned_scale = len(bottom_shapes) == 1
        scale_shape = param_shapes[0] if self.learned_scale else bottom_shapes[1]
        self.view = (1,) * self.axis + tuple(scale_shape) + (1,) * (len(x) - self.axis - len(scale_shape))
        self.has_bias = p.bias_term

    def forward(self, x, *scale_bottom):
        if self.learned_scale:
            y = x * self.blobs[0].reshape(self.view)
        else:
            y = x * _broadcast_bottom(scale_bottom[0], x.dim(), self.axis)
        if self.has_bias:
            y = y + self.blobs[-1].reshape(self.view)
        return [y]


def _broadcast_bottom(scale: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A second-bottom scale blob occupying axes [axis, axis + scale.dim()) of an ndim tensor."""
    return scale.reshape((1,) * axis + tuple(scale.shape) + (1,) * (ndim - axis - scale.dim()))


class Eltwise(CaffeLayer):
    """SUM (with coeff), PROD, MAX (caffe_quirks.eltwise_max: Caffe's tie rule and gradient routing)."""

    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        p = layer.eltwise_param
        self.operation = p.operation
        self.coeff = list(p.coeff) or [1.0] * len(bottom_shapes)

    def forward(self, *xs):
        if self.operation == 1:  # SUM
            y = xs[0] * self.coeff[0] if self.coeff[0] != 1.0 else xs[0]
            for c, x in zip(self.coeff[1:], xs[1:], strict=True):
                y = y + (x * c if c != 1.0 else x)
            return [y]
        if self.operation == 0:  # PROD
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return [y]
        return [caffe_quirks.eltwise_max(xs)]


class Flatten(CaffeLayer):
    def __init__(self, layer, bottom_shapes, param_shapes):
        super().__init__(layer, bottom_shapes, param_shapes)
        x = bottom_shapes[0]
        self.start = layer.flatten_param.axis % len(x)
        self.end = layer.flatten_param.end_axis % len(x)

    def forward(self, x):
        return [torch.flatten(x, self.start, self.end)]


LAYERS: dict[str, type[CaffeLayer]] = {
    "Convolution": Convolution,
    "InnerProduct": InnerProduct,
    "Pooling": Pooling,
    "LRN": LRN,
    "ReLU": ReLU,
    "ReLU6": ReLU6,
    "Sigmoid": Sigmoid,
    "TanH": TanH,
    "Dropout": Dropout,
    "Split": Split,
    "Concat": Concat,
    "Softmax": Softmax,
    "BatchNorm": BatchNorm,
    "Scale": Scale,
    "Eltwise": Eltwise,
    "Flatten": Flatten,
}


class CaffeNet(nn.Module):
    """A deploy NetParameter as a torch module. `run(x, names)` returns the requested blobs."""

    def __init__(self, net: Any):
        super().__init__()
        self.shapes = proto.infer_shapes(net, batch=1)  # validates types, bottoms and geometry
        self.layer_params = [layer for layer in net.layer if layer.type != "Input"]
        self.input_blob = next(iter(self.shapes.inputs))
        modules = []
        for layer in self.layer_params:
            if layer.type not in LAYERS:  # pragma: no cover - infer_shapes rejects unknown types first
                raise BackendError(f"layer {layer.name!r} has unsupported type {layer.type!r}")
            modules.append(
                LAYERS[layer.type](
                    layer, self.shapes.bottoms[layer.name], self.shapes.params.get(layer.name, [])
                )
            )
        self.layers = nn.ModuleList(modules)
        self.index = {layer.name: i for i, layer in enumerate(self.layer_params)}
        self.by_name = {layer.name: module for layer, module in zip(self.layer_params, modules, strict=True)}
        # last layer index reading each blob, to free blobs early
        self.last_read: dict[str, int] = {}
        self.last_write: dict[str, int] = {self.input_blob: -1}
        for i, layer in enumerate(self.layer_params):
            for b in layer.bottom:
                self.last_read[b] = i
            for t in layer.top:
                self.last_write[t] = i

    def resolve(self, name: str) -> tuple[str, int]:
        """(blob, index of the layer after which to take it; -1 for the input) for a blob name."""
        return resolve_blob_name(
            name, self.last_write, self.index, lambda layer: list(self.layer_params[self.index[layer]].top)
        )

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted: dict[int, list[tuple[str, str]]] = {}
        stop = -1
        for name in names:
            blob, after = self.resolve(name)
            wanted.setdefault(after, []).append((name, blob))
            stop = max(stop, after)
        out: dict[str, torch.Tensor] = {}
        for name, _ in wanted.get(-1, []):
            out[name] = x
        blobs = {self.input_blob: x}
        for i in range(stop + 1):
            layer = self.layer_params[i]
            tops = self.layers[i](*(blobs[b] for b in layer.bottom))
            for b in layer.bottom:
                if self.last_read.get(b) == i and b not in layer.top:
                    blobs.pop(b, None)
            for t, value in zip(layer.top, tops, strict=True):
                blobs[t] = value
            for name, blob in wanted.get(i, []):
                out[name] = blobs[blob]
        return out


class TorchBackend(Backend):
    """A Caffe deploy net run by PyTorch (see the module docstring for blob naming)."""

    name = "torch"
    spatial_batch = 16  # windows per block computation of the incremental engine (its dense tail takes all)
    # the incremental engine's layout of its maps (engine.py "Layout"); None: channels-last on a CPU, where it
    # was measured faster (results: incremental.csv, layout_speedup), contiguous on a GPU
    channels_last: bool | None = None

    def __init__(
        self,
        net: Any,
        device: str = "cpu",
        batch: int | None = None,
        weights: dict[str, list[np.ndarray]] | None = None,
        seed: int = 0,
    ):
        self._set_device_and_batch(device, batch, cuda_index=True)
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendError("device 'cuda' requested but torch sees no CUDA device")
            # TF32 would change results in the 4th digit; Caffe computes in full float32.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        net_param = proto.deploy_net(net)
        self.model = CaffeNet(net_param)
        self._set_net_io(net_param, self.model.shapes)
        self.model.to(self.device).eval()
        self._set_initial_weights(weights, seed)

    # -- weights -----------------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        return dict(self.model.shapes.params)

    def get_weights(self) -> dict[str, list[np.ndarray]]:
        return {
            name: [b.detach().cpu().numpy().copy() for b in self.model.by_name[name].blobs]
            for name in self.model.shapes.params
        }

    def set_weights(self, weights: dict[str, list[np.ndarray]]) -> None:
        fitted = match_weights(weights, self.model.shapes.params)
        with torch.no_grad():
            for name, blobs in fitted.items():
                for param, array in zip(self.model.by_name[name].blobs, blobs, strict=True):
                    param.copy_(torch.from_numpy(array))
        self._base_state = None  # stored activations belong to the old weights

    # -- incremental inference (pda_repro.incremental) ----------------------------------------------
    def _incremental_engine(self) -> IncrementalEngine | None:
        if not hasattr(self, "_engine"):
            graph = caffe_graph(self.model)
            self._engine_note = graph.note()
            self._engine = None if self._engine_note else IncrementalEngine(graph)
        return self._engine

    def default_window_batch(self, inference: str | None = None) -> int:
        """As Backend's; on a CPU, nets whose dense tail holds more than DENSE_TAIL_BYTES of weights
        (AlexNet's and VGG-16's fully connected layers) take DENSE_TAIL_WINDOWS windows per call: the
        tail runs once per call on all of them, so its weights are read once per DENSE_TAIL_WINDOWS
        windows, while the blocks are still computed `spatial_batch` windows at a time."""
        batch = super().default_window_batch(inference)
        if self.resolve_inference(inference) == "full" or str(self.device).startswith("cuda"):
            return batch
        engine = self._incremental_engine()
        tail = engine.graph.nodes[engine.switch :]
        weights = sum(
            p.numel() * p.element_size() for n in tail for p in self.model.by_name[n.name].parameters()
        )
        return max(batch, DENSE_TAIL_WINDOWS) if weights > DENSE_TAIL_BYTES else batch

    def incremental_note(self) -> str | None:
        self._incremental_engine()
        return self._engine_note

    def base_state(self, x: np.ndarray) -> BaseState:
        """The stored activations of image x (C×H×W), computed once per image and weights."""
        digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).hexdigest()
        layout = str(self.device) == "cpu" if self.channels_last is None else bool(self.channels_last)
        key = (x.shape, digest, layout)
        cached = getattr(self, "_base_state", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                image = torch.from_numpy(x.copy()[None]).to(self.device)
                state = self._incremental_engine().prepare(image, channels_last=layout)
            self._base_state = cached = (key, state)
        return cached[1]

    def _forward_windows_incremental(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, patches: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        engine, state = self._incremental_engine(), self.base_state(x)
        probs, logits = [], []
        step = self.window_batch("incremental")
        with torch.no_grad():
            for start in range(0, rows.size, step):
                sel = slice(start, start + step)
                chunk = torch.from_numpy(patches[sel]).to(self.device)
                out = engine.forward_windows(state, rows[sel], cols[sel], chunk, self.spatial_batch)
                probs.append(out["prob"].reshape(chunk.shape[0], -1).cpu().numpy())
                logits.append(out["logits"].reshape(chunk.shape[0], -1).cpu().numpy())
        return np.concatenate(probs), np.concatenate(logits)

    # -- running -----------------------------------------------------------------------------------
    def _chunks(self, x: np.ndarray):
        if not x.flags.writeable:  # torch.from_numpy warns about read-only arrays
            x = x.copy()
        for start in range(0, x.shape[0], self.batch):
            yield start, torch.from_numpy(x[start : start + self.batch]).to(self.device)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.check_input(x)
        probs, logits = [], []
        with torch.no_grad():
            for _, chunk in self._chunks(x):
                out = self.model.run(chunk, [self.prob_blob, self.logits_blob])
                probs.append(out[self.prob_blob].reshape(chunk.shape[0], -1).cpu().numpy())
                logits.append(out[self.logits_blob].reshape(chunk.shape[0], -1).cpu().numpy())
        return np.concatenate(probs), np.concatenate(logits)

    def blobs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        x = self.check_input(x)
        names = list(names)
        for name in names:
            self.model.resolve(name)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with torch.no_grad():
            for _, chunk in self._chunks(x):
                out = self.model.run(chunk, names)
                for name in names:
                    parts[name].append(out[name].cpu().numpy().copy())
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def blob_gradient(
        self, x: np.ndarray, blob: str, classes: int | Sequence[int], output: Output = "logit"
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self.check_input(x)
        target = self.class_vector(classes, x.shape[0])
        out_blob = self.output_blob(output)
        self.model.resolve(blob)
        activations, gradients = [], []
        for start, chunk in self._chunks(x):
            chunk.requires_grad_(True)
            with torch.enable_grad():
                out = self.model.run(chunk, [blob, out_blob])
                scores = out[out_blob].reshape(chunk.shape[0], -1)
                rows = torch.arange(chunk.shape[0], device=self.device)
                cols = torch.as_tensor(np.array(target[start : start + chunk.shape[0]]), device=self.device)
                picked = scores[rows, cols]
                activation = out[blob]
                (grad,) = torch.autograd.grad(picked.sum(), activation, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(activation)
            activations.append(activation.detach().cpu().numpy().copy())
            gradients.append(grad.detach().cpu().numpy().copy())
        return np.concatenate(activations), np.concatenate(gradients)
