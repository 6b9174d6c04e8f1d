"""The paper's qualitative figures (Figs 13, 14, 15, 17, 18, 19) and a baseline comparison: computed once
into results/qualitative/ (compressed .npz maps + one JSON of settings per figure), drawn from those data only.

    python -m pda_repro.bench.qualitative compute [--force] [--only fig13,fig14,...] [--subjects a,b]
    python -m pda_repro.bench.qualitative render

RENDER ENTRY POINT for `pda-repro figures` (harness engineer, pda_repro/bench/figures.py)::

    from pda_repro.bench.qualitative import render_qualitative
    pngs = render_qualitative(results_dir)   # list[Path] written to <results_dir>/figures/

`render_qualitative` reads only <results_dir>/qualitative/ -- it never loads a net and never recomputes a
map -- and skips (with a note in `notes`, if a list is passed) every figure whose data are missing.

Figures (PNG stem = JSON stem under results/qualitative/):
  fig13_mnist                   MNIST, first test digit of each class 0-9: input | PDA | overlay | efficient
                                PDA | overlay; k=4×4, marginal sampling over the training digits, S=10, stride 1
  fig14_efficientnet_lite0      five correctly classified real photos: PDA vs efficient PDA (k=10, l=18, S=10,
                                conditional PatchGaussian fitted on the real photos), stride 5
  fig15_efficientnet_lite0      PDA vs efficient PDA with the conditional mean replaced by the mean of 10
                                samples, stride 5
  fig17_efficientnet_lite0_same_class   efficient PDA on the Fig 14 orange and on another orange (a crop of
                                opencv-doc's fruits.jpg), stride 5
  fig18_efficientnet_lite0_invariance   one photo rotated / flipped / cropped, efficient-PDA maps, stride 5
  fig19_efficientnet_lite0      efficient PDA vs the simplified variant (Algorithm 3), stride 1
  baselines_efficientnet_lite0  saliency, gradient×input, Grad-CAM, deep Taylor (n/a: see the figure),
                                occlusion (stride 5)
  baselines_mnist               the same baselines on the MNIST digits (deep Taylor applies to LeNet)

Data: results/qualitative/<image set>/<subject>/input.npz (display image, class probabilities) and
<run>.npz (one map plus a JSON `meta` string: the request that made it, the explain() params, wall and
CPU seconds). A run whose file exists with the same request is skipped (resume per photo and method);
--force recomputes. Every file is written atomically (temp file + os.replace). `--subjects` shares the
work out among processes (one BLAS thread each beats one process with two threads on this CPU); a
final run without it writes the JSONs.

Why stride 5 for PDA on EfficientNet-Lite0: a stride-1 PDA map of a 224×224 photo is 215² windows ×
S=10 = 462,250 forward passes. Measured on this project's shared 2-core CPU (AMD EPYC, torch backend,
1 thread): 25 ms CPU per image for a forward batch of 4, 26-33 ms per image in the PDA loop (sampling
included), i.e. ~2 h of the whole machine per photo, ten for the five photos -- more than a working
session, and no GPU was lent to the sessions that made these figures. Figures 14/15 and the occlusion
baseline therefore compare the methods at stride 5 (43² = 1,849 windows per photo, each pixel inside up
to 4 windows); efficient PDA needs S× fewer passes (46,225 per photo at stride 1), so Fig 19 shows it and
the simplified variant at full resolution. The stride and this reason are written on every figure and
in its JSON; the compute cost of every map is stored beside it (`cpu_seconds`, `forward_passes`).
Measured for the committed maps (two processes of one thread each on the 2-core machine): PDA at
stride 5 450-490 s CPU per photo, efficient PDA / its sampled variant / occlusion at stride 5 ~45 s
each, efficient PDA at stride 1 1,250-1,450 s, the simplified variant at stride 1 0.3 s.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.results import RESULTS_DIR, atomic_write_bytes, atomic_write_json
from pda_repro.explain import explain, load_model
from pda_repro.grid import WindowGrid
from pda_repro.io import file_digest
from pda_repro.paths import cache_dir

__all__ = [
    "FIGURE_KEYS",
    "FigureSpec",
    "ImageSet",
    "MethodRun",
    "SamplerSpec",
    "Settings",
    "Subject",
    "compute",
    "coverage_mask",
    "default_setup",
    "main",
    "render_qualitative",
    "rotate_and_crop",
]

QUALITATIVE_DIRNAME = "qualitative"
FIGURES_DIRNAME = "figures"
FORMAT = 1

# Photos EfficientNet-Lite0 classifies correctly (checked on this repo's converted weights) and the
# ImageNet class each one should get: 967 espresso, 950 orange, 335 fox squirrel, 372 baboon, 805 soccer ball.
PHOTO_CLASSES = {"coffee": 967, "orange": 950, "squirrel_cls": 335, "baboon": 372, "messi5": 805}
INVARIANCE_PHOTO = "baboon"

MEASURED_FORWARD = (
    "~25-33 ms CPU per image (forward batch of 4 / PDA loop with sampling; torch backend, 1 thread, "
    "measured on the shared 2-core AMD EPYC CPU this project runs on)"
)

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


# --------------------------------------------------------------------------------------------------
# What is computed
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """One explained image: a file-safe name, the net's input x (C×H×W float32) and what is drawn
    under the maps (H×W×3 uint8). `note` says what the image is (e.g. 'rotated +15°')."""

    name: str
    x: np.ndarray
    display: np.ndarray
    note: str = ""
    expected_class: int | None = None


@dataclass(frozen=True)
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


@dataclass
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


@dataclass(frozen=True)
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
    invariance_photo: str = INVARIANCE_PHOTO
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


FIGURE_KEYS = ("fig13", "fig14", "fig15", "fig17", "fig18", "fig19", "baselines")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def rotate_and_crop(rgb: np.ndarray, angle: float, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Rotate an H×W×3 uint8 photo by `angle` degrees (counter-clockwise) about its centre, cut out the
    largest centred square that holds no pixel from outside the photo (side min(H, W) / (|cos| + |sin|)),
    and resize it to `size` (H, W)."""
    from PIL import Image

    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
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
    resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    im = Image.fromarray(np.ascontiguousarray(rgb)).crop(
        (round(left * w), round(top * h), round(right * w), round(bottom * h))
    )
    return np.asarray(im.resize((size[1], size[0]), resample=resample), dtype=np.uint8)


