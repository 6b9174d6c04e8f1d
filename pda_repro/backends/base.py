"""The backend interface: a Caffe deploy net (prototxt + weights) that can be run forward and backward.

Backends know nothing of PDA; methods know nothing of Caffe or torch. Every array crossing this
interface is a NumPy array: inputs float32 N×C×H×W, outputs float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

Output = Literal["prob", "logit"]


PAPER_BATCH = 160
CPU_BATCH = 4


def default_batch(device: str = "cpu") -> int:
    """Images per forward pass when none is given: the paper's 160 on a GPU; 4 on a CPU, where big
    batches outgrow the caches. Measured on this project's CPU (1 thread; benchmarks/bench_batch.py ->
    results/cpu-amd-epyc-2c/batch_size.csv): batch 160 costs 1.35x (AlexNet), 1.87x (GoogLeNet) and
    3.8x (EfficientNet-Lite0) the time per image of batch 4, VGG-16 at 64 1.27x; 4 is within 1.07x of
    the fastest size for GoogLeNet, EfficientNet-Lite0 and VGG-16, 1.24x for AlexNet (best at 16). Only the tiny MNIST net prefers big
    batches (0.11 vs 0.16 ms per image). The benchmark harness keeps the paper's 160 on every device
    (Table 1 is defined at batch 160)."""
    return PAPER_BATCH if str(device).startswith(("cuda", "gpu")) else CPU_BATCH


class BackendError(ValueError):
    """Bad input to a backend (wrong shape/dtype, unknown blob, weights that do not fit, ...)."""


class Backend(ABC):
    """One Caffe deploy net on one device.

    Attributes set by every implementation:
      name          "caffe" or "torch"
      device        "cpu" or "cuda"
      batch         the most images handed to the framework at once (default: default_batch(device));
                    longer inputs are split
      net_param     the parsed prototxt (caffe_pb2.NetParameter)
      input_blob    name of the input blob
      input_shape   (C, H, W)
      prob_blob     name of the Softmax output blob ("prob")
      logits_blob   name of the blob the Softmax reads (the logits)
      num_classes   K
    """

    name: str
    device: str
    batch: int
    input_blob: str
    input_shape: tuple[int, int, int]
    prob_blob: str
    logits_blob: str
    num_classes: int
    model_spec = None  # the zoo ModelSpec, set by load_backend
    weights_source = "given at construction"  # set by load_backend: a path or "random (seed N)"

    # -- construction helpers shared by the implementations ----------------------------------------
    def _set_device_and_batch(self, device: str, batch: int | None, cuda_index: bool = False) -> None:
        """Check and store `device` ("cpu", "cuda"; "cuda:N" too if `cuda_index`) and `batch`
        (None: default_batch(device))."""
        batch = default_batch(device) if batch is None else batch
        if batch < 1:
            raise BackendError(f"batch must be at least 1, got {batch}")
        if device not in ("cpu", "cuda") and not (cuda_index and str(device).startswith("cuda:")):
            raise BackendError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device, self.batch = str(device), int(batch)

    def _set_net_io(self, net_param: Any, shapes: Any) -> None:
        """Store the parsed net and its input/output blobs (pda_repro.proto.net_io)."""
        from pda_repro import proto  # noqa: PLC0415

        self.net_param = net_param
        io = proto.net_io(net_param, shapes)
        self.input_blob, self.input_shape = io.input_blob, io.input_shape
        self.prob_blob, self.logits_blob, self.num_classes = io.prob_blob, io.logits_blob, io.num_classes

    def _set_initial_weights(self, weights: dict[str, list[np.ndarray]] | None, seed: int) -> None:
        """`weights` fitted to the net, the layers it lacks filled from the prototxt's fillers."""
        from pda_repro.backends.fillers import initial_weights  # noqa: PLC0415

        self.set_weights(initial_weights(self.net_param, weights, seed))

    # -- running ---------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and logits, each (N, K) float32, for a float32 batch N×C×H×W."""

    @abstractmethod
    def input_gradient(
        self, x: np.ndarray, classes: int | Sequence[int], output: Output = "prob"
    ) -> np.ndarray:
        """d output[n, classes[n]] / d x for every image n, float32 N×C×H×W.

        `classes` is one class index for all images or one per image; `output` picks the softmax
        probability or the logit (the Softmax's input)."""

    @abstractmethod
    def blobs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Forward x and return the named intermediate blobs (float32, leading dim N)."""

    @abstractmethod
    def blob_gradient(
        self, x: np.ndarray, blob: str, classes: int | Sequence[int], output: Output = "logit"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(activation, d output[n, classes[n]] / d activation) of the named blob, for Grad-CAM."""

    # -- weights ---------------------------------------------------------------------------------
    @abstractmethod
    def get_weights(self) -> dict[str, list[np.ndarray]]:
        """Learnable blobs by layer name, in Caffe's layout (copies, float32)."""

    @abstractmethod
    def set_weights(self, weights: dict[str, list[np.ndarray]]) -> None:
        """Set learnable blobs by layer name; shapes are checked (BackendError naming layer and shapes)."""

    def save_weights(self, path: str | Path) -> None:
        """Write the weights as a binary .caffemodel (atomically)."""
        from pda_repro.backends.caffemodel import write_caffemodel

        types = {layer.name: layer.type for layer in self.net_param.layer}
        write_caffemodel(path, self.get_weights(), net_name=self.net_param.name, layer_types=types)

    def load_weights(self, path: str | Path) -> None:
        """Read a binary .caffemodel (new or V1 layout) and copy blobs by layer name, checking shapes."""
        from pda_repro.backends.caffemodel import read_caffemodel

        self.set_weights(read_caffemodel(path))

    # -- helpers shared by implementations ------------------------------------------------------
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Raise BackendError unless x is a float32 (N, C, H, W) batch of this net's input shape."""
        if not isinstance(x, np.ndarray):
            raise BackendError(f"input must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise BackendError(f"input dtype must be float32, got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise BackendError(
                f"input shape must be (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        if x.shape[0] < 1:
            raise BackendError("input batch is empty")
        return np.ascontiguousarray(x)

    def class_vector(self, classes: int | Sequence[int], n: int) -> np.ndarray:
        """Broadcast `classes` to n class indices and check their range."""
        c = np.broadcast_to(np.asarray(classes, dtype=np.int64), (n,))
        bad = c[(c < 0) | (c >= self.num_classes)]
        if bad.size:
            raise BackendError(f"class index {int(bad[0])} out of range 0..{self.num_classes - 1}")
        return c
