"""pycaffe backend: the deploy net run by Caffe itself (brocolli-caffe 9.0.2 = BVLC Caffe 1.0 + layers).

pycaffe aborts the whole process on a failed CHECK, so everything is validated before Caffe sees it:
the net goes through pda_repro.proto.infer_shapes (our layer types only, Caffe's geometry rules), the
inputs through Backend.check_input, the weights through caffemodel.match_weights (shapes), and the
prototxt Caffe reads is the one we validated, written to a temporary file. In that copy every learnable
blob gets lr_mult 0 -- Caffe then skips weight gradients, which we never need -- and `force_backward`
is set, so input gradients always exist.

Blob names follow the torch backend: "fc6" = value at the end of the forward pass, "fc6@fc6" = value
right after layer fc6 (before the in-place relu6).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pda_repro import proto
from pda_repro.backends.base import Backend, BackendError, Output, resolve_blob_name
from pda_repro.backends.caffemodel import match_weights


def import_caffe() -> ModuleType:
    """Import pycaffe lazily, quietly (GLOG_minloglevel=2) and sharing our caffe_pb2 module."""
    proto.caffe_pb2()  # registers our caffe_pb2 as caffe.proto.caffe_pb2 (protobuf allows one copy)
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import caffe  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            f"the caffe backend needs pycaffe, which does not import here ({exc}); build it with "
            "`make setup`, or use backend='torch'"
        ) from exc
    return caffe


@cache
def caffe_has_gpu() -> bool:
    """Whether this pycaffe was built with CUDA (CPU_ONLY builds carry Caffe's NO_GPU message)."""
    caffe = import_caffe()
    library = Path(caffe._caffe.__file__)
    return b"CPU-only Caffe" not in library.read_bytes()


def caffe_prototxt(net: Any, shapes: proto.NetShapes) -> Any:
    """The copy of a deploy net that we hand to Caffe (see the module docstring)."""
    pb = proto.caffe_pb2()
    copy = pb.NetParameter()
    copy.CopyFrom(net)
    copy.force_backward = True
    for layer in copy.layer:
        del layer.param[:]
        for _ in shapes.params.get(layer.name, []):
            layer.param.add(lr_mult=0.0, decay_mult=0.0)
        del layer.blobs[:]
        for descriptor, value in layer.ListFields():
            if descriptor.name.endswith("_param") and "engine" in value.DESCRIPTOR.fields_by_name:
                value.ClearField("engine")  # CUDNN engines abort a CPU-only Caffe
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = 1
    return copy


class CaffeBackend(Backend):
    """A Caffe deploy net run by pycaffe."""

    name = "caffe"

    def __init__(
        self,
        net: Any,
        device: str = "cpu",
        batch: int | None = None,
        weights: dict[str, list[np.ndarray]] | None = None,
        seed: int = 0,
    ):
        self._set_device_and_batch(device, batch)
        net_param = proto.deploy_net(net)
        self.shapes = proto.infer_shapes(net_param, batch=1)  # validates before Caffe sees the net
        self._set_net_io(net_param, self.shapes)
        self._caffe = import_caffe()
        if device == "cuda" and not caffe_has_gpu():
            raise BackendError(
                "this pycaffe was built CPU_ONLY; use device='cpu' or backend='torch' for CUDA"
            )
        self._set_mode()
        with tempfile.TemporaryDirectory(prefix="pda-caffe-") as tmp:
            path = Path(tmp) / "deploy.prototxt"
            proto.write_prototxt(caffe_prototxt(self.net_param, self.shapes), path)
            self.net = self._caffe.Net(str(path), self._caffe.TEST)
        self._layer_index = {name: i for i, name in enumerate(self.net._layer_names)}
        for name, expected in self.shapes.params.items():
            got = [tuple(b.data.shape) for b in self.net.params[name]]
            if got != [tuple(s) for s in expected]:  # pragma: no cover - would be a bug in infer_shapes
                raise BackendError(f"layer {name!r}: Caffe made blobs {got}, our shape inference {expected}")
        self._last_write = {self.input_blob: self._layer_index[self.input_blob]}
        for layer in self.net_param.layer:
            for top in layer.top:
                self._last_write[top] = self._layer_index[layer.name]
        self._set_initial_weights(weights, seed)

    def _set_mode(self) -> None:
        if self.device == "cuda":
            self._caffe.set_mode_gpu()
        else:
            self._caffe.set_mode_cpu()

    # -- weights -----------------------------------------------------------------------------------
    def get_weights(self) -> dict[str, list[np.ndarray]]:
        return {
            name: [np.array(b.data, dtype=np.float32) for b in self.net.params[name]]
            for name in self.shapes.params
        }

    def set_weights(self, weights: dict[str, list[np.ndarray]]) -> None:
        fitted = match_weights(weights, self.shapes.params)
        for name, blobs in fitted.items():
            for blob, array in zip(self.net.params[name], blobs, strict=True):
                blob.data[...] = array

    # -- running -----------------------------------------------------------------------------------
    def resolve(self, name: str) -> tuple[str, int]:
        """(blob, Caffe layer index after which to read it) for "blob" or "blob@layer"."""
        return resolve_blob_name(
            name,
            self._last_write,
            self._layer_index,
            lambda layer: next(list(p.top) for p in self.net_param.layer if p.name == layer),
        )

    def _chunks(self, x: np.ndarray):
        """Load each chunk of at most `batch` images into the input blob (reshaping the net as needed)."""
        self._set_mode()
        data = self.net.blobs[self.input_blob]
        for start in range(0, x.shape[0], self.batch):
            chunk = x[start : start + self.batch]
            if data.data.shape[0] != chunk.shape[0]:
                data.reshape(chunk.shape[0], *self.input_shape)
                self.net.reshape()
            data.data[...] = chunk
            yield start, chunk.shape[0]

    def _forward_capturing(self, wanted: list[tuple[str, str, int]], last: int) -> dict[str, np.ndarray]:
        """Run layers 1..last, copying each wanted (name, blob, after-index) when its layer has run."""
        captured: dict[str, np.ndarray] = {}
        position = 0  # layer 0 is the Input layer: its blob is already filled
        for name, blob, after in sorted(wanted, key=lambda item: item[2]):
            if after > position:
                self.net._forward(position + 1, after)
                position = after
            captured[name] = np.array(self.net.blobs[blob].data, dtype=np.float32)
        if last > position:
            self.net._forward(position + 1, last)
        return captured

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.check_input(x)
        last = max(self._last_write[self.prob_blob], self._last_write[self.logits_blob])
        probs, logits = [], []
        for _, n in self._chunks(x):
            self.net._forward(1, last)
            probs.append(np.array(self.net.blobs[self.prob_blob].data, dtype=np.float32).reshape(n, -1))
            logits.append(np.array(self.net.blobs[self.logits_blob].data, dtype=np.float32).reshape(n, -1))
        return np.concatenate(probs), np.concatenate(logits)

    def blobs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        x = self.check_input(x)
        wanted = [(name, *self.resolve(name)) for name in names]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for _ in self._chunks(x):
            for name, value in self._forward_capturing(wanted, 0).items():
                parts[name].append(value)
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def blob_gradient(
        self, x: np.ndarray, blob: str, classes: int | Sequence[int], output: Output = "logit"
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self.check_input(x)
        target = self.class_vector(classes, x.shape[0])
        out_blob = self.output_blob(output)
        blob_name, after = self.resolve(blob)
        start = self._last_write[out_blob]
        activations, gradients = [], []
        for offset, n in self._chunks(x):
            activation = self._forward_capturing([(blob, blob_name, after)], start)[blob]
            out = self.net.blobs[out_blob]
            if blob_name != out_blob:
                self.net.blobs[blob_name].diff[...] = 0.0
            seed = np.zeros(out.diff.shape, dtype=np.float32).reshape(n, -1)
            seed[np.arange(n), target[offset : offset + n]] = 1.0
            out.diff[...] = seed.reshape(out.diff.shape)
            if after + 1 <= start:
                self.net._backward(start, after + 1)
            activations.append(activation)
            gradients.append(np.array(self.net.blobs[blob_name].diff, dtype=np.float32))
        return np.concatenate(activations), np.concatenate(gradients)