def _photo_subjects(spec: Any, names: Sequence[str]) -> list[Subject]:
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


def _invariance_subjects(spec: Any, settings: Settings) -> list[Subject]:
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
            f"cropped ({_box_words(settings.invariance_crop)})",
        ),
        (f"rotated_{-a:+g}", rotate_and_crop(rgb, -a, (h, w), spec.interpolation), f"rotated {-a:+g}°"),
    ]
    return [
        Subject(key, to_network_input(disp, spec), disp, note=note, expected_class=PHOTO_CLASSES.get(name))
        for key, disp, note in variants
    ]


def _box_words(box: tuple[float, float, float, float]) -> str:
    """A crop box (left, top, right, bottom fractions) in words: 'x 0.15-0.65, y 0.1-0.9'."""
    return "x {:g}-{:g}, y {:g}-{:g}".format(*np.asarray(box)[[0, 2, 1, 3]])


def _same_class_subjects(spec: Any, settings: Settings) -> list[Subject]:
    """The paper's Fig 17: a Fig 14 photo and another photo of the same class (here a crop of a
    different photo that the net puts in that class)."""
    from pda_repro.data import photo_paths
    from pda_repro.preprocess import read_rgb, to_network_input

    paths = photo_paths()
    for name in (settings.same_class_of, settings.same_class_photo):
        if name not in paths:
            raise ValueError(f"photo {name!r} not found; available: {', '.join(paths)}")
    (first,) = _photo_subjects(spec, [settings.same_class_of])
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


def _mnist_subjects(spec: Any) -> list[Subject]:
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


def _mnist_marginal(spec: Any, window: int) -> Any:
    from pda_repro.data import mnist
    from pda_repro.sampling import MarginalSampler

    images, _ = mnist("train")
    x = (images.astype(np.float32) - np.float32(spec.mean[0])) * np.float32(spec.scale)
    return MarginalSampler(x[:, None], window, mode="random")


def _photo_sampler(model: str, window: int, outer: int, seed: int) -> Any:
    """The conditional PatchGaussian fitted on all real photos (the harness's cached fit, shared)."""
    from pda_repro import zoo
    from pda_repro.bench.inputs import model_sampler

    class _Context:  # what model_sampler reads of a BenchContext
        def __init__(self) -> None:
            self.seed = seed

        def spec(self, name: str) -> Any:
            return zoo.get(name)

    return model_sampler(_Context(), model, window, outer)


