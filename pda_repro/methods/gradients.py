"""Gradient baselines of the paper's Table 2 and figures: saliency, gradient × input, Grad-CAM.

All take `output`: the gradient of the class probability ("prob", f = P(c|x) as in Table 2) or of
the class logit ("logit", the Softmax's input: Simonyan et al.'s class score and Selvaraju et al.'s
y^c). Defaults: "logit" for saliency, gradient × input and Grad-CAM (their authors' choice).
One backward pass per requested class. Deep Taylor lives in `deep_taylor.py`.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.methods.base import Method, MethodResult, RunContext, check_output


def _input_gradients(ctx: RunContext, output: str) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    n = ctx.classes.size
    grads = ctx.net.input_gradient(np.repeat(ctx.image[None], n, axis=0), ctx.classes, output=output)
    return grads.astype(np.float64), time.perf_counter() - t0


class InputGradientMethod(Method):
    """A map from the input gradient of the class output: one backward pass; subclasses say how the
    gradient becomes a map (`attribution`) and in what units."""

    uses = frozenset({"output"})
    units: str  # with {output} for "prob"/"logit"

    def __init__(self, output: str = "logit") -> None:
        self.output = output

    def validate(self, net: Backend, image: np.ndarray) -> None:
        self.output = check_output(self.output)

    def params(self) -> dict[str, Any]:
        return {"output": self.output}

    @abstractmethod
    def attribution(self, grads: np.ndarray, image: np.ndarray) -> np.ndarray:
        """(classes, H, W) float64 from the gradients (classes, C, H, W) and the image (C, H, W)."""

    def run(self, ctx: RunContext) -> MethodResult:
        grads, seconds = _input_gradients(ctx, self.output)
        return MethodResult(
            maps=self.attribution(grads, ctx.image.astype(np.float64)),
            backward_passes=1,
            timings={"sampling": 0.0, "forward": 0.0, "backward": seconds, "other": 0.0},
            params={"units": self.units.format(output=self.output)},
        )


class Saliency(InputGradientMethod):
    """Class saliency map (Simonyan et al., Table 2 row 1): R = max over channels of |∂f/∂x|.

    Simonyan et al. take the maximum magnitude across colour channels; so do we."""

    name = "saliency"
    units = "|d {output} / dx|, max over channels"

    def attribution(self, grads: np.ndarray, image: np.ndarray) -> np.ndarray:
        return np.abs(grads).max(axis=1)


class GradientXInput(InputGradientMethod):
    """Gradient × input: R_i = Σ_channels x_i ∂f/∂x_i (no baseline; the input itself)."""

    name = "gradient_x_input"
    units = "x · d {output} / dx, summed over channels"

    def attribution(self, grads: np.ndarray, image: np.ndarray) -> np.ndarray:
        return (grads * image[None]).sum(axis=1)


# -- Grad-CAM --------------------------------------------------------------------------------------
_NOT_CAM_LAYERS = {"Pooling", "Dropout", "Input", "Softmax", "Flatten", "Reshape", "Split", "Silence"}


def default_cam_blob(net: Backend) -> str:
    """The last convolutional feature map before the classifier: the last top of a non-pooling layer
    that comes before the first InnerProduct and is 4-D with more than one spatial position
    (VGG-16 conv5_3, AlexNet conv5, GoogLeNet inception_5b/output, LeNet conv2)."""
    candidates: list[str] = []
    for layer in net.net_param.layer:
        if layer.type == "InnerProduct":
            break
        if layer.type not in _NOT_CAM_LAYERS:
            candidates.extend(t for t in layer.top if t not in candidates)
    if candidates:
        probe = np.zeros((1, *net.input_shape), dtype=np.float32)
        shapes = {name: a.shape for name, a in net.blobs(probe, candidates).items()}
        for name in reversed(candidates):
            s = shapes[name]
            if len(s) == 4 and s[2] * s[3] > 1:
                return name
    raise ValueError(
        f"net {net.net_param.name!r} has no 4-D convolutional feature map before its first InnerProduct; "
        "pass blob=<name> to gradcam"
    )


def upsample_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, h, w) -> (n, height, width), bilinear with half-pixel centres (as torch's
    interpolate(..., mode="bilinear", align_corners=False) and OpenCV's resize)."""

    def axis(out: int, src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(out) + 0.5) * (src / out) - 0.5, 0.0)
        lo = np.minimum(np.floor(pos).astype(np.int64), src - 1)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, pos - lo

    maps = np.asarray(maps, dtype=np.float64)
    y0, y1, wy = axis(height, maps.shape[1])
    x0, x1, wx = axis(width, maps.shape[2])
    top = maps[:, y0][:, :, x0] * (1 - wx) + maps[:, y0][:, :, x1] * wx
    bottom = maps[:, y1][:, :, x0] * (1 - wx) + maps[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


class GradCAM(Method):
    """Grad-CAM (Selvaraju et al., paper Eq. 7-8): a_k = mean_ij ∂y/∂A^k_ij,
    map = ReLU(Σ_k a_k A^k), upsampled bilinearly to the input size.

    blob: the feature map (default `default_cam_blob`); output: y = the class logit (default, as
    Selvaraju et al.) or its probability."""

    name = "gradcam"
    uses = frozenset({"output"})

    def __init__(self, blob: str | None = None, output: str = "logit") -> None:
        self.blob = blob
        self.output = output

    def validate(self, net: Backend, image: np.ndarray) -> None:
        self.output = check_output(self.output)
        if self.blob is None:
            self.blob = default_cam_blob(net)
        known = {t for layer in net.net_param.layer for t in layer.top}
        if self.blob not in known:
            raise ValueError(
                f"blob {self.blob!r} is not in net {net.net_param.name!r}; known: {sorted(known)}"
            )

    def params(self) -> dict[str, Any]:
        return {"blob": self.blob, "output": self.output}

    def run(self, ctx: RunContext) -> MethodResult:
        t0 = time.perf_counter()
        n = ctx.classes.size
        act, grad = ctx.net.blob_gradient(
            np.repeat(ctx.image[None], n, axis=0), self.blob, ctx.classes, output=self.output
        )
        seconds = time.perf_counter() - t0
        if act.ndim != 4:
            raise ValueError(
                f"blob {self.blob!r} is {act.ndim}-D {act.shape}; Grad-CAM needs a 4-D feature map"
            )
        weights = grad.astype(np.float64).mean(axis=(2, 3))  # (n, K)
        cam = np.maximum(np.einsum("nk,nkij->nij", weights, act.astype(np.float64)), 0.0)
        _, h, w = ctx.image.shape
        return MethodResult(
            maps=upsample_bilinear(cam, h, w),
            backward_passes=1,
            timings={"sampling": 0.0, "forward": 0.0, "backward": seconds, "other": 0.0},
            params={"units": "ReLU(sum_k a_k A^k), bilinear upsampled", "blob_shape": list(act.shape[1:])},
        )
