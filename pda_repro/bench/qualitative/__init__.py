"""The paper's qualitative figures (Figs 13, 14, 15, 17, 18, 19) and a baseline comparison: computed once
into results/qualitative/ (compressed .npz maps + one JSON of settings per figure), drawn from those data
only.

    pda-repro qualitative compute [--force] [--only fig13,fig14,...] [--subjects a,b]
    pda-repro qualitative render

Modules, in the order of the work:
  specs    the data the figures are described with (Subject, MethodRun, ImageSet, FigureSpec, Settings)
  images   the photos, their rotated/flipped/cropped variants, the MNIST digits, and their samplers
  paper    `default_setup`: the paper's figures as a table of image sets and figure specs
  maps     `compute`: every map once, stored with its request and cost; one JSON per figure
  render   `render_qualitative`: the PNGs from the stored data only (used by `pda-repro figures`)
  command  `configure` / `run` of the `pda-repro qualitative` subcommand

Where a stride-1 PDA map is too dear (S forward passes per window), the photo figures compare the
methods at a coarser stride; the stride and its window and forward-pass counts are written on every
figure and in its JSON, and the cost of every map is stored beside it (`cpu_seconds`, `forward_passes`).
"""

from __future__ import annotations

from pda_repro.bench.qualitative.images import (
    crop_fraction,
    mnist_marginal,
    photo_sampler,
    rotate_and_crop,
    same_class_subjects,
)
from pda_repro.bench.qualitative.maps import ComputeReport, compute
from pda_repro.bench.qualitative.paper import default_setup
from pda_repro.bench.qualitative.render import coverage_mask, render_qualitative
from pda_repro.bench.qualitative.specs import (
    FIGURE_KEYS,
    PHOTO_CLASSES,
    FigureSpec,
    ImageSet,
    MethodRun,
    SamplerSpec,
    Settings,
    Setup,
    Subject,
)

__all__ = [
    "FIGURE_KEYS",
    "PHOTO_CLASSES",
    "ComputeReport",
    "FigureSpec",
    "ImageSet",
    "MethodRun",
    "SamplerSpec",
    "Settings",
    "Setup",
    "Subject",
    "compute",
    "coverage_mask",
    "crop_fraction",
    "default_setup",
    "mnist_marginal",
    "photo_sampler",
    "render_qualitative",
    "rotate_and_crop",
    "same_class_subjects",
]