# --------------------------------------------------------------------------------------------------
# The default (paper) setup
# --------------------------------------------------------------------------------------------------
def default_setup(settings: Settings | None = None) -> Setup:
    """Image sets and figures of the paper reproduction (see the module docstring)."""
    from pda_repro import zoo
    from pda_repro.data import imagenet_class_names, photo_paths

    s = settings or Settings()
    eff = zoo.get("efficientnet_lite0")
    mn = zoo.get("mnist")

    def imagenet_short() -> list[str]:
        return [n.split(",")[0].strip() for n in imagenet_class_names()]

    n_photos = len(photo_paths())
    photo_gauss = SamplerSpec(
        f"PatchGaussian(k={s.window}, l={s.outer}, 3 channels jointly) fitted on {n_photos} real photos "
        f"(scikit-image, matplotlib, opencv-doc) preprocessed for efficientnet_lite0; 20,000 patches, seed "
        f"{s.seed} (pda_repro.bench.inputs.model_sampler, cached)",
        lambda: _photo_sampler("efficientnet_lite0", s.window, s.outer, s.seed),
    )
    k, l, S, st, full = s.window, s.outer, s.samples, s.photo_stride, s.full_stride  # noqa: E741
    photo_runs = {
        "pda": MethodRun("pda", "pda", "PDA (Alg. 1)", k, l, S, st, "gauss"),
        "epda": MethodRun("epda", "epda", "efficient PDA (Alg. 2)", k, l, None, st, "gauss"),
        "epda_sampled": MethodRun(
            "epda_sampled", "epda_sampled", f"efficient PDA, mean of {S} samples", k, l, S, st, "gauss"
        ),
        "epda_full": MethodRun("epda_full", "epda", "efficient PDA (Alg. 2)", k, l, None, full, "gauss"),
        "simplified_full": MethodRun(
            "simplified_full", "simplified", "simplified (Alg. 3)", k, l, None, full, "gauss"
        ),
        "saliency": MethodRun("saliency", "saliency", "saliency"),
        "gradient_x_input": MethodRun("gradient_x_input", "gradient_x_input", "gradient × input"),
        "gradcam": MethodRun("gradcam", "gradcam", "Grad-CAM"),
        "deep_taylor": MethodRun("deep_taylor", "deep_taylor", "deep Taylor", may_fail=True),
        "occlusion": MethodRun(
            "occlusion", "occlusion", "occlusion (grey)", k, None, None, st, None, {"value": 0.0}
        ),
    }
    tiling = (
        " (= k, non-overlapping windows)" if st == k else f" (each pixel in up to {(k // st) ** 2} windows)"
    )
    side = int(eff.input_shape[-1])  # 224: square inputs

    def n_windows(stride: int) -> int:
        return WindowGrid(side, side, k, stride).n_windows

    def uncovered(stride: int) -> int:  # pixel rows/columns at the far edges that no window reaches
        return (side - k) % stride

    pda_hours = n_windows(1) * S * 0.033 / 3600  # CPU hours of one stride-1 PDA map (33 ms per image)
    where = "CPU" if s.device == "cpu" else s.device.upper()
    stride_reason = (
        f"stride {st}{tiling} for every method of the figure: stride 1 would be "
        f"{n_windows(1) * S:,} forward passes per photo for PDA; at {MEASURED_FORWARD} that is "
        f"~{pda_hours:.1f} h CPU per photo ({len(s.photos)} photos: "
        f"~{len(s.photos) * pda_hours / 2:.0f} h of both cores, more than a "
        f"working session; no GPU was lent to the sessions that made these figures). At stride {st}: "
        f"{n_windows(st) * S:,} forward passes per photo. "
        + (
            f"The last {uncovered(st)} pixel rows/columns are covered by no window (grey in the maps)."
            if uncovered(st)
            else "Every pixel is covered."
        )
        if st > 1
        else f"stride 1: full resolution ({n_windows(1) * S:,} forward passes per photo for PDA), "
        f"computed on {where}"
    )
    full_reason = (
        f"stride {full}: efficient PDA needs one forward pass per window ({n_windows(full):,} per photo at "
        f"this stride; {MEASURED_FORWARD}), the simplified variant one forward and one backward pass in "
        "all, so both are shown at full resolution (PDA, S times dearer, is not: see Figs 14/15)."
    )
    vgg_note = (
        "the paper explains VGG16 with a sampler fitted on the 50,000 ILSVRC validation images; neither "
        "VGG16's trained weights nor ILSVRC images are reachable here, so the ImageNet-trained "
        "EfficientNet-Lite0 and the real photos shipped with scikit-image/matplotlib/opencv-doc stand in"
    )
    epda_fine = MethodRun("epda", "epda", "efficient PDA (Alg. 2)", k, l, None, s.invariance_stride, "gauss")

    def photo_set(
        name: str, subjects: Callable[[], list[Subject]], runs: dict[str, MethodRun], **extra: Any
    ) -> ImageSet:
        """An image set of real photos explained on EfficientNet-Lite0 with the conditional sampler."""
        return ImageSet(
            name=name,
            model=f"EfficientNet-Lite0 converted to Caffe ({s.backend} backend, {where})",
            weights=eff.weights_note,
            net=lambda: load_model(
                "efficientnet_lite0", backend=s.backend, device=s.device, batch=s.photo_batch
            ),
            subjects=subjects,
            class_names=imagenet_short,
            runs=runs,
            samplers={"gauss": photo_gauss},
            weights_file=eff.weights,
            batch=s.photo_batch,
            checkpoints=True,
            **extra,
        )

    sets = {
        "efficientnet_lite0": photo_set(
            "efficientnet_lite0",
            lambda: _photo_subjects(eff, s.photos),
            photo_runs,
            notes={"stride": stride_reason, "model": vgg_note},
        ),
        "efficientnet_lite0_same_class": photo_set(
            "efficientnet_lite0_same_class",
            lambda: _same_class_subjects(eff, s),
            {"epda": epda_fine},
            notes={
                "stride": f"stride {s.invariance_stride}, as Fig. 18",
                "photos": (
                    f"the paper shows a second husky; no second photo of a Fig. 14 class is reachable here, "
                    f"so a part of another photo ({s.same_class_photo}) that the net classifies as "
                    f"{s.same_class_of} stands in, beside the Fig. 14 {s.same_class_of} photo"
                ),
                "model": vgg_note,
            },
        ),
        "efficientnet_lite0_invariance": photo_set(
            "efficientnet_lite0_invariance",
            lambda: _invariance_subjects(eff, s),
            {"epda": epda_fine},
            class_from="original",
            notes={
                "stride": (
                    f"stride {s.invariance_stride}: efficient PDA needs one forward pass per window "
                    f"({n_windows(s.invariance_stride):,} per image at this stride; {MEASURED_FORWARD}). "
                    f"The last {uncovered(s.invariance_stride)} pixel rows/columns are covered by no window (grey)."
                ),
                "class": "every row explains the class predicted for the original photo",
                "model": vgg_note,
            },
        ),
        "mnist": ImageSet(
            name="mnist",
            model=f"MNIST LeNet (2 conv, 2 max-pool, 2 FC; {s.backend} backend, {where})",
            weights=mn.weights_note,
            net=lambda: load_model("mnist", backend=s.backend, device=s.device, batch=s.mnist_batch),
            subjects=lambda: _mnist_subjects(mn),
            class_names=lambda: [str(d) for d in range(10)],
            runs={
                "pda": MethodRun(
                    "pda",
                    "pda",
                    "PDA (Alg. 1)",
                    s.mnist_window,
                    s.mnist_window + 8,
                    s.mnist_samples,
                    s.mnist_stride,
                    "marginal",
                ),
                "epda": MethodRun(
                    "epda",
                    "epda",
                    "efficient PDA (Alg. 2)",
                    s.mnist_window,
                    s.mnist_window + 8,
                    None,
                    s.mnist_stride,
                    "marginal",
                ),
                "saliency": photo_runs["saliency"],
                "gradient_x_input": photo_runs["gradient_x_input"],
                "gradcam": photo_runs["gradcam"],
                "deep_taylor": MethodRun("deep_taylor", "deep_taylor", "deep Taylor"),
                "occlusion": MethodRun(
                    "occlusion",
                    "occlusion",
                    "occlusion (grey 0.5)",
                    s.mnist_window,
                    None,
                    None,
                    s.mnist_stride,
                    None,
                    {"value": 0.5},
                ),
            },
            samplers={
                "marginal": SamplerSpec(
                    f"MarginalSampler(k={s.mnist_window}, mode='random'): each window filled with the same "
                    "window of a training digit drawn at random from all 60,000 (marginal sampling, as the "
                    "paper); efficient PDA uses their mean at that location",
                    lambda: _mnist_marginal(mn, s.mnist_window),
                )
            },
            weights_file=mn.weights,
            batch=s.mnist_batch,
            notes={"outer": "outer l is not used by marginal sampling (it only conditions the Gaussian)"},
        ),
    }
    pda_common = f"k={k}×{k}, l={l}×{l}, S={S} samples per window, stride {st}"
    figures = [
        FigureSpec(
            "fig13_mnist",
            "fig13",
            "mnist",
            "pairs",
            ("pda", "epda"),
            "Fig. 13: MNIST — PDA (Alg. 1) vs efficient PDA (Alg. 2)",
            f"window {s.mnist_window}×{s.mnist_window}, marginal sampling over the MNIST training digits, "
            f"S={s.mnist_samples} (PDA), stride {s.mnist_stride}; class = the predicted class.",
        ),
        FigureSpec(
            "fig14_efficientnet_lite0",
            "fig14",
            "efficientnet_lite0",
            "pairs",
            ("pda", "epda"),
            "Fig. 14: PDA (Alg. 1) vs efficient PDA (Alg. 2)",
            f"{pda_common}; conditional sampler; class = the predicted (correct) class.",
        ),
        FigureSpec(
            "fig15_efficientnet_lite0",
            "fig15",
            "efficientnet_lite0",
            "pairs",
            ("pda", "epda_sampled"),
            "Fig. 15: PDA vs efficient PDA with the conditional mean replaced by the empirical mean of "
            f"{S} samples",
            f"{pda_common}; conditional sampler; class = the predicted (correct) class.",
        ),
        FigureSpec(
            "fig19_efficientnet_lite0",
            "fig19",
            "efficientnet_lite0",
            "pairs",
            ("epda_full", "simplified_full"),
            "Fig. 19: efficient PDA (Alg. 2) vs its simplified version (Alg. 3, one backward pass)",
            f"k={k}×{k}, l={l}×{l}, stride {full}; simplified = first-order difference of P(c|x) (Eq. 38, "
            "not log-odds).",
            notes={"stride": full_reason},
        ),
        FigureSpec(
            "fig17_efficientnet_lite0_same_class",
            "fig17",
            "efficientnet_lite0_same_class",
            "pairs",
            ("epda",),
            f"Fig. 17: efficient PDA on another photo of a Fig. 14 class ({s.same_class_of})",
            f"k={k}×{k}, l={l}×{l}, stride {s.invariance_stride}; rows: the Fig. 14 photo, then a crop of "
            f"{s.same_class_photo} ({_box_words(s.same_class_crop)} of the photo); class = the predicted "
            "(correct) class.",
        ),
        FigureSpec(
            "fig18_efficientnet_lite0_invariance",
            "fig18",
            "efficientnet_lite0_invariance",
            "pairs",
            ("epda",),
            "Fig. 18: invariance — efficient PDA on a rotated, flipped and cropped photo",
            f"k={k}×{k}, l={l}×{l}, stride {s.invariance_stride}; rows: original, rotated "
            f"{s.invariance_angle:+g}°, flipped, cropped, rotated {-s.invariance_angle:+g}° (rotations cut the "
            "largest square without empty corners).",
        ),
        FigureSpec(
            "baselines_efficientnet_lite0",
            "baselines",
            "efficientnet_lite0",
            "grid",
            ("epda", "saliency", "gradient_x_input", "gradcam", "deep_taylor", "occlusion"),
            "Baselines on the Fig. 14 photos (efficient PDA for reference)",
            f"gradients of the class logit; Grad-CAM on the last conv feature map; occlusion: k={k}×{k} grey "
            f"(0) windows, stride {st}, same WE as PDA. Deep Taylor (z+/zB rules) does not apply to "
            "EfficientNet-Lite0 (BatchNorm/Scale, ReLU6, Eltwise): it is shown on MNIST (baselines_mnist.png).",
        ),
        FigureSpec(
            "baselines_mnist",
            "baselines",
            "mnist",
            "grid",
            ("pda", "epda", "saliency", "gradient_x_input", "gradcam", "deep_taylor", "occlusion"),
            "Baselines on the Fig. 13 digits (deep Taylor shown here: it needs a ReLU/max-pool/linear net)",
            f"PDA/efficient PDA as Fig. 13; gradients of the class logit; Grad-CAM on conv2; deep Taylor z+/zB "
            f"of the logit; occlusion: {s.mnist_window}×{s.mnist_window} windows filled with 0.5, stride "
            f"{s.mnist_stride}, WE as PDA.",
        ),
    ]
    return Setup(sets, figures)


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
def _atomic_npz(path: Path, **arrays: Any) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _read_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        out = {name: data[name] for name in data.files}
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    return out


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _array_digest(a: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(a)
    return hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode() + a.tobytes(), digest_size=12).hexdigest()


