"""What the qualitative figures are made of: the images explained, the method runs (one column each), the
image sets that group them on one model, the figures drawn from them, and the knobs of the paper's setup.

Everything here is plain data; `pda_repro.bench.qualitative.paper` fills it in for the paper's figures,
`maps` computes what it describes and `render` draws what `maps` stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FIGURE_KEYS",
    "PHOTO_CLASSES",
    "UNITS_SHORT",
    "FigureSpec",
    "ImageSet",
    "MethodRun",
    "SamplerSpec",
    "Settings",
    "Setup",
    "Subject",
]

# Photos EfficientNet-Lite0 classifies correctly (checked on this repo's converted weights) and the
# ImageNet class each one should get: 967 espresso, 950 orange, 335 fox squirrel, 372 baboon, 805 soccer ball.
PHOTO_CLASSES = {"coffee": 967, "orange": 950, "squirrel_cls": 335, "baboon": 372, "messi5": 805}

FIGURE_KEYS = ("fig13", "fig14", "fig15", "fig17", "fig18", "fig19", "baselines")

# The colour-bar label of each method's maps.
UNITS_SHORT = {
    "pda": "WE (log2 odds)",
    "epda": "WE (log2 odds)",
    "epda_sampled": "WE (log2 odds)",
    "occlusion": "WE (log2 odds)",
    "simplified": "Δp (1st-order, Eq. 38)",
    "saliency": "|∂f/∂x| (max over channels)",
    "gradient_x_input": "Σ_c x·∂f/∂x",
    "gradcam": "Grad-CAM (ReLU)",
    "deep_taylor": "relevance (Σ = logit)",
}


@dataclass(frozen=True)
class Subject:
    """One explained image: a file-safe name, the net's input x (C×H×W float32) and what is drawn
    under the maps (H×W×3 uint8). `note` says what the image is (e.g. 'rotated +15°')."""

    name: str
    x: np.ndarray
    display: np.ndarray
    note: str = ""
    expected_class: int | None = None


@dataclass(frozen=True, kw_only=True)
class MethodRun:
    """One method with its settings, as a column of the figures. `key` names its .npz file."""

    key: str
    method: str
    label: str
    window: int | None = None
    outer: int | None = None
    samples: int | None = None
    stride: int | None = None
    sampler: str | None = None  # key of ImageSet.samplers
    options: dict[str, Any] = field(default_factory=dict)
    may_fail: bool = False  # a ValueError from explain() is stored (and drawn) instead of raised

    def explain_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of explain() this run sets (sampler, class and seed aside)."""
        out: dict[str, Any] = {}
        for name in ("window", "outer", "samples", "stride"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return {**out, **self.options}


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler built lazily (fitting can take a while) and described in words for the JSON."""

    description: str
    build: Callable[[], Any]


@dataclass(kw_only=True)
class ImageSet:
    """A model and the images explained on it, with the method runs its figures need."""

    name: str  # directory under results/qualitative/
    model: str  # words for the figures, e.g. "EfficientNet-Lite0 (Caffe prototxt, torch backend)"
    weights: str  # words
    net: Callable[[], Any]  # -> Backend
    subjects: Callable[[], list[Subject]]
    class_names: Callable[[], list[str]]
    runs: dict[str, MethodRun]
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    weights_file: Path | None = None
    batch: int = 160
    train_size: int | None = None  # None: explain()'s default (the zoo spec's N)
    class_from: str | None = None  # explain this subject's predicted class for every subject (Fig 18)
    checkpoints: bool = False  # pass a checkpoint path to explain() for window methods
    notes: dict[str, str] = field(default_factory=dict)  # e.g. {"stride": "why this stride"}


@dataclass(frozen=True, kw_only=True)
class FigureSpec:
    """One PNG: `layout` "pairs" (input | map | overlay | map | overlay ...) or "grid" (input | maps)."""

    name: str  # PNG / JSON stem
    key: str  # the name --only takes
    image_set: str
    layout: str
    columns: tuple[str, ...]  # MethodRun keys
    title: str
    caption: str
    notes: dict[str, str] = field(default_factory=dict)  # override/extend the image set's notes


@dataclass
class Setup:
    """The image sets (by name) and the figures drawn from them."""

    image_sets: dict[str, ImageSet]
    figures: list[FigureSpec]


@dataclass(frozen=True)
class Settings:
    """The knobs of the default (paper) setup."""

    photos: tuple[str, ...] = tuple(PHOTO_CLASSES)
    window: int = 10
    outer: int = 18
    samples: int = 10
    photo_stride: int = 5
    full_stride: int = 1  # Fig 19: efficient PDA and its simplified version at full resolution
    same_class_photo: str = "fruits"  # Fig 17: another photo of a Fig 14 class ...
    same_class_crop: tuple[float, float, float, float] = (0.15, 0.1, 0.65, 0.9)  # ... cut to the orange
    same_class_of: str = "orange"  # ... the Fig 14 row it is compared with
    invariance_photo: str = "baboon"
    invariance_stride: int = 5
    invariance_angle: float = 15.0
    invariance_crop: tuple[float, float, float, float] = (0.3, 0.0, 1.0, 0.7)  # left, top, right, bottom
    mnist_window: int = 4
    mnist_stride: int = 1
    mnist_samples: int = 10
    photo_batch: int = 4
    mnist_batch: int = 500
    backend: str = "torch"
    device: str = "cpu"  # "cuda": e.g. stride-1 PDA maps on a GPU (with photo_batch 160)
    seed: int = 0
