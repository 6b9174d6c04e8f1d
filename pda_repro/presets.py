"""Preprocessing of models outside the zoo: a named preset, a small JSON/TOML file, or a dict.

Keys (all optional except where a preset gives them):

    crop            int or [H, W]: the centre crop = the model's input size
    resize          int (shorter side before the crop) or null (straight to the crop size)
    interpolation   "bilinear" | "bicubic" | "nearest" | "lanczos"
    channel_order   "RGB" | "BGR" | "GRAY"
    mean, std       per channel on the 0..1 scale, torchvision's convention: x = (pixel/255 - mean) / std
    scale           instead of std: mean is then on the 0..255 scale and x = (pixel - mean) * scale
    class_names     a file with one class name per line (relative to the JSON/TOML file's folder)
    train_size      N of PDA's Laplace correction (default 100,000)

Preset "imagenet" is torchvision's standard ImageNet evaluation: resize 256 (bilinear), centre crop
224, RGB, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), the ILSVRC-2012 class names.
The result is a zoo.ModelSpec (per-channel `scale` = 1 / (255 std)), which pda_repro.preprocess
and the samplers read as they read a zoo model's.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from pda_repro import zoo

IMAGENET = {
    "crop": 224,
    "resize": 256,
    "interpolation": "bilinear",
    "channel_order": "RGB",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "class_names": str(zoo.ILSVRC_CLASS_NAMES),
    "train_size": 100_000,
}
PRESETS: dict[str, dict[str, Any]] = {"imagenet": IMAGENET}
KEYS = (
    "crop",
    "resize",
    "interpolation",
    "channel_order",
    "mean",
    "std",
    "scale",
    "class_names",
    "train_size",
)


def read_file(path: str | Path) -> dict[str, Any]:
    """The preprocessing keys of a .json or .toml file (class_names made relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"preprocessing file {str(path)!r} not found (or a preset: {', '.join(PRESETS)})")
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(
            f"cannot read preprocessing file {str(path)!r}: {' '.join(str(exc).split())}"
        ) from None
    if not isinstance(values, dict):
        raise ValueError(f"preprocessing file {str(path)!r} must hold one object of keys {', '.join(KEYS)}")
    if isinstance(values.get("class_names"), str):
        values["class_names"] = str((path.parent / values["class_names"]).resolve())
    return values


def _pair(name: str, value: Any) -> tuple[int, int]:
    pair = (
        [value, value] if isinstance(value, int) else list(value) if isinstance(value, list | tuple) else []
    )
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"preprocessing {name} must be a positive int or [H, W], got {value!r}")
    return int(pair[0]), int(pair[1])


def _floats(name: str, value: Any, count: int) -> tuple[float, ...]:
    values = (
        [value]
        if isinstance(value, int | float)
        else list(value)
        if isinstance(value, list | tuple)
        else None
    )
    if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ValueError(f"preprocessing {name} must be a number or a list of numbers, got {value!r}")
    if len(values) not in (1, count):
        raise ValueError(
            f"preprocessing {name} has {len(values)} values, expected 1 or {count} (one per channel)"
        )
    return tuple(float(v) for v in values) * (count if len(values) == 1 else 1)


def spec_from(values: dict[str, Any], name: str = "model") -> zoo.ModelSpec:
    """A ModelSpec from preprocessing keys (see the module docstring); ValueError naming a bad key."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown preprocessing keys {', '.join(unknown)}; known: {', '.join(KEYS)}")
    order = str(values.get("channel_order", "RGB")).upper()
    if order not in ("RGB", "BGR", "GRAY"):
        raise ValueError(
            f"preprocessing channel_order must be RGB, BGR or GRAY, got {values['channel_order']!r}"
        )
    channels = 1 if order == "GRAY" else 3
    h, w = _pair("crop", values.get("crop", 224))
    resize = values.get("resize", None)
    if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool) or resize < min(h, w)):
        raise ValueError(
            f"preprocessing resize must be null or an int >= the crop {min(h, w)}, got {resize!r}"
        )
    interpolation = str(values.get("interpolation", "bilinear")).lower()
    if interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
        raise ValueError(
            f"preprocessing interpolation {interpolation!r} is not bilinear, bicubic, nearest or lanczos"
        )
    if "scale" in values and "std" in values:
        raise ValueError("preprocessing takes std (mean on 0..1) or scale (mean on 0..255), not both")
    if "scale" in values:
        mean = _floats("mean", values.get("mean", 0.0), channels)
        scale = _floats("scale", values["scale"], channels)
    else:
        mean = tuple(255.0 * m for m in _floats("mean", values.get("mean", 0.0), channels))
        std = _floats("std", values.get("std", 1.0), channels)
        if any(s <= 0 for s in std):
            raise ValueError(f"preprocessing std must be positive, got {values.get('std')!r}")
        scale = tuple(1.0 / (255.0 * s) for s in std)
    names = values.get("class_names")
    train_size = values.get("train_size", 100_000)
    if not isinstance(train_size, int) or isinstance(train_size, bool) or train_size < 1:
        raise ValueError(f"preprocessing train_size must be a positive int, got {train_size!r}")
    return zoo.ModelSpec(
        name=name, prototxt=Path(name), input_shape=(channels, h, w), channel_order=order, mean=mean,
        scale=scale if len(set(scale)) > 1 else scale[0], resize=resize, interpolation=interpolation,
        num_classes=0, class_names=Path(names) if names else None, train_size=int(train_size),
        weights_note="given", description="a PyTorch / ONNX model",
    )  # fmt: skip


def preprocessing(source: Any = "imagenet", name: str = "model", **overrides: Any) -> zoo.ModelSpec:
    """A ModelSpec from a preset name, a .json/.toml path, a dict of keys or a ModelSpec (as it is),
    with `overrides` (the same keys) laid over it."""
    if isinstance(source, zoo.ModelSpec) and not overrides:
        return source
    if isinstance(source, dict):
        values = dict(source)
    elif isinstance(source, str) and source in PRESETS:
        values = dict(PRESETS[source])
    elif isinstance(source, str | Path):
        values = read_file(source)
    else:
        raise ValueError(f"preprocess must be a preset ({', '.join(PRESETS)}), a .json/.toml file or a dict, "
                         f"got {type(source).__name__}")  # fmt: skip
    values.update({k: v for k, v in overrides.items() if v is not None})
    return spec_from(values, name)


def with_input_shape(spec: zoo.ModelSpec, shape: tuple[int, int, int]) -> zoo.ModelSpec:
    """The spec cropping to a model's (C, H, W); the resize keeps its ratio to the crop."""
    c, h, w = (int(v) for v in shape)
    if c != spec.input_shape[0]:
        raise ValueError(
            f"the preprocessing gives {spec.input_shape[0]} channels ({spec.channel_order}), the model takes {c}"
        )
    resize = spec.resize
    if resize is not None and (h, w) != tuple(spec.input_shape[1:]):
        resize = max(h, w, round(resize * min(h, w) / min(spec.input_shape[1:])))
    return replace(spec, input_shape=(c, h, w), resize=resize)