def _subject_seed(seed: int, *words: str) -> np.random.Generator:
    """A generator for one (set, subject, run): the same map whatever else is computed or in what order."""
    return np.random.default_rng([seed, *(zlib.crc32(w.encode()) for w in words)])


# --------------------------------------------------------------------------------------------------
# Compute
# --------------------------------------------------------------------------------------------------
@dataclass
class ComputeReport:
    computed: list[str] = field(default_factory=list)  # "<set>/<subject>/<run>"
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # may_fail runs that raised (stored as errors)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    json_files: list[Path] = field(default_factory=list)


def _select(setup: Setup, only: Sequence[str] | None) -> list[FigureSpec]:
    if not only:
        return list(setup.figures)
    known = {f.key for f in setup.figures} | {f.name for f in setup.figures}
    bad = [o for o in only if o not in known]
    if bad:
        raise ValueError(f"unknown figure(s) {bad}; known: {', '.join(sorted(known))}")
    return [f for f in setup.figures if f.key in only or f.name in only]


def compute(
    setup: Setup | None = None,
    only: Sequence[str] | None = None,
    results_dir: str | Path = RESULTS_DIR,
    force: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    subjects: Sequence[str] | None = None,
) -> ComputeReport:
    """Compute (or reuse) every map the selected figures need, then write one JSON per figure.

    Each run's map is saved as soon as it is done; a run whose .npz exists with the same request
    (method, settings, sampler, class, input image, weights) is skipped unless `force`.
    `subjects` restricts the work to those images (to share it out among processes); the figure
    JSONs are then not written: a later call without `subjects` reuses the maps and writes them."""
    setup = setup or default_setup(Settings(seed=seed))
    root = Path(results_dir) / QUALITATIVE_DIRNAME
    figures = _select(setup, only)
    say = log or (lambda _msg: None)
    report = ComputeReport()
    started, cpu_started = time.perf_counter(), time.process_time()
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir is not None else _default_checkpoint_dir()
    by_set: dict[str, list[FigureSpec]] = {}
    for fig in figures:
        by_set.setdefault(fig.image_set, []).append(fig)
    subjects_of = {name: setup.image_sets[name].subjects() for name in by_set}  # images read once
    wanted = None if subjects is None else set(subjects)
    if wanted is not None:
        known = {sub.name for subs in subjects_of.values() for sub in subs}
        unknown = sorted(wanted - known)
        if unknown or not wanted:
            raise ValueError(
                f"unknown subject(s) {unknown or '(none given)'}; the selected figures have: {', '.join(sorted(known))}"
            )
    for set_name, figs in by_set.items():
        image_set = setup.image_sets[set_name]
        keys: list[str] = []
        for fig in figs:
            keys.extend(k for k in fig.columns if k not in keys)
        names = _compute_set(
            image_set,
            subjects_of[set_name],
            keys,
            root / set_name,
            force,
            progress,
            ckpt_root,
            seed,
            say,
            report,
            wanted,
        )
        if wanted is None:
            for fig in figs:
                report.json_files.append(_write_figure_json(fig, image_set, names, root, seed))
    report.wall_seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu_started
    say(
        f"qualitative: {len(report.computed)} maps computed, {len(report.skipped)} reused, "
        f"{len(report.failed)} not applicable; {report.wall_seconds:.0f} s wall, {report.cpu_seconds:.0f} s CPU"
    )
    return report


