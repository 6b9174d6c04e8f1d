"""The faithfulness experiment's plans: which maps (MapRun) are made on which images, which pairs are
compared, which maps are evaluated and randomised (Plan); `plan_for(model, profile)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CONTROLS", "FIG14_PHOTOS", "MapRun", "Plan", "plan_for"]

CONTROLS = ("random", "constant")
FIG14_PHOTOS = ("coffee", "orange", "squirrel_cls", "baboon", "messi5")  # the photos of Figs 14-16 and 19
LITE0_PHOTOS = 27  # the real photos pda_repro.data.photo_paths finds with every source installed (setup's)
EPDA_STRIDE1 = 27  # EfficientNet-Lite0 photos with an efficient PDA map at stride 1 (the Fig 14 photos first)
OCCLUSION_STRIDE1 = 27  # EfficientNet-Lite0 photos with an occlusion map at stride 1 (same order)
PDA_STRIDE5 = 27  # EfficientNet-Lite0 photos with a PDA map at stride 5 (same order)


@dataclass(frozen=True)
class MapRun:
    """One map per image: an explain() method (or a control) with its settings."""

    key: str
    method: str  # a pda_repro.methods name, or "random" / "constant"
    stride: int | None = None
    seed: int = 0
    sampler: str | None = None  # "marginal" | "conditional" | "conditional_shift" | None
    reuse: str | None = None  # file stem under results/qualitative/<set>/<photo>/ holding this very map
    images: int | None = None  # only the first n images of the plan


@dataclass(frozen=True)
class Plan:
    model: str
    profile: str
    window: int
    outer: int
    samples: int
    batch: int  # images per forward call (and window batch of explain)
    images: Callable[[Any], list[tuple[str, np.ndarray]]]
    image_note: str
    runs: tuple[MapRun, ...]
    evaluate: tuple[str, ...]  # run keys whose faithfulness is measured
    pairs: tuple[tuple[str, str, str], ...]  # (comparison, run a, run b)
    randomise: tuple[tuple[str, int | None], ...]  # (run key, first n images or None)
    steps: int | None = 20
    fc_runs: int = 30
    fills: tuple[str, ...] = (
        "mean",
        "blur",
        "zeros",
    )  # deletion / insertion fills (the first one: correlation)
    qualitative_set: str | None = None
    # keep the window maps and the evaluations in results/faithfulness/ (committed: hours of CPU), not the cache
    stored: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    # `warm` runs the maps (and their metrics) of these (run key, first n images or None) first, in this
    # order, then everything else cheapest first
    warm_first: tuple[tuple[str, int | None], ...] = ()

    def run(self, key: str) -> MapRun:
        for r in self.runs:
            if r.key == key:
                return r
        raise KeyError(key)


def _mnist_images(count: int) -> Callable[[Any], list[tuple[str, np.ndarray]]]:
    def images(spec: Any) -> list[tuple[str, np.ndarray]]:
        from pda_repro.bench.inputs import mnist_inputs

        return mnist_inputs(spec, "test", count)

    return images


def _photo_images(
    names: Sequence[str] | None, first: Sequence[str] = ()
) -> Callable[[Any], list[tuple[str, np.ndarray]]]:
    """The photos `names` (None: every real photo, those of `first` first, the rest in photo_paths order)."""

    def images(spec: Any) -> list[tuple[str, np.ndarray]]:
        from pda_repro.data import photo_paths
        from pda_repro.preprocess import load_image

        paths = photo_paths()
        order = list(names) if names is not None else [*first, *(n for n in paths if n not in first)]
        return [(n, load_image(paths[n], spec).x) for n in order]

    return images


GRADIENT_BASELINES = ("saliency", "gradient_x_input", "gradcam")
_CONTROL_RUNS = tuple(MapRun(k, k) for k in CONTROLS)  # a random and an all-equal map


def _gradient_baselines(reuse: bool = False) -> tuple[MapRun, ...]:
    """The gradient baselines (one pass each, no window settings); `reuse`: read from the qualitative maps."""
    return tuple(MapRun(m, m, reuse=m if reuse else None) for m in GRADIENT_BASELINES)


def _mnist_plan(profile: str) -> Plan:
    m = "marginal"
    runs = (
        MapRun("pda", "pda", 1, 0, m),
        MapRun("pda_seed1", "pda", 1, 1, m),
        MapRun("epda", "epda", 1, 0, m),
        MapRun("epda_s2", "epda", 2, 0, m),
        MapRun("epda_s4", "epda", 4, 0, m),
        MapRun("epda_sampled", "epda_sampled", 1, 0, m),
        MapRun("simplified", "simplified", 1, 0, m),
        MapRun("occlusion", "occlusion", 1),
        *_gradient_baselines(),
        MapRun("deep_taylor", "deep_taylor"),
        MapRun("epda_cond", "epda", 1, 0, "conditional"),
        MapRun("epda_cond_shift", "epda", 1, 0, "conditional_shift"),
        *_CONTROL_RUNS,
    )
    evaluate = tuple(r.key for r in runs if r.key not in ("pda_seed1", "epda_s2", "epda_cond_shift"))
    pairs = (
        ("pda_vs_pda_other_seed", "pda", "pda_seed1"),
        ("pda_vs_epda", "pda", "epda"),
        ("pda_vs_epda_sampled", "pda", "epda_sampled"),
        ("epda_vs_epda_sampled", "epda", "epda_sampled"),
        ("epda_vs_simplified", "epda", "simplified"),
        ("epda_stride1_vs_stride2", "epda", "epda_s2"),
        ("epda_stride1_vs_stride4", "epda", "epda_s4"),
        ("epda_marginal_vs_conditional", "epda", "epda_cond"),
        ("border_clip_vs_shift", "epda_cond", "epda_cond_shift"),
        ("control_pda_vs_random", "pda", "random"),
        ("control_pda_vs_constant", "pda", "constant"),
        ("control_epda_vs_random", "epda", "random"),
    )
    n_pda = 20 if profile == "quick" else None
    randomise = (
        ("pda", n_pda),
        ("epda", None),
        ("simplified", None),
        ("occlusion", None),
        ("saliency", None),
        ("gradient_x_input", None),
        ("gradcam", None),
        ("deep_taylor", None),
        ("random", None),
        ("constant", None),
    )
    return Plan(
        model="mnist",
        profile=profile,
        window=4,
        outer=8,
        samples=10,
        batch=500,
        images=_mnist_images(100),
        image_note="the first 100 MNIST test digits",
        runs=runs,
        evaluate=evaluate,
        pairs=pairs,
        randomise=randomise,
        steps=None,
        fc_runs=50,
        notes={
            "sampler": "marginal = Fig 13's sampler (window values from random training digits); conditional ="
            " PatchGaussian k=4, l=8 fitted on 10,000 training digits (border clip or shift)",
            "randomisation": "PDA's randomisation check on the first 20 digits only (quick profile)"
            if n_pda
            else "",
        },
    )


def _lite0_plan(profile: str) -> Plan:
    c = "conditional"
    if profile == "paper":
        runs = (
            MapRun("pda_s5", "pda", 5, 0, c),
            MapRun("pda_s5_seed1", "pda", 5, 1, c),
            MapRun("epda_s5", "epda", 5, 0, c),
            MapRun("epda", "epda", 1, 0, c),
            MapRun("epda_s2", "epda", 2, 0, c),
            MapRun("epda_s4", "epda", 4, 0, c),
            MapRun("epda_sampled_s5", "epda_sampled", 5, 0, c),
            MapRun("simplified", "simplified", 1, 0, c),
            MapRun("occlusion", "occlusion", 1),
            *_gradient_baselines(),
            MapRun("epda_shift", "epda", 1, 0, "conditional_shift"),
            *_CONTROL_RUNS,
        )
        pairs = (
            ("pda_vs_pda_other_seed", "pda_s5", "pda_s5_seed1"),
            ("pda_vs_epda", "pda_s5", "epda_s5"),
            ("pda_vs_epda_sampled", "pda_s5", "epda_sampled_s5"),
            ("epda_vs_simplified", "epda", "simplified"),
            ("epda_stride1_vs_stride2", "epda", "epda_s2"),
            ("epda_stride1_vs_stride4", "epda", "epda_s4"),
            ("border_clip_vs_shift", "epda", "epda_shift"),
            ("control_pda_vs_random", "pda_s5", "random"),
            ("control_epda_vs_random", "epda", "random"),
        )
        evaluate = ("pda_s5", "epda", "epda_s5", "epda_sampled_s5", "simplified", "occlusion", "saliency",
                    "gradient_x_input", "gradcam", "random", "constant")  # fmt: skip
        randomise = tuple(
            (k, None) for k in ("epda", "simplified", "saliency", "gradient_x_input", "gradcam", *CONTROLS)
        )
        return Plan("efficientnet_lite0", profile, 10, 18, 10, 4, _photo_images(None),
                    "all real photos (scikit-image, matplotlib, opencv-doc)", runs, evaluate, pairs,
                    randomise, stored=True)  # fmt: skip
    # quick: all 27 photos (the five Fig 14 photos first, so `images=n` are the first n of them): the gradient
    # baselines, simplified, efficient PDA and occlusion at stride 10, PDA at stride 10 with two seeds and the
    # controls on every photo; the maps of the qualitative figures (Fig 14/15/19, stride 5 and 1) and efficient
    # PDA at strides 2 and 4 on the Fig 14 photos; efficient PDA at stride 1 on the first EPDA_STRIDE1 photos,
    # occlusion at stride 1 on the first OCCLUSION_STRIDE1, efficient PDA at stride 5 on every photo and PDA at
    # stride 5 (the finest its few CPU hours allowed) on the first PDA_STRIDE5 (CPU cost: the maps' meta in
    # faithfulness.json)
    f5 = len(FIG14_PHOTOS)
    runs = (
        MapRun("pda_s5", "pda", 5, 0, c, reuse="pda", images=PDA_STRIDE5),
        MapRun("epda_s5", "epda", 5, 0, c, reuse="epda"),
        MapRun("epda", "epda", 1, 0, c, reuse="epda_full", images=EPDA_STRIDE1),
        MapRun("epda_sampled_s5", "epda_sampled", 5, 0, c, reuse="epda_sampled", images=f5),
        MapRun("simplified", "simplified", 1, 0, c, reuse="simplified_full"),
        MapRun("occlusion_s5", "occlusion", 5, reuse="occlusion", images=f5),
        MapRun("occlusion_s10", "occlusion", 10),
        MapRun("occlusion", "occlusion", 1, images=OCCLUSION_STRIDE1),
        *_gradient_baselines(reuse=True),
        MapRun("epda_s2", "epda", 2, 0, c, images=f5),
        MapRun("epda_s4", "epda", 4, 0, c, images=f5),
        MapRun("pda_s10", "pda", 10, 0, c),
        MapRun("pda_s10_seed1", "pda", 10, 1, c),
        MapRun("epda_s10", "epda", 10, 0, c),
        MapRun("epda_s5_shift", "epda", 5, 0, "conditional_shift", images=f5),
        *_CONTROL_RUNS,
    )
    pairs = (
        ("pda_vs_pda_other_seed", "pda_s10", "pda_s10_seed1"),
        ("pda_vs_epda", "pda_s10", "epda_s10"),
        ("pda_vs_occlusion", "pda_s10", "occlusion_s10"),
        ("epda_vs_occlusion", "epda", "occlusion"),
        ("occlusion_stride1_vs_stride10", "occlusion", "occlusion_s10"),
        ("pda_vs_epda", "pda_s5", "epda_s5"),
        ("pda_vs_epda_sampled", "pda_s5", "epda_sampled_s5"),
        ("epda_vs_epda_sampled", "epda_s5", "epda_sampled_s5"),
        ("epda_vs_simplified", "epda", "simplified"),
        ("epda_stride1_vs_stride2", "epda", "epda_s2"),
        ("epda_stride1_vs_stride4", "epda", "epda_s4"),
        ("epda_stride1_vs_stride5", "epda", "epda_s5"),
        ("epda_stride1_vs_stride10", "epda", "epda_s10"),
        ("epda_stride5_vs_stride10", "epda_s5", "epda_s10"),
        ("border_clip_vs_shift", "epda_s5", "epda_s5_shift"),
        ("control_pda_vs_random", "pda_s5", "random"),
        ("control_pda_vs_constant", "pda_s5", "constant"),
        ("control_epda_vs_random", "epda", "random"),
        ("control_epda_vs_random", "epda_s5", "random"),
    )
    evaluate = ("pda_s5", "pda_s10", "epda_s5", "epda", "epda_s2", "epda_s10", "epda_sampled_s5", "simplified",
                "occlusion", "occlusion_s5", "occlusion_s10", "saliency", "gradient_x_input", "gradcam", "random",
                "constant")  # fmt: skip
    randomise = (
        ("saliency", f5),
        ("gradient_x_input", f5),
        ("gradcam", f5),
        ("simplified", f5),
        ("epda_s10", 1),
        ("random", f5),
        ("constant", f5),
    )
    return Plan(
        model="efficientnet_lite0",
        profile=profile,
        window=10,
        outer=18,
        samples=10,
        batch=4,
        images=_photo_images(None, first=FIG14_PHOTOS),
        image_note=f"all real photos, the {f5} Fig 14 photos ({', '.join(FIG14_PHOTOS)}) first",
        runs=runs,
        evaluate=evaluate,
        pairs=pairs,
        randomise=randomise,
        fills=("mean",),
        qualitative_set="efficientnet_lite0",
        stored=True,
        notes={
            "scale": "reduced plan: each map at the stride and on the images its entry under `maps` names"
        },
        # efficient PDA on every photo (stride 10), then photo by photo the noise floor (PDA stride 10, two
        # seeds) and, on the Fig 14 photos, strides 4 and 2 and the border mode; occlusion at stride 10; the
        # stride-1 maps (the dearest) last
        warm_first=(
            ("epda_s10", None),
            *(
                (k, n)
                for n in range(1, f5 + 1)
                for k in ("pda_s10", "pda_s10_seed1", "epda_s4", "epda_s5_shift")
            ),
            *((k, n) for n in range(1, f5 + 1) for k in ("epda_s2",)),
            *((k, n) for n in range(f5 + 1, LITE0_PHOTOS + 1) for k in ("pda_s10", "pda_s10_seed1")),
            ("occlusion_s10", None),
        ),
    )


def plan_for(model: str, profile: str) -> Plan | None:
    if model == "mnist":
        return _mnist_plan(profile)
    if model == "efficientnet_lite0":
        return _lite0_plan(profile)
    return None
