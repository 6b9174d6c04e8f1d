"""Faithfulness metrics for relevance maps and agreement between maps (issue "measure faithfulness").

    from pda_repro.evaluate import evaluate_map, agreement
    scores, curves = evaluate_map(net, x, res.maps[0], cls, block=10, imputer=sampler,
                                  rng=np.random.default_rng(0))
    agreement(map_pda, map_epda, mask)       # {"spearman", "ssim", "top_overlap"}

metrics.py has each metric (deletion / insertion with three fills, ROAD MoRF / LeRF, faithfulness
correlation, model randomisation) and the two controls (`random_map`, `constant_map`); agreement.py the
map-vs-map numbers. Why not Quantus itself: Quantus 0.6 runs with our numpy/torch, but only on a torch
nn.Module with its own model wrapper (not on a pycaffe net), draws its random subsets and noise from
numpy's global RNG (our rule: a passed Generator), has no insertion curve and no conditional-mean fill; so
the metrics are implemented here from their papers on the Backend interface, and tests/test_evaluate.py
checks each one that Quantus has (pixel flipping, ROAD's imputation, faithfulness correlation, MPRT)
against Quantus on a tiny torch net where Quantus runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pda_repro.evaluate.agreement import agreement, covered_box, spearman, ssim, top_overlap
from pda_repro.evaluate.metrics import (
    FILLS,
    Curve,
    block_boxes,
    class_scores,
    constant_map,
    deletion_curve,
    faithfulness_correlation,
    fill_image,
    insertion_curve,
    learnable_layers,
    linear_imputation,
    random_map,
    randomisation_check,
    randomised_weights,
    road_curve,
)

__all__ = [
    "FILLS",
    "Curve",
    "agreement",
    "block_boxes",
    "class_scores",
    "constant_map",
    "covered_box",
    "deletion_curve",
    "evaluate_map",
    "faithfulness_correlation",
    "fill_image",
    "insertion_curve",
    "learnable_layers",
    "linear_imputation",
    "random_map",
    "randomisation_check",
    "randomised_weights",
    "road_curve",
    "spearman",
    "ssim",
    "top_overlap",
]


def evaluate_map(
    net: Any,
    x: np.ndarray,
    relevance: np.ndarray,
    cls: int,
    block: int,
    imputer: Any = None,
    fills: tuple[str, ...] = FILLS,
    steps: int | None = 50,
    road_percentages: tuple[float, ...] = (10, 30, 50, 70, 90),
    road_noise: float | None = None,
    fc_runs: int = 50,
    fc_subset: float = 0.1,
    output: str = "prob",
    rng: np.random.Generator | None = None,
    fill_images: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], list[Curve]]:
    """Every metric for one map: deletion/insertion AUC per fill, ROAD MoRF/LeRF AUC, and the
    faithfulness correlation (blocks of `block`, a fraction `fc_subset` of them per run, `fc_runs` runs,
    filled from the first of `fills`). road_noise None: 1 % of the image's value range. Returns (scores,
    curves); scores has one number per metric plus every setting. `fill_images` passes precomputed fills."""
    rng = np.random.default_rng(0) if rng is None else rng
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    unknown = [f for f in fills if f not in FILLS]
    if unknown or not fills:
        raise ValueError(f"fills must be some of {', '.join(FILLS)}, got {fills!r}")
    x = np.asarray(x, dtype=np.float32)
    images = dict(fill_images or {})
    for f in fills:
        if f not in images:
            images[f] = fill_image(x, f, block, imputer)
    noise = 0.01 * float(np.ptp(x)) if road_noise is None else float(road_noise)
    scores: dict[str, Any] = {}
    curves: list[Curve] = []
    # one child generator per metric, so adding a metric never changes another's draws
    streams = dict(zip(("curves", "road", "fc"), rng.spawn(3), strict=True))
    for f in fills:
        for fn in (deletion_curve, insertion_curve):
            c = fn(net, x, relevance, cls, images[f], block, steps, output, streams["curves"])
            c.settings["fill"] = f
            curves.append(c)
            scores[f"{c.kind}_auc_{f}"] = c.auc
    for order in ("morf", "lerf"):
        c = road_curve(net, x, relevance, cls, order, road_percentages, noise, output, streams["road"])
        curves.append(c)
        scores[f"road_{order}_auc"] = c.auc
    fc = faithfulness_correlation(
        net, x, relevance, cls, images[fills[0]], block, fc_subset, fc_runs, output, streams["fc"]
    )
    scores["faithfulness_correlation"] = fc["correlation"]
    settings = dict(
        block=int(block),
        output=output,
        steps=steps,
        fills=",".join(fills),
        road_percentages=",".join(f"{p:g}" for p in road_percentages),
        road_noise=noise,
        fc_runs=int(fc_runs),
        fc_subset=float(fc_subset),
        fc_fill=fills[0],
        fc_subset_blocks=int(fc["subset_blocks"]),
    )
    scores["score_image"] = float(class_scores(net, x[None], cls, output)[0])
    return {**scores, **settings}, curves