def _default_checkpoint_dir() -> Path:
    return cache_dir("qualitative-checkpoints")


class _Lazy:
    """Loads the net, the weights hash and the samplers of an image set only when a map is missing."""

    def __init__(self, image_set: ImageSet) -> None:
        self.image_set = image_set
        self._net = None
        self._samplers: dict[str, Any] = {}
        self._weights: str | None = None

    @property
    def net(self) -> Any:
        if self._net is None:
            f = self.image_set.weights_file
            if f is not None and not Path(f).is_file():
                raise ValueError(
                    f"image set {self.image_set.name!r} needs trained weights {f}, which do not exist "
                    "(maps of random weights mean nothing)"
                )
            self._net = self.image_set.net()
        return self._net

    def sampler(self, key: str) -> Any:
        if key not in self._samplers:
            self._samplers[key] = self.image_set.samplers[key].build()
        return self._samplers[key]

    @property
    def weights_sha256(self) -> str:
        if self._weights is None:
            f = self.image_set.weights_file
            self._weights = file_digest(Path(f)) if f is not None and Path(f).is_file() else "none"
        return self._weights


def _request(image_set: ImageSet, run: MethodRun, subject: Subject, cls: int, lazy: _Lazy, seed: int) -> dict:
    return _json_safe(
        {
            "format": FORMAT,
            "method": run.method,
            **run.explain_kwargs(),
            "sampler": image_set.samplers[run.sampler].description if run.sampler else None,
            "class": int(cls),
            "input": _array_digest(subject.x),
            "weights_sha256": lazy.weights_sha256,
            "train_size": image_set.train_size,
            "seed": seed,
        }
    )


def _compute_set(
    image_set: ImageSet,
    subjects: list[Subject],
    keys: list[str],
    set_dir: Path,
    force: bool,
    progress: bool,
    ckpt_root: Path,
    seed: int,
    say: Callable[[str], None],
    report: ComputeReport,
    wanted: set[str] | None = None,
) -> list[str]:
    """Compute the missing runs `keys` of every subject (of those in `wanted`, if given); returns the
    subject names in order."""
    lazy = _Lazy(image_set)
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise ValueError(f"image set {image_set.name!r} has duplicate subject names: {names}")
    order = list(subjects)
    if image_set.class_from is not None:  # the reference subject first: its class is explained for all
        ref = [s for s in subjects if s.name == image_set.class_from]
        if not ref:
            raise ValueError(f"class_from={image_set.class_from!r} is not a subject of {image_set.name!r}")
        order = ref + [s for s in subjects if s.name != image_set.class_from]
    fixed_class: int | None = None
    for subject in order:
        sub_dir = set_dir / subject.name
        info = _subject_info(image_set, subject, sub_dir, lazy, force)
        cls = int(info["predicted"]) if fixed_class is None else fixed_class
        if image_set.class_from is not None and fixed_class is None:
            fixed_class = cls
        if int(info["explained"]) != cls:  # class_from changed: rewrite input.npz with the new class
            info = _subject_info(image_set, subject, sub_dir, lazy, True, explained=cls)
        if wanted is not None and subject.name not in wanted:
            continue
        for key in keys:
            run = image_set.runs[key]
            path = sub_dir / f"{key}.npz"
            request = _request(image_set, run, subject, cls, lazy, seed)
            label = f"{image_set.name}/{subject.name}/{key}"
            if not force and path.is_file():
                try:
                    stored = _read_npz(path)["meta"].get("request")
                except (OSError, ValueError, KeyError):
                    stored = None
                if stored == request:
                    report.skipped.append(label)
                    continue
                say(f"{label}: stored settings differ from the requested ones; recomputing")
            say(f"{label}: computing {run.method} ...")
            meta, maps = _run_one(image_set, run, subject, cls, lazy, ckpt_root, progress, seed)
            meta["request"] = request
            arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
            if maps is not None:
                arrays["map"] = maps.astype(np.float32)
                report.computed.append(label)
                say(f"{label}: done in {meta['seconds']:.1f} s ({meta['cpu_seconds']:.1f} s CPU)")
            else:
                report.failed.append(label)
                say(f"{label}: not applicable: {meta['error']}")
            _atomic_npz(path, **arrays)
    return names


