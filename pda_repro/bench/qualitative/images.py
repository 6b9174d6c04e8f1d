"""The images the qualitative figures explain and the samplers they are explained with: the real photos
(Figs 14, 15, 19), a crop of another photo of a Fig 14 class (Fig 17), one photo rotated, flipped and
cropped (Fig 18), the first MNIST test digit of each class (Fig 13), the conditional PatchGaussian fitted
on the photos and the marginal sampler over the MNIST training digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pda_repro.bench.qualitative.specs import PHOTO_CLASSES, Settings, Subject

__all__ = [
    "box_words",
    "crop_fraction",
    "invariance_subjects",
    "mnist_marginal",
    "mnist_subjects",
    "photo_sampler",
    "photo_subjects",
    "rotate_and_crop",
    "same_class_subjects",
]


def _resample(interpolation: str) -> Any:
    from PIL import Image

    return Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR


def rotate_and_crop(rgb: np.ndarray, angle: float, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Rotate an H×W×3 uint8 photo by `angle` degrees (counter-clockwise) about its centre, cut out the
    largest centred square that holds no pixel from outside the photo (side min(H, W) / (|cos| + |sin|)),
    and resize it to `size` (H, W)."""
    from PIL import Image

    resample = _resample(interpolation)
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if angle:
        im = im.rotate(angle, resample=resample, expand=False)
    h, w = rgb.shape[:2]
    theta = math.radians(angle)
    side = int(math.floor(min(h, w) / (abs(math.cos(theta)) + abs(math.sin(theta)))))
    top, left = (h - side) // 2, (w - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size[1], size[0]), resample=resample)
    return np.asarray(im, dtype=np.uint8)


def crop_fraction(
    rgb: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int], interpolation: str
) -> np.ndarray:
    """The part (left, top, right, bottom as fractions of the width/height) of a photo, resized to `size`."""
    from PIL import Image

    left, top, right, bottom = box
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ValueError(
            f"crop box must be fractions 0 <= left < right <= 1, 0 <= top < bottom <= 1; got {box}"
        )
    h, w = rgb.shape[:2]
    im = Image.fromarray(np.ascontiguousarray(rgb)).crop(
        (round(left * w), round(top * h), round(right * w), round(bottom * h))
    )
    return np.asarray(im.resize((size[1], size[0]), resample=_resample(interpolation)), dtype=np.uint8)


def box_words(box: tuple[float, float, float, float]) -> str:
    """A crop box (left, top, right, bottom fractions) in words: 'x 0.15-0.65, y 0.1-0.9'."""
    return "x {:g}-{:g}, y {:g}-{:g}".format(*np.asarray(box)[[0, 2, 1, 3]])


def photo_subjects(spec: Any, names: Sequence[str]) -> list[Subject]:
    """The named photos, preprocessed for the zoo model `spec` (resize, centre crop)."""
    from pda_repro.data import photo_paths
    from pda_repro.preprocess import load_image

    paths = photo_paths()
    missing = [n for n in names if n not in paths]
    if missing:
        raise ValueError(f"photos {missing} not found; available: {', '.join(paths)}")
    out = []
    for name in names:
        img = load_image(paths[name], spec)
        out.append(
            Subject(name, img.x, img.display, note=paths[name].name, expected_class=PHOTO_CLASSES.get(name))
        )
    return out


def invariance_subjects(spec: Any, settings: Settings) -> list[Subject]:
    """The paper's Fig 18 rows: original, rotated, flipped, cropped, rotated the other way."""
    from pda_repro.data import photo_paths
    from pda_repro.preprocess import load_image, read_rgb, to_network_input

    name = settings.invariance_photo
    path = photo_paths()[name]
    _, h, w = spec.input_shape
    original = load_image(path, spec).display
    rgb = read_rgb(path)
    a = settings.invariance_angle
    variants = [
        ("original", original, "original (resize 256, crop 224)"),
        (f"rotated_{a:+g}", rotate_and_crop(rgb, a, (h, w), spec.interpolation), f"rotated {a:+g}°"),
        ("flipped", np.ascontiguousarray(original[:, ::-1]), "flipped left-right"),
        (
            "cropped",
            crop_fraction(rgb, settings.invariance_crop, (h, w), spec.interpolation),
            f"cropped ({box_words(settings.invariance_crop)})",
        ),
        (f"rotated_{-a:+g}", rotate_and_crop(rgb, -a, (h, w), spec.interpolation), f"rotated {-a:+g}°"),
    ]
    return [
        Subject(key, to_network_input(disp, spec), disp, note=note, expected_class=PHOTO_CLASSES.get(name))
        for key, disp, note in variants
    ]


def same_class_subjects(spec: Any, settings: Settings) -> list[Subject]:
    """The paper's Fig 17: a Fig 14 photo and another photo of the same class (here a crop of a
    different photo that the net puts in that class)."""
    from pda_repro.data import photo_paths
    from pda_repro.preprocess import read_rgb, to_network_input

    paths = photo_paths()
    for name in (settings.same_class_of, settings.same_class_photo):
        if name not in paths:
            raise ValueError(f"photo {name!r} not found; available: {', '.join(paths)}")
    (first,) = photo_subjects(spec, [settings.same_class_of])
    _, h, w = spec.input_shape
    box = settings.same_class_crop
    display = crop_fraction(read_rgb(paths[settings.same_class_photo]), box, (h, w), spec.interpolation)
    second = Subject(
        f"{settings.same_class_photo}_crop",
        to_network_input(display, spec),
        display,
        note=f"{paths[settings.same_class_photo].name}, cropped",
        expected_class=PHOTO_CLASSES.get(settings.same_class_of),
    )
    return [first, second]


def mnist_subjects(spec: Any) -> list[Subject]:
    """The first test digit of each class 0..9."""
    from pda_repro.data import mnist
    from pda_repro.preprocess import to_network_input

    images, labels = mnist("test")
    out = []
    for digit in range(10):
        i = int(np.flatnonzero(labels == digit)[0])
        rgb = np.repeat(images[i][:, :, None], 3, axis=2)
        out.append(
            Subject(
                f"digit{digit}_test{i}",
                to_network_input(rgb, spec),
                rgb,
                note=f"MNIST test #{i}, label {digit}",
                expected_class=digit,
            )
        )
    return out


def mnist_marginal(spec: Any, window: int) -> Any:
    """Marginal sampling (the paper's MNIST sampler): each window filled with the same window of a
    training digit drawn at random from all 60,000, preprocessed for the zoo model `spec`."""
    from pda_repro.data import mnist
    from pda_repro.sampling import MarginalSampler

    images, _ = mnist("train")
    x = (images.astype(np.float32) - np.float32(spec.mean[0])) * np.float32(spec.scale)
    return MarginalSampler(x[:, None], window, mode="random")


def photo_sampler(model: str, window: int, outer: int, seed: int) -> Any:
    """The conditional PatchGaussian (paper Sec. 3.2, Eq. 8) fitted on all real photos: the harness's
    cached fit (pda_repro.bench.inputs.model_sampler), shared with the benchmarks."""
    from pda_repro import zoo
    from pda_repro.bench.inputs import model_sampler

    return model_sampler(zoo.get(model), model, window, outer, seed)
