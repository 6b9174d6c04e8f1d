"""The backend interface: a Caffe deploy net (prototxt + weights) that can be run forward and backward.

Backends know nothing of PDA; methods know nothing of Caffe or torch. Every array crossing this
interface is a NumPy array: inputs float32 N×C×H×W, outputs float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

Output = Literal["prob", "logit"]
Inference = Literal["auto", "incremental", "full"]
INFERENCE_MODES: tuple[str, ...] = ("auto", "incremental", "full")


PAPER_BATCH = 160
CPU_BATCH = 4
INCREMENTAL_CPU_BATCH = 16


def default_batch(device: str = "cpu") -> int:
    """Images per forward pass when none is given: the paper's 160 on a GPU; 4 on a CPU, where big
    batches outgrow the caches (`pda-repro benchmark batch` measures the time per image against the batch
    size into results/<env>/batch_size.csv; README's batch table is generated from it). The benchmark
    harness keeps the paper's 160 on every device (Table 1 is defined at batch 160)."""
    return PAPER_BATCH if str(device).startswith(("cuda", "gpu")) else CPU_BATCH


def paste_windows(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """N copies of the C×H×W image x, copy i with the k×k block at (rows[i], cols[i]) set to
    patches[i] (N×C×k×k) -- one vectorised scatter, no per-window loop."""
    n, _, k, _ = patches.shape
    out = np.empty((n, *x.shape), dtype=x.dtype)
    out[:] = x
    offs = np.arange(k)
    ii = np.arange(n)[:, None, None]
    rr = rows[:, None, None] + offs[None, :, None]
    cc = cols[:, None, None] + offs[None, None, :]
    out[ii, :, rr, cc] = patches.transpose(0, 2, 3, 1)  # advanced dims first: (N, k, k, C)
    return out


class BackendError(ValueError):
    """Bad input to a backend (wrong shape/dtype, unknown blob, weights that do not fit, ...)."""


def resolve_blob_name(
    name: str, last_write: Mapping[str, int], layer_index: Mapping[str, int], tops: Callable[[str], list[str]]
) -> tuple[str, int]:
    """(blob, index of the layer after which to read it) for "blob" (its last writer) or "blob@layer".

    last_write: blob -> index of the last layer writing it; layer_index: layer -> index; tops(layer): the
    blobs a layer writes. BackendError naming the blob or layer when there is no such blob or writer."""
    blob, _, layer = name.partition("@")
    if blob not in last_write:
        raise BackendError(f"unknown blob {blob!r}; blobs: {', '.join(last_write)}")
    if not layer:
        return blob, last_write[blob]
    if layer not in layer_index:
        raise BackendError(f"unknown layer {layer!r} in blob name {name!r}")
    if blob not in tops(layer):
        raise BackendError(f"layer {layer!r} does not write blob {blob!r} (its tops: {tops(layer)})")
    return blob, layer_index[layer]


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
    inference: str = "auto"  # how forward_windows computes (see resolve_inference)
    weights_source = "given at construction"  # set by load_backend: a path or "random (seed N)"

    # -- construction helpers shared by the implementations ----------------------------------------
    def _set_device_and_batch(self, device: str, batch: int | None, cuda_index: bool = False) -> None:
        """Check and store `device` ("cpu", "cuda"; "cuda:N" too if `cuda_index`) and `batch`
        (None: default_batch(device))."""
        self.batch_given = batch is not None
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

    def input_gradient(
        self, x: np.ndarray, classes: int | Sequence[int], output: Output = "prob"
    ) -> np.ndarray:
        """d output[n, classes[n]] / d x for every image n, float32 N×C×H×W (the input blob's
        `blob_gradient`).

        `classes` is one class index for all images or one per image; `output` picks the softmax
        probability or the logit (the Softmax's input)."""
        return self.blob_gradient(x, self.input_blob, classes, output)[1]

    def output_blob(self, output: Output) -> str:
        """The blob of `output`: "prob" the Softmax's output, "logit" its input."""
        if output not in ("prob", "logit"):
            raise BackendError(f"output must be 'prob' or 'logit', got {output!r}")
        return self.prob_blob if output == "prob" else self.logits_blob

    @abstractmethod
    def blobs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Forward x and return the named intermediate blobs (float32, leading dim N)."""

    @abstractmethod
    def blob_gradient(
        self, x: np.ndarray, blob: str, classes: int | Sequence[int], output: Output = "logit"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(activation, d output[n, classes[n]] / d activation) of the named blob, for Grad-CAM."""

    # -- the image with windows replaced -----------------------------------------------------------
    def incremental_note(self) -> str | None:
        """None when this backend can compute forward_windows incrementally, else why not (one line)."""
        return f"the {self.name} backend has no incremental inference"

    def resolve_inference(self, mode: str | None = None) -> str:
        """ "full" or "incremental" for `mode` (default: self.inference); "auto" = incremental where
        this backend has it. Asking for "incremental" where it is not available is a BackendError."""
        mode = self.inference if mode is None else mode
        if mode not in INFERENCE_MODES:
            raise BackendError(f"inference must be one of {', '.join(INFERENCE_MODES)}, got {mode!r}")
        note = self.incremental_note()
        if mode == "auto":
            return "full" if note else "incremental"
        if mode == "incremental" and note:
            raise BackendError(f"inference='incremental' is not available: {note}")
        return mode

    def window_batch(self, inference: str | None = None) -> int:
        """Windows per forward_windows call when the caller does not choose (the window loop's
        default batch) for an inference mode: `batch` when it was given at construction, else
        default_window_batch(mode)."""
        if getattr(self, "batch_given", True):
            return self.batch
        return self.default_window_batch(inference)

    def default_window_batch(self, inference: str | None = None) -> int:
        """The default windows per call: default_batch(device) for full inference (4 on a CPU,
        160 on a GPU); for incremental inference on a CPU at least INCREMENTAL_CPU_BATCH -- its
        blocks are small, so the per-call overhead is spread over more windows."""
        if self.resolve_inference(inference) == "full" or str(self.device).startswith("cuda"):
            return default_batch(self.device)
        return max(INCREMENTAL_CPU_BATCH, default_batch(self.device))

    def forward_windows(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, patches: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and logits (N, K) of N copies of the C×H×W image `x`, copy i with its k×k
        block at (rows[i], cols[i]) replaced by patches[i] (patches: N×C×k×k float32).

        This base implementation pastes and calls `forward` (full re-inference, pycaffe's faithful
        path); a backend with incremental inference overrides `_forward_windows_incremental` and
        uses it when resolve_inference() says so."""
        x, rows, cols, patches = self.check_windows(x, rows, cols, patches)
        if self.resolve_inference() == "incremental":
            return self._forward_windows_incremental(x, rows, cols, patches)
        return self._forward_windows_full(x, rows, cols, patches)

    def _forward_windows_full(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, patches: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        probs, logits = [], []
        for start in range(0, rows.size, self.batch):
            sel = slice(start, start + self.batch)
            images = paste_windows(x, rows[sel], cols[sel], patches[sel])
            p, lg = self.forward(images)
            probs.append(p)
            logits.append(lg)
        return np.concatenate(probs), np.concatenate(logits)

    def _forward_windows_incremental(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, patches: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - only reached when incremental_note() is None
        raise BackendError(f"the {self.name} backend has no incremental inference")

    def check_windows(
        self, x: np.ndarray, rows: object, cols: object, patches: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raise BackendError (naming the value) unless x is one float32 image of the input shape,
        patches float32 N×C×k×k, and rows/cols N integer corners with the window inside the image."""
        c, h, w = self.input_shape
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or tuple(x.shape) != (c, h, w):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise BackendError(f"forward_windows: x must be one float32 image ({c}, {h}, {w}), got {got}")
        if not isinstance(patches, np.ndarray) or patches.dtype != np.float32:
            got = patches.dtype if isinstance(patches, np.ndarray) else type(patches).__name__
            raise BackendError(f"forward_windows: patches must be a float32 array, got {got}")
        if patches.ndim != 4 or patches.shape[1] != c or patches.shape[2] != patches.shape[3]:
            raise BackendError(
                f"forward_windows: patches must be N×{c}×k×k (square windows), got {tuple(patches.shape)}"
            )
        k, n = patches.shape[2], patches.shape[0]
        if not 1 <= k <= min(h, w) or n < 1:
            raise BackendError(f"forward_windows: {n} patches of size {k} do not fit a {h}×{w} image")
        corners = []
        for name, value, limit in (("rows", rows, h - k), ("cols", cols, w - k)):
            arr = np.asarray(value)
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
                raise BackendError(
                    f"forward_windows: {name} must be {n} integers (one per patch), got {arr.dtype} {arr.shape}"
                )
            bad = arr[(arr < 0) | (arr > limit)]
            if bad.size:
                raise BackendError(
                    f"forward_windows: {name} value {int(bad[0])} puts the {k}×{k} window outside the "
                    f"{h}×{w} image (allowed 0..{limit})"
                )
            corners.append(arr.astype(np.int64))
        if not np.isfinite(patches).all():
            raise BackendError("forward_windows: patches hold NaN or Inf")
        return np.ascontiguousarray(x), corners[0], corners[1], np.ascontiguousarray(patches)

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