def _subject_info(
    image_set: ImageSet,
    subject: Subject,
    sub_dir: Path,
    lazy: _Lazy,
    force: bool,
    explained: int | None = None,
) -> dict[str, Any]:
    """input.npz of a subject (display image, top-5 probabilities, predicted and explained class)."""
    path = sub_dir / "input.npz"
    digest = _array_digest(subject.x)
    if not force and path.is_file():
        try:
            data = _read_npz(path)
            if (
                data["meta"].get("input") == digest
                and data["meta"].get("weights_sha256") == lazy.weights_sha256
                and data["meta"].get("note") == subject.note
            ):
                return data["meta"]
        except (OSError, ValueError, KeyError):
            pass
    probs, _ = lazy.net.forward(subject.x[None])
    p = np.asarray(probs[0], dtype=np.float64)
    top = np.argsort(-p)[:5]
    names = image_set.class_names()
    predicted = int(top[0])
    meta = {
        "subject": subject.name,
        "note": subject.note,
        "input": digest,
        "weights_sha256": lazy.weights_sha256,
        "predicted": predicted,
        "predicted_name": names[predicted],
        "predicted_prob": float(p[predicted]),
        "explained": int(predicted if explained is None else explained),
        "top5": [[int(i), names[int(i)], float(p[i])] for i in top],
        "expected": subject.expected_class,
        "correct": None if subject.expected_class is None else bool(predicted == subject.expected_class),
    }
    meta["explained_name"] = names[meta["explained"]]
    meta["explained_prob"] = float(p[meta["explained"]])
    _atomic_npz(
        path, display=np.ascontiguousarray(subject.display, dtype=np.uint8), meta=np.array(json.dumps(meta))
    )
    return meta


def _run_one(
    image_set: ImageSet,
    run: MethodRun,
    subject: Subject,
    cls: int,
    lazy: _Lazy,
    ckpt_root: Path,
    progress: bool,
    seed: int,
) -> tuple[dict[str, Any], np.ndarray | None]:
    from pda_repro.methods import get_method

    kwargs = run.explain_kwargs()
    if run.sampler is not None:
        kwargs["sampler"] = lazy.sampler(run.sampler)
    if image_set.train_size is not None:
        kwargs["train_size"] = image_set.train_size
    checkpoint = None
    if image_set.checkpoints and get_method(run.method).checkpointable:
        checkpoint = ckpt_root / image_set.name / subject.name / f"{run.key}.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rng = _subject_seed(seed, image_set.name, subject.name, run.key)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = explain(
            lazy.net,
            subject.x,
            method=run.method,
            classes=[cls],
            rng=rng,
            batch=image_set.batch,
            progress=progress,
            checkpoint=checkpoint,
            **kwargs,
        )
    except ValueError as exc:
        if not run.may_fail:
            raise
        return {"error": str(exc), "method": run.method, "seconds": 0.0, "cpu_seconds": 0.0}, None
    meta = {
        "method": run.method,
        "params": _json_safe(res.params),
        "units": res.params.get("units", ""),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "forward_passes": res.forward_passes,
        "images_forwarded": res.params.get("images_forwarded"),
        "windows_evaluated": res.windows_evaluated,
        "timings": _json_safe(res.timings),
    }
    return meta, np.asarray(res.maps[0], dtype=np.float32)


def _repo_relative(path: Path | None) -> str | None:
    if path is None:
        return None
    from pda_repro.bench.results import REPO_ROOT

    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _write_figure_json(fig: FigureSpec, image_set: ImageSet, names: list[str], root: Path, seed: int) -> Path:
    """Everything the renderer needs and a reader wants to know, built from the stored data."""
    from pda_repro.bench.results import machine_metadata

    set_dir = root / image_set.name
    subjects = []
    complete = True
    for name in names:
        sub_dir = set_dir / name
        entry: dict[str, Any] = {"name": name, "runs": {}}
        if (sub_dir / "input.npz").is_file():
            entry.update(_read_npz(sub_dir / "input.npz")["meta"])
        else:
            complete = False
        for key in fig.columns:
            path = sub_dir / f"{key}.npz"
            if not path.is_file():
                complete = False
                continue
            meta = _read_npz(path)["meta"]
            entry["runs"][key] = {
                k: meta.get(k)
                for k in (
                    "seconds",
                    "cpu_seconds",
                    "forward_passes",
                    "images_forwarded",
                    "windows_evaluated",
                    "error",
                )
                if meta.get(k) is not None
            }
            entry["runs"][key]["request"] = meta.get("request")
        subjects.append(entry)
    runs = {}
    for key in fig.columns:
        run = image_set.runs[key]
        runs[key] = {
            "method": run.method,
            "label": run.label,
            "units": UNITS_SHORT.get(run.method, ""),
            **run.explain_kwargs(),
            "sampler": image_set.samplers[run.sampler].description if run.sampler else None,
        }
    machine = machine_metadata()
    doc = {
        "format": FORMAT,
        "figure": fig.name,
        "key": fig.key,
        "title": fig.title,
        "caption": fig.caption,
        "layout": fig.layout,
        "image_set": image_set.name,
        "model": image_set.model,
        "weights": image_set.weights,
        "weights_file": _repo_relative(image_set.weights_file),
        "weights_sha256": next((s.get("weights_sha256") for s in subjects if s.get("weights_sha256")), None),
        "notes": {**image_set.notes, **fig.notes},
        "columns": list(fig.columns),
        "runs": runs,
        "seed": seed,
        "subjects": subjects,
        "complete": complete,
        "cpu_seconds_total": sum(
            r.get("cpu_seconds", 0.0) or 0.0 for s in subjects for r in s["runs"].values()
        ),
        "machine": {
            k: machine.get(k) for k in ("cpu_model", "logical_cores", "torch", "torch_threads", "date")
        },
        "png": f"{FIGURES_DIRNAME}/{fig.name}.png",
    }
    return atomic_write_json(root / f"{fig.name}.json", doc)


