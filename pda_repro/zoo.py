"""The model zoo: a registry by name of Caffe deploy nets and how to feed them.

Each entry says where the prototxt (and, where we have them, trained weights) live, what the input
looks like, how a photo is turned into that input (resize, crop, channel order, mean, scale), how
many classes there are, where their names are, and N, the training-set size used by PDA's Laplace
correction p <- (p*N + 1)/(N + K).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    prototxt: Path
    input_shape: tuple[int, int, int]  # (C, H, W)
    channel_order: str  # "BGR", "RGB" or "GRAY": the order of the input's channels
    mean: tuple[float, ...]  # per-channel mean subtracted, in channel_order, on the 0..255 scale
    scale: float = 1.0  # multiplied after subtracting the mean
    resize: int | None = None  # shorter side resized to this before the centre crop (None: straight to input)
    interpolation: str = "bilinear"  # "bilinear" or "bicubic"
    num_classes: int = 1000
    class_names: Path | None = None  # one name per line
    train_size: int = 100_000  # N of the Laplace correction (ILSVRC models: 100,000 as the original code)
    weights: Path | None = None  # default trained weights, if we have them
    weights_note: str = "random (seeded fillers)"
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def input_range(self) -> tuple[float, float]:
        """Lowest and highest value a preprocessed pixel can take (bounds for deep Taylor's z^B rule)."""
        lo = (0.0 - max(self.mean)) * self.scale
        hi = (255.0 - min(self.mean)) * self.scale
        return (lo, hi)


# ILSVRC-2012 BGR mean pixel of the Caffe Model Zoo nets (B, G, R).
_ILSVRC_MEAN_BGR = (104.0, 117.0, 123.0)

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> ModelSpec:
    """The spec registered under `name`; a KeyError suggests the closest known name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}; known models: {', '.join(names())}") from None
