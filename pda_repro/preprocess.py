"""Turn an image file into the input a zoo net expects, and back into something a person can look at.

The steps follow the model's :class:`~pda_repro.zoo.ModelSpec` (and the original PDA code's Caffe
pipeline): decode with Pillow (EXIF orientation honoured; greyscale, palette, CMYK, 16-bit and
transparent images converted to 8-bit RGB), resize the shorter side to ``spec.resize`` keeping the
aspect ratio (or, when ``spec.resize`` is None, straight to the input size), centre-crop to the input
H×W, reorder the channels (RGB, BGR or GRAY), subtract the mean on the 0..255 scale and multiply by
``spec.scale``. The cropped RGB image is kept for drawing the maps over.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ImageReadError",
    "PreprocessedImage",
    "center_crop_box",
    "deprocess",
    "load_image",
    "load_images",
    "read_rgb",
    "resize_size",
    "to_network_input",
]

# Formats we promise to read (Pillow decodes more; any it decodes is accepted).
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")

_CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
_RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "LANCZOS"}


class ImageReadError(ValueError):
    """An image file that is missing, unreadable, corrupt or of an unsupported kind (message names it)."""


@dataclass(frozen=True)
class PreprocessedImage:
    """One image ready for the net.

    x             C×H×W float32, the net's input (channel order, mean and scale of the spec applied)
    display       H×W×3 uint8 RGB, the same crop before the channel order/mean, for drawing maps over
    path          the source file
    original_size (height, width) of the decoded image after EXIF rotation, before resizing
    """

    x: np.ndarray
    display: np.ndarray
    path: Path
    original_size: tuple[int, int]


# --- decoding ------------------------------------------------------------------------------------


def _to_rgb(im: Any, background: tuple[int, int, int]) -> Any:
    """Any Pillow mode -> 8-bit RGB. Transparency is composited over `background`; 16-bit scaled down."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "RGBa", "PA") or (im.mode == "L" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        base = Image.new("RGBA", im.size, (*background, 255))
        im = Image.alpha_composite(base, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def read_rgb(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Decode an image file to an H×W×3 uint8 RGB array, EXIF orientation applied.

    Greyscale is replicated into three channels, palette/CMYK/YCbCr/LAB converted, 16-bit images scaled
    to 8 bit, and transparent pixels (RGBA, LA, palette transparency) composited over `background`.
    Multi-frame files (GIF, multi-page TIFF) give their first frame. Raises ImageReadError naming the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"image file not found: {str(path)!r}")
    if path.is_dir():
        raise ImageReadError(f"expected an image file, got a directory: {str(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im, background)
                arr = np.asarray(rgb, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {str(path)!r}: not an image format Pillow recognises "
            f"(supported: {', '.join(SUPPORTED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
            f"image {str(path)!r} is larger than the decoding limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            f"({_one_line(exc)}); raise it with --max-pixels N (API: PIL.Image.MAX_IMAGE_PIXELS = N)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(
            f"cannot read image {str(path)!r}: corrupt or truncated file ({reason})"
        ) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"cannot read image {str(path)!r}: decoded to an unusable shape {arr.shape}")
    return arr


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- geometry ------------------------------------------------------------------------------------


def resize_size(height: int, width: int, resize: int | None, out_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) after the resize step.

    resize=None: straight to the net's input size `out_hw`. Otherwise the shorter side becomes `resize`
    and the longer one ``int(resize * long / short)`` (torchvision's rounding), so the aspect ratio stays.
    """
    if resize is None:
        return int(out_hw[0]), int(out_hw[1])
    if resize < min(out_hw):
        raise ValueError(f"resize {resize} is smaller than the input size {out_hw[0]}x{out_hw[1]}")
    if height <= width:
        return int(resize), int(resize * width / height)
    return int(resize * height / width), int(resize)


def center_crop_box(height: int, width: int, out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the centred out_hw crop: top = (height - out_h) // 2, same for left."""
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if oh > height or ow > width:
        raise ValueError(f"crop {oh}x{ow} is larger than the resized image {height}x{width}")
    top, left = (height - oh) // 2, (width - ow) // 2
    return top, left, top + oh, left + ow


def _resize_rgb(rgb: np.ndarray, size_hw: tuple[int, int], interpolation: str) -> np.ndarray:
    from PIL import Image

    if (rgb.shape[0], rgb.shape[1]) == tuple(size_hw):
        return rgb
    try:
        resample = getattr(Image.Resampling, _RESAMPLE[interpolation.lower()])
    except KeyError:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; expected one of {', '.join(_RESAMPLE)}"
        ) from None
    im = Image.fromarray(rgb, mode="RGB").resize((size_hw[1], size_hw[0]), resample=resample)
    return np.asarray(im, dtype=np.uint8)


def _spec_input_hw(spec: Any) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in spec.input_shape)
    if len(shape) != 3:
        raise ValueError(f"spec.input_shape must be (C, H, W), got {spec.input_shape!r}")
    return shape  # type: ignore[return-value]


def to_network_input(display: np.ndarray, spec: Any) -> np.ndarray:
    """H×W×3 uint8 RGB crop -> C×H×W float32: channel order, then (pixel - mean) * scale (0..255 scale).

    GRAY uses Pillow's ITU-R 601-2 luma (L = R*299/1000 + G*587/1000 + B*114/1000, rounded).
    """
    order = str(spec.channel_order).upper()
    if order not in _CHANNEL_ORDERS:
        raise ValueError(f"unknown channel order {spec.channel_order!r}; expected one of {_CHANNEL_ORDERS}")
    channels = _spec_input_hw(spec)[0]
    if order == "GRAY":
        from PIL import Image

        planes = np.asarray(Image.fromarray(display, mode="RGB").convert("L"), dtype=np.float32)[None]
    else:
        planes = np.transpose(display, (2, 0, 1)).astype(np.float32)
        if order == "BGR":
            planes = planes[::-1]
    if planes.shape[0] != channels:
        raise ValueError(
            f"channel order {order} gives {planes.shape[0]} channels, the net expects {channels}"
        )
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1)
    if mean.size not in (1, channels):
        raise ValueError(f"spec.mean has {mean.size} values, expected 1 or {channels} (one per channel)")
    x = (planes - mean.reshape(-1, 1, 1)) * _scale(spec, channels).reshape(-1, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _scale(spec: Any, channels: int, dtype: Any = np.float32) -> np.ndarray:
    """spec.scale as an array of 1 or `channels` values (one float, or one per channel)."""
    scale = np.asarray(spec.scale, dtype=dtype).reshape(-1)
    if scale.size not in (1, channels):
        raise ValueError(f"spec.scale has {scale.size} values, expected 1 or {channels} (one per channel)")
    return scale


def deprocess(x: np.ndarray, spec: Any) -> np.ndarray:
    """Inverse of :func:`to_network_input`: C×H×W net input -> H×W×3 uint8 RGB (GRAY replicated)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"expected a C×H×W array, got shape {x.shape}")
    mean = np.asarray(spec.mean, dtype=np.float64).reshape(-1, 1, 1)
    planes = x / _scale(spec, x.shape[0], np.float64).reshape(-1, 1, 1) + mean
    order = str(spec.channel_order).upper()
    if order == "BGR":
        planes = planes[::-1]
    elif order == "GRAY":
        planes = np.repeat(planes[:1], 3, axis=0)
    rgb = np.clip(np.rint(planes), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.transpose(rgb, (1, 2, 0)))


# --- public entry points -------------------------------------------------------------------------


def load_image(path: str | Path, spec: Any) -> PreprocessedImage:
    """Read `path` and preprocess it for the net described by `spec` (a zoo ModelSpec or alike).

    Resize (shorter side to spec.resize, or straight to the input size when None, with
    spec.interpolation), centre crop to the input H×W, channel order, mean subtraction on the 0..255
    scale, times spec.scale. Raises ImageReadError for a file that cannot be read.
    """
    _, out_h, out_w = _spec_input_hw(spec)
    rgb = read_rgb(path)
    height, width = rgb.shape[:2]
    size = resize_size(height, width, spec.resize, (out_h, out_w))
    resized = _resize_rgb(rgb, size, getattr(spec, "interpolation", "bilinear"))
    top, left, bottom, right = center_crop_box(size[0], size[1], (out_h, out_w))
    display = np.ascontiguousarray(resized[top:bottom, left:right])
    return PreprocessedImage(
        x=to_network_input(display, spec), display=display, path=Path(path), original_size=(height, width)
    )


def load_images(paths: Iterable[str | Path] | Sequence[str | Path], spec: Any) -> np.ndarray:
    """Preprocess many images into one N×C×H×W float32 array (e.g. for fitting a sampler)."""
    arrays = [load_image(p, spec).x for p in paths]
    if not arrays:
        raise ValueError("no images given")
    return np.stack(arrays).astype(np.float32, copy=False)