# --------------------------------------------------------------------------------------------------
# Render (data only)
# --------------------------------------------------------------------------------------------------
def coverage_mask(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """H×W bool: True where a window of the stride-s grid covers the pixel (WindowGrid.coverage)."""
    return WindowGrid(height, width, window, stride).coverage()


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(p, width) for p in text.split("\n"))


def _caption(doc: dict[str, Any]) -> str:
    lines = [
        f"Model: {doc['model']}; weights: {doc['weights']}"
        + (f" (sha256 {doc['weights_sha256'][:12]})." if doc.get("weights_sha256") else "."),
        f"Settings: {doc['caption']}",
    ]
    samplers = sorted({r["sampler"] for r in doc["runs"].values() if r.get("sampler")})
    lines += [f"Sampler: {s}." for s in samplers]
    lines += [f"Note ({k}): {v}" for k, v in doc.get("notes", {}).items()]
    lines.append(
        "Colours: red = evidence for the class, blue = against; each map has its own scale, symmetric "
        "around 0 (colour bar); overlays on the greyscale input. Data: results/qualitative/"
        f"{doc['figure']}.json"
    )
    return "\n".join(lines)


def _fmt_prob(p: float) -> str:
    """3 decimals; within 0.001 of 1 written as 1−ε (e.g. "1−2.3e-05") instead of "1.000"."""
    if 0.999 < p < 1.0:
        return f"1−{1.0 - p:.1e}"
    return f"{p:.3f}"


def _row_title(subject: dict[str, Any]) -> str:
    name = subject.get("explained_name", "?")
    prob = subject.get("explained_prob", float("nan"))
    text = f"{name}  p={_fmt_prob(prob)}"
    if subject.get("predicted") is not None and subject.get("predicted") != subject.get("explained"):
        text += f"\n(top-1: {subject['predicted_name']} {_fmt_prob(subject['predicted_prob'])})"
    if subject.get("correct") is False:
        text += "  [WRONG]"
    return text


def _draw_map(fig: Any, ax: Any, m: np.ndarray, covered: np.ndarray | None, units: str) -> float:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from pda_repro.viz import colormap, heatmap_rgb, symmetric_vmax

    values = m[covered] if covered is not None and covered.any() else m
    top = symmetric_vmax(values)
    rgb = heatmap_rgb(m, vmax=top)
    if covered is not None:
        rgb[~covered] = 0.82  # grey: no window covers these pixels
    ax.imshow(rgb, interpolation="nearest")
    ax.set_anchor("W")
    cax = ax.inset_axes((1.03, 0.0, 0.06, 1.0))
    cbar = fig.colorbar(ScalarMappable(Normalize(-top, top), colormap()), cax=cax)
    cbar.ax.tick_params(labelsize=6)
    cbar.set_label(units, fontsize=6, labelpad=1)
    return top


