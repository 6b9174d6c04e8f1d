"""Captum-style attribution classes over pda_repro.explain (the same window loop, no other).

    from pda_repro.attr import EfficientPDA
    explainer = EfficientPDA(model, sampler=gaussian)      # a Backend, nn.Module, .onnx, zoo name
    maps = explainer.attribute(inputs, target=None, window=10, outer=18, stride=1)

`inputs` is one C×H×W image or an N×C×H×W batch (torch tensor or numpy array, preprocessed for
the model); the result is a float32 torch tensor of the inputs' spatial shape, (H, W) or (N, H, W),
on the inputs' device: the map of `target` per image. target: an int (all images), a sequence or
tensor of N ints, or None (each image's predicted class).

Argument names follow Captum where they mean the same:

    Captum                               here
    forward_func / model                 model (anything pda_repro.load_model takes, or a Backend)
    inputs                               inputs
    target                               target (None: the predicted class, as Captum's default
                                         for classifiers; Captum itself needs it for N×K outputs)
    sliding_window_shapes (Occlusion)    window: k, a square k×k window on every channel
    strides (Occlusion)                  stride
    baselines (Occlusion)                baselines: the fill value (Occlusion only)
    perturbations_per_eval               perturbations_per_eval: windows per forward call (batch)
    show_progress                        show_progress
    LayerGradCam(model, layer)           LayerGradCam(model, layer): layer = a module name ("layer4")

PDA's own arguments keep their names: outer (l, the conditional sampler's patch), samples (S),
sampler (constructor), rng, train_size, inference, output. Captum returns attributions of the
inputs' full shape (one per channel); PDA's maps have one value per pixel, so the channel axis is
absent. Units are those of the method (weight of evidence in log2 odds for the PDA family).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pda_repro.backends.base import Backend


class Attribution:
    """One explanation method of pda_repro.methods.METHODS on one model (see the module docstring)."""

    method = ""
    fixed: dict[str, Any] = {}

    def __init__(self, model: Any, sampler: Any = None, **load_options: Any) -> None:
        from pda_repro.explain import load_model  # noqa: PLC0415

        self.net: Backend = model if isinstance(model, Backend) else load_model(model, **load_options)
        self.sampler = sampler

    def attribute(
        self,
        inputs: Any,
        target: int | Sequence[int] | torch.Tensor | None = None,
        *,
        show_progress: bool = False,
        perturbations_per_eval: int | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Maps of `target` for each image of `inputs` (see the module docstring)."""
        from pda_repro.explain import explain  # noqa: PLC0415

        images, single, device = _images(inputs, self.net.input_shape)
        targets = self._targets(images, target)
        if self.sampler is not None:
            options.setdefault("sampler", self.sampler)
        maps = [
            explain(
                self.net, image, method=self.method, classes=[int(t)], batch=perturbations_per_eval,
                progress=show_progress, **{**self.fixed, **options},
            ).maps[0]
            for image, t in zip(images, targets, strict=True)
        ]  # fmt: skip
        out = torch.from_numpy(np.stack(maps)).to(device)
        return out[0] if single else out

    def _targets(self, images: np.ndarray, target: Any) -> np.ndarray:
        n = images.shape[0]
        if target is None:
            return np.argmax(self.net.forward(images)[0], axis=1)
        values = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
        if not np.issubdtype(values.dtype, np.integer) or values.ndim > 1 or values.size not in (1, n):
            raise ValueError(f"target must be an int or {n} ints (one per image), got {target!r}")
        return np.broadcast_to(values.reshape(-1), (n,))


def _images(inputs: Any, input_shape: tuple[int, ...]) -> tuple[np.ndarray, bool, torch.device]:
    """(N×C×H×W float32 array, whether one C×H×W image was given, the device of the result)."""
    device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
    array = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    single = array.ndim == 3
    array = array[None] if single else array
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"inputs must be C×H×W or N×C×H×W with C×H×W = {tuple(input_shape)}, got {tuple(array.shape)}"
        )
    return np.ascontiguousarray(array, dtype=np.float32), single, device


class PredictionDifference(Attribution):
    """PDA, Algorithm 1 (Zintgraf et al.): S conditional samples per window."""

    method = "pda"


class EfficientPDA(Attribution):
    """Efficient PDA, Algorithm 2: the conditional mean per window, one evaluation."""

    method = "epda"


class SimplifiedPDA(Attribution):
    """The first-order approximation, Algorithm 3."""

    method = "simplified"


class Occlusion(Attribution):
    """Occlusion with a constant fill: `baselines` (default 0) is the fill value."""

    method = "occlusion"

    def attribute(self, inputs: Any, target: Any = None, *, baselines: float = 0.0, **options: Any):
        """As Attribution.attribute; baselines = the fill value (Captum's baselines, a scalar)."""
        return super().attribute(inputs, target, value=float(baselines), **options)


class Saliency(Attribution):
    """|d output / d input|, channels reduced as pda_repro.methods.gradients does."""

    method = "saliency"


class InputXGradient(Attribution):
    """Gradient × input summed over channels."""

    method = "gradient_x_input"


class LayerGradCam(Attribution):
    """Grad-CAM on the feature map `layer` (a blob name: a module name for PyTorch models)."""

    method = "gradcam"

    def __init__(self, model: Any, layer: str | None = None, **load_options: Any) -> None:
        super().__init__(model, **load_options)
        self.fixed = {"blob": layer} if layer is not None else {}


__all__ = [
    "Attribution",
    "EfficientPDA",
    "InputXGradient",
    "LayerGradCam",
    "Occlusion",
    "PredictionDifference",
    "Saliency",
    "SimplifiedPDA",
]