def _render_figure(doc: dict[str, Any], root: Path, out: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pda_repro.viz import overlay_rgb

    set_dir = root / doc["image_set"]
    pairs = doc["layout"] == "pairs"
    columns = doc["columns"]
    n_rows = len(doc["subjects"])
    n_cols = 1 + (2 if pairs else 1) * len(columns)
    # map columns are wider: their colour bar sits beside the square panel
    ratios = [1.0] + ([1.6, 1.0] if pairs else [1.6]) * len(columns)
    wspace, title_room, margin = 0.12, 0.55, 0.15  # title_room: inches above each panel for its title
    width = 2.0 * sum(ratios) + 2 * margin
    # GridSpec: the mean cell width is avail / (n + wspace (n - 1)); cells scale with their ratios
    mean_w = (width - 2 * margin) / (n_cols + wspace * (n_cols - 1))
    unit = mean_w * n_cols / sum(ratios)  # width of a ratio-1 cell = the height of a square panel
    caption = _wrap(_caption(doc), int(width * 13))
    cap_h = 0.13 * (caption.count("\n") + 1) + 0.25
    title_h = 0.45 + title_room
    grid_h = unit * n_rows + title_room * (n_rows - 1)
    height = grid_h + cap_h + title_h
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{doc['title']}\n{doc['model']}", fontsize=10, y=1 - 0.06 / height)
    gs = fig.add_gridspec(
        n_rows,
        n_cols,
        width_ratios=ratios,
        left=margin / width,
        right=1 - margin / width,
        top=1 - title_h / height,
        bottom=cap_h / height,
        wspace=wspace,
        hspace=title_room / unit,
    )
    fig.text(0.01, 0.005, caption, fontsize=7, va="bottom", ha="left", family="sans-serif")
    for r, subject in enumerate(doc["subjects"]):
        sub_dir = set_dir / subject["name"]
        display = _read_npz(sub_dir / "input.npz")["display"]
        ax = fig.add_subplot(gs[r, 0])
        ax.imshow(display, interpolation="nearest")
        ax.set_title(_row_title(subject), fontsize=8)
        ax.set_ylabel(_wrap(subject.get("note") or subject["name"], 34), fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        col = 1
        for key in columns:
            run = doc["runs"][key]
            data = _read_npz(sub_dir / f"{key}.npz")
            ax = fig.add_subplot(gs[r, col])
            ax.set_xticks([])
            ax.set_yticks([])
            header = run["label"]
            if "map" not in data:
                msg = data["meta"].get("error", "not available")
                ax.text(
                    0.5,
                    0.5,
                    _wrap("not applicable: " + msg, 30),
                    fontsize=5.5,
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    wrap=True,
                )
                ax.set_title(header, fontsize=8)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                col += 2 if pairs else 1
                continue
            m = np.asarray(data["map"], dtype=np.float64)
            covered = None
            if run.get("stride") and run.get("window"):
                covered = coverage_mask(m.shape[0], m.shape[1], int(run["window"]), int(run["stride"]))
            top = _draw_map(fig, ax, m, covered, run.get("units", ""))
            ax.set_title(f"{header}\n|max|={top:.3g}", fontsize=7.5)
            col += 1
            if pairs:
                ax = fig.add_subplot(gs[r, col])
                ax.imshow(
                    overlay_rgb(display, np.where(covered, m, 0.0) if covered is not None else m, vmax=top)
                )
                ax.set_title("overlay", fontsize=7.5)
                ax.set_xticks([])
                ax.set_yticks([])
                col += 1
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(out, buf.getvalue())


def render_qualitative(
    results_dir: str | Path = RESULTS_DIR,
    figures: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Draw every qualitative figure whose data exist into <results_dir>/figures/<name>.png.

    Reads only <results_dir>/qualitative/<name>.json and the .npz files it lists; never computes.
    `figures`: figure names or keys (default all found). Missing or incomplete data: skipped, and the
    reason appended to `notes`."""
    root = Path(results_dir) / QUALITATIVE_DIRNAME
    out_dir = Path(results_dir) / FIGURES_DIRNAME
    written: list[Path] = []
    docs = sorted(root.glob("*.json")) if root.is_dir() else []
    for path in docs:
        doc = json.loads(path.read_text())
        if figures and doc.get("figure") not in figures and doc.get("key") not in figures:
            continue
        if not doc.get("complete"):
            if notes is not None:
                notes.append(
                    f"{doc.get('figure')}: data incomplete, run `python -m pda_repro.bench.qualitative compute`"
                )
            continue
        try:
            written.append(_render_figure(doc, root, out_dir / f"{doc['figure']}.png"))
        except (OSError, KeyError) as exc:
            if notes is not None:
                notes.append(f"{doc.get('figure')}: cannot render ({exc})")
    if not docs and notes is not None:
        notes.append(f"no qualitative data under {root}")
    return written


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _parse_only(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pda_repro.bench.qualitative", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compute", help="compute and save the maps (resumable)")
    c.add_argument("--force", action="store_true", help="recompute maps that exist")
    c.add_argument("--only", help=f"comma-separated figures: {','.join(FIGURE_KEYS)} (or full names)")
    c.add_argument("--results-dir", default=str(RESULTS_DIR))
    c.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    c.add_argument(
        "--photo-stride",
        type=int,
        default=Settings.photo_stride,
        help="window stride of the PDA comparisons on the photos (Figs 14/15, occlusion); 1 = full "
        "resolution: ~2 h of a 2-core CPU per photo, minutes on a GPU",
    )
    c.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images per forward pass on the photos (default 4 on cpu, 160 on cuda)",
    )
    c.add_argument(
        "--subjects",
        help="comma-separated image names: compute only these (e.g. to share the work among processes); "
        "figure JSONs are written by a later run without --subjects",
    )
    c.add_argument(
        "--workers", default="1", help="window methods on N Ray workers (or auto; pda_repro.parallel)"
    )
    c.add_argument("--cluster", default=None, help="a running Ray cluster's address for the window methods")
    c.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("render", help="draw the PNGs from the saved data only")
    r.add_argument("--results-dir", default=str(RESULTS_DIR))
    r.add_argument("--only", help="comma-separated figures")
    args = parser.parse_args(argv)
    if args.command == "compute":
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        if args.photo_stride < 1:
            parser.error(f"--photo-stride must be >= 1, got {args.photo_stride}")
        if args.batch is not None and args.batch < 1:
            parser.error(f"--batch must be >= 1, got {args.batch}")
        from pda_repro import parallel

        try:
            parallel.set_defaults(args.workers if args.workers == "auto" else int(args.workers), args.cluster)
        except ValueError as exc:
            parser.error(f"--workers/--cluster: {exc}")
        from pda_repro.backends import default_batch

        batch = args.batch or (Settings.photo_batch if args.device == "cpu" else default_batch(args.device))
        settings = Settings(
            seed=args.seed, device=args.device, photo_stride=args.photo_stride, photo_batch=batch
        )
        import torch

        torch.set_num_threads(args.threads)
        only = _parse_only(args.only)
        try:
            report = compute(
                default_setup(settings),
                only=only,
                results_dir=args.results_dir,
                force=args.force,
                progress=not args.no_progress,
                seed=args.seed,
                subjects=_parse_only(args.subjects),
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {len(report.json_files)} figure JSON files")
        return 0
    notes: list[str] = []
    paths = render_qualitative(args.results_dir, figures=_parse_only(args.only), notes=notes)
    for p in paths:
        print(p)
    for n in notes:
        print(f"skipped: {n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
