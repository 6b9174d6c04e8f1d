"""Faithfulness of a relevance map to the model: deletion / insertion, ROAD, faithfulness correlation and the
model-randomisation sanity check, for any H×W map of any method on any Backend.

Every metric reads the class score ``f_c`` from ``Backend.forward`` -- the softmax probability (``output=
"prob"``, default) or the logit -- and never looks inside the net, so it works on the caffe and torch
backends alike. Randomness (ties, noise, random subsets, random weights) comes only from a passed
``numpy.random.Generator`` or seed.

Deletion and insertion (Samek et al. 2017 "pixel flipping" / MoRF region perturbation; Petsiuk et al. 2018
insertion): the image is cut into a grid of block×block squares (block = the PDA window size k; the last
row/column of blocks is smaller where k does not divide the side). Blocks are ranked by their mean
relevance, most relevant first (ties in random order). Deletion replaces the blocks, in that order, by a
*fill image*; insertion starts from the fill image and puts the blocks of the original back in that order.
The curve is f_c against the fraction of pixels replaced/inserted (0..1), the AUC its trapezoidal area:
a faithful map has a LOW deletion AUC (the score drops at once) and a HIGH insertion AUC. Fills
(`fill_image`): "zeros" (0 in the net's preprocessed input space), "blur" (a Gaussian blur of the image,
σ = block/2 px per channel) and "mean" (each block's conditional mean given the unmodified image, from the
sampler PDA uses -- the dataset mean for a marginal sampler).

ROAD (Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution methods"): the top
(MoRF) or bottom (LeRF) p % of pixels by relevance are removed and filled by *noisy linear imputation*: each
removed pixel is the weighted mean of its 8 neighbours (weight 1/6 for the 4 direct ones, 1/12 for the
diagonal ones, only neighbours inside the image), all removed pixels solved jointly as one sparse linear
system per channel, plus Gaussian noise. MoRF AUC low and LeRF AUC high = faithful.

Faithfulness correlation (Bhatt et al. 2020): over `runs` random subsets S of blocks (block=1: pixels, as in
the paper and Quantus), the Pearson correlation between the relevance summed over S and the score drop
f_c(x) − f_c(x with S filled). 1 = the map predicts every drop; NaN for a constant map (undefined).

Model randomisation (Adebayo et al. 2018): the top learnable layers (cascading from the output) or all of them
are re-drawn from the prototxt's seeded random fillers, the map is recomputed with the same method, and its
Spearman rank correlation (signed and of |map|) and SSIM with the trained-model map are reported. A method
that explains the model must change: |Spearman| stays high only for a map that ignores the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.ndimage import gaussian_filter
from scipy.sparse.linalg import splu

from pda_repro.evaluate.agreement import spearman, ssim

__all__ = [
    "FILLS",
    "Curve",
    "block_boxes",
    "class_scores",
    "constant_map",
    "deletion_curve",
    "faithfulness_correlation",
    "fill_image",
    "insertion_curve",
    "linear_imputation",
    "random_map",
    "randomisation_check",
    "randomised_weights",
    "road_curve",
]

FILLS = ("mean", "blur", "zeros")
OUTPUTS = ("prob", "logit")
_FORWARD_CHUNK = 64  # perturbed images built and forwarded at once (bounds memory on 224×224 inputs)


@dataclass
class Curve:
    """One perturbation curve: score f_c after perturbing `fractions` of the pixels; `auc` its area."""

    kind: str  # deletion | insertion | road_morf | road_lerf
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    settings: dict[str, Any] = field(default_factory=dict)


# -- checks -----------------------------------------------------------------------------------------


def _check_generator(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_output(output: Any) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"output must be 'prob' or 'logit', got {output!r}")
    return str(output)


def _check_image_map(net: Any, x: Any, relevance: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    expected = tuple(net.input_shape)
    if x.shape != expected:
        raise ValueError(f"image shape {x.shape} does not match the net's input {expected}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("image holds NaN or Inf values")
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.shape != x.shape[1:]:
        raise ValueError(f"map shape {rel.shape} does not match the image's H×W {x.shape[1:]}")
    if not np.isfinite(rel).all():
        raise ValueError("map holds NaN or Inf values")
    return x, rel


def _check_block(block: Any, height: int, width: int) -> int:
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    if block > min(height, width):
        raise ValueError(f"block {block} is larger than the image ({height}×{width})")
    return int(block)


def _check_class(net: Any, cls: Any) -> int:
    if isinstance(cls, bool) or not isinstance(cls, int | np.integer) or not 0 <= cls < net.num_classes:
        raise ValueError(f"class must be an integer in 0..{net.num_classes - 1}, got {cls!r}")
    return int(cls)


# -- building blocks ---------------------------------------------------------------------------------


def class_scores(net: Any, images: np.ndarray, cls: int, output: str = "prob") -> np.ndarray:
    """f_c of every image of a N×C×H×W float32 stack (softmax probability or logit), float64 (N,)."""
    output = _check_output(output)
    probs, logits = net.forward(np.ascontiguousarray(images, dtype=np.float32))
    return np.asarray(probs if output == "prob" else logits, dtype=np.float64)[:, cls]


def block_boxes(height: int, width: int, block: int) -> np.ndarray:
    """(n, 4) boxes (r0, r1, c0, c1) of the block×block grid, row-major; edge blocks may be smaller."""
    block = _check_block(block, height, width)
    rs, cs = np.arange(0, height, block), np.arange(0, width, block)
    r0, c0 = np.meshgrid(rs, cs, indexing="ij")
    r0, c0 = r0.ravel(), c0.ravel()
    return np.stack([r0, np.minimum(r0 + block, height), c0, np.minimum(c0 + block, width)], axis=1)


def _block_labels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    labels = np.empty((height, width), dtype=np.int64)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        labels[r0:r1, c0:c1] = i
    return labels


def _ranked(values: np.ndarray, rng: np.random.Generator, descending: bool = True) -> np.ndarray:
    """Indices of `values` sorted (descending by default), ties in a random order from `rng`."""
    perm = rng.permutation(values.size)
    key = -values[perm] if descending else values[perm]
    return perm[np.argsort(key, kind="stable")]


def fill_image(x: np.ndarray, fill: str, block: int | None = None, imputer: Any = None) -> np.ndarray:
    """The image a deletion curve fills removed blocks from (module docstring): "zeros", "blur" (σ =
    block/2) or "mean" (each block of the grid filled with `imputer.mean_at` of a block×block window
    there, given the unmodified x; block must equal the imputer's window size k)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected one image C×H×W, got shape {x.shape}")
    if fill == "zeros":
        return np.zeros_like(x)
    if block is None:
        raise ValueError(f"fill {fill!r} needs the block size")
    _, height, width = x.shape
    block = _check_block(block, height, width)
    if fill == "blur":
        sigma = block / 2.0
        return np.stack([gaussian_filter(ch.astype(np.float64), sigma, mode="reflect") for ch in x]).astype(
            np.float32
        )
    if fill == "mean":
        if imputer is None:
            raise ValueError("fill 'mean' needs the sampler (imputer) whose mean_at fills a window")
        if getattr(imputer, "k", None) != block:
            raise ValueError(
                f"fill 'mean': the sampler's window k={getattr(imputer, 'k', None)} != block {block}"
            )
        boxes = block_boxes(height, width, block)
        wr = np.minimum(boxes[:, 0], height - block)  # windows of full size that contain each block
        wc = np.minimum(boxes[:, 2], width - block)
        means = imputer.mean_at(x, wr, wc)
        out = np.empty_like(x)
        for (r0, r1, c0, c1), a, b, m in zip(boxes, wr, wc, means, strict=True):
            out[:, r0:r1, c0:c1] = m[:, r0 - a : r1 - a, c0 - b : c1 - b]
        return out
    raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")


def _auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    return float(np.sum((fractions[1:] - fractions[:-1]) * (scores[1:] + scores[:-1]) / 2.0))


def _scores_of_masks(
    net: Any, base: np.ndarray, other: np.ndarray, masks: Sequence[np.ndarray], cls: int, output: str
) -> np.ndarray:
    """f_c of `base` with the pixels of each H×W mask taken from `other`, forwarded in chunks."""
    out = []
    for start in range(0, len(masks), _FORWARD_CHUNK):
        part = masks[start : start + _FORWARD_CHUNK]
        stack = np.repeat(base[None], len(part), axis=0)
        for img, m in zip(stack, part, strict=True):
            img[:, m] = other[:, m]
        out.append(class_scores(net, stack, cls, output))
    return np.concatenate(out)


def _step_counts(n: int, steps: int | None) -> np.ndarray:
    if steps is None or steps >= n:
        return np.arange(n + 1)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    return np.unique(np.round(np.linspace(0, n, steps + 1)).astype(np.int64))


def _block_curve(
    kind: str,
    net: Any,
    x: Any,
    relevance: Any,
    cls: Any,
    fill: np.ndarray,
    block: int,
    steps: int | None,
    output: str,
    rng: np.random.Generator,
) -> Curve:
    x, rel = _check_image_map(net, x, relevance)
    cls = _check_class(net, cls)
    output = _check_output(output)
    rng = _check_generator(rng)
    fill = np.asarray(fill, dtype=np.float32)
    if fill.shape != x.shape:
        raise ValueError(f"fill image shape {fill.shape} differs from the image's {x.shape}")
    _, height, width = x.shape
    boxes = block_boxes(height, width, block)
    labels = _block_labels(boxes, height, width)
    block_mean = np.bincount(labels.ravel(), weights=rel.ravel()) / np.bincount(labels.ravel())
    order = _ranked(block_mean, rng)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    pixel_rank = rank[labels]  # when each pixel's block comes
    counts = _step_counts(order.size, steps)
    masks = [pixel_rank < m for m in counts]  # pixels perturbed after m blocks
    fractions = np.array([m.mean() for m in masks])
    if kind == "deletion":
        scores = _scores_of_masks(net, x, fill, masks, cls, output)
    else:
        scores = _scores_of_masks(net, fill, x, masks, cls, output)
    settings = {
        "block": int(block),
        "blocks": int(order.size),
        "steps": int(counts.size - 1),
        "output": output,
    }
    return Curve(kind, fractions, scores, _auc(fractions, scores), settings)


def _public_curve(kind: str, doc: str) -> Callable[..., Curve]:
    def curve(
        net: Any,
        x: Any,
        relevance: Any,
        cls: int,
        fill: np.ndarray,
        block: int,
        steps: int | None = None,
        output: str = "prob",
        rng: np.random.Generator | None = None,
    ) -> Curve:
        rng = np.random.default_rng(0) if rng is None else rng
        return _block_curve(kind, net, x, relevance, cls, fill, block, steps, output, rng)

    curve.__name__ = curve.__qualname__ = f"{kind}_curve"
    curve.__doc__ = doc
    return curve


deletion_curve = _public_curve(
    "deletion",
    """deletion_curve(net, x, relevance, cls, fill, block, steps=None, output="prob", rng=None): the most
    relevant blocks first replaced by `fill` (a C×H×W fill image, see `fill_image`); the curve at `steps`+1
    evenly spaced block counts (None: after every block); ties in random order from `rng`. Low AUC =
    faithful.""",
)
insertion_curve = _public_curve(
    "insertion",
    """insertion_curve(net, x, relevance, cls, fill, block, steps=None, output="prob", rng=None): from the
    fill image, the most relevant blocks of x put back first. High AUC = faithful.""",
)


# -- ROAD ---------------------------------------------------------------------------------------------

_NEIGHBOURS = (
    ((-1, -1), 1 / 12),
    ((-1, 0), 1 / 6),
    ((-1, 1), 1 / 12),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((1, 1), 1 / 12),
)


def linear_imputation(
    x: Any, removed: Any, noise: float = 0.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """ROAD's noisy linear imputation: the pixels where the H×W bool mask `removed` is True become the
    solution of x_i = Σ_j w_ij x_j / Σ_j w_ij over their in-image 8-neighbours j (w = 1/6 direct, 1/12
    diagonal), solved jointly for all removed pixels (one sparse LU, every channel), then + noise·N(0, 1)
    (drawn from `rng`). Returns float32 C×H×W; the other pixels are unchanged."""
    x = np.asarray(x, dtype=np.float64)
    mask = np.asarray(removed, dtype=bool)
    if x.ndim != 3 or mask.shape != x.shape[1:]:
        raise ValueError(f"expected a C×H×W image and an H×W mask, got {x.shape} and {mask.shape}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    out = x.copy()
    n = int(mask.sum())
    if n == 0:
        return out.astype(np.float32)
    channels, height, width = x.shape
    if n == mask.size:
        raise ValueError("linear imputation needs at least one kept pixel; the mask removes them all")
    var = -np.ones((height, width), dtype=np.int64)
    rr, cc = np.nonzero(mask)
    var[rr, cc] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros((n, channels))
    rows_a, cols_a, vals_a = [], [], []
    for (dr, dc), w in _NEIGHBOURS:
        nr, nc = rr + dr, cc + dc
        inside = (nr >= 0) & (nr < height) & (nc >= 0) & (nc < width)
        i, nr, nc = np.flatnonzero(inside), nr[inside], nc[inside]
        diag[i] += w
        j = var[nr, nc]
        unknown = j >= 0
        rows_a.append(i[unknown])
        cols_a.append(j[unknown])
        vals_a.append(np.full(int(unknown.sum()), -w))
        known = ~unknown
        rhs[i[known]] += w * x[:, nr[known], nc[known]].T
    a = sparse.coo_matrix(
        (
            np.concatenate([diag, *vals_a]),
            (np.concatenate([np.arange(n), *rows_a]), np.concatenate([np.arange(n), *cols_a])),
        ),
        shape=(n, n),
    ).tocsc()
    solved = splu(a).solve(rhs)  # (n, C)
    if noise > 0:
        rng = _check_generator(rng)
        solved = solved + noise * rng.standard_normal(solved.shape)
    out[:, rr, cc] = solved.T
    return out.astype(np.float32)


def road_curve(
    net: Any,
    x: Any,
    relevance: Any,
    cls: int,
    order: str = "morf",
    percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    noise: float = 0.0,
    output: str = "prob",
    rng: np.random.Generator | None = None,
) -> Curve:
    """ROAD: f_c after removing the most (order="morf") or least ("lerf") relevant p % of the pixels and
    imputing them (`linear_imputation`, noise σ = `noise` in input units); the curve starts at 0 % (the
    image itself) and its AUC is over the fraction removed."""
    x, rel = _check_image_map(net, x, relevance)
    cls = _check_class(net, cls)
    output = _check_output(output)
    rng = _check_generator(np.random.default_rng(0) if rng is None else rng)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    pcts = np.asarray(percentages, dtype=np.float64)
    if (
        pcts.ndim != 1
        or pcts.size == 0
        or (pcts <= 0).any()
        or (pcts >= 100).any()
        or (np.diff(pcts) <= 0).any()
    ):
        raise ValueError(
            f"percentages must be increasing numbers strictly between 0 and 100, got {percentages!r}"
        )
    ranked = _ranked(rel.ravel(), rng, descending=(order == "morf"))
    images = [x]
    fractions = [0.0]
    for p in pcts:
        count = int(rel.size * p / 100)
        mask = np.zeros(rel.size, dtype=bool)
        mask[ranked[:count]] = True
        images.append(linear_imputation(x, mask.reshape(rel.shape), noise, rng))
        fractions.append(count / rel.size)
    scores = class_scores(net, np.stack(images), cls, output)
    frac = np.asarray(fractions)
    settings = {"percentages": pcts.tolist(), "noise": float(noise), "output": output}
    return Curve(f"road_{order}", frac, scores, _auc(frac, scores), settings)


# -- faithfulness correlation ------------------------------------------------------------------------


def faithfulness_correlation(
    net: Any,
    x: Any,
    relevance: Any,
    cls: int,
    fill: np.ndarray,
    block: int = 1,
    subset: int | float = 0.1,
    runs: int = 50,
    output: str = "prob",
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Bhatt et al.'s faithfulness correlation over `runs` random subsets of `subset` blocks (an int, or a
    fraction of the blocks); block=1 = pixels. Returns {"correlation", "attribution_sums", "drops"}."""
    x, rel = _check_image_map(net, x, relevance)
    cls = _check_class(net, cls)
    output = _check_output(output)
    rng = _check_generator(np.random.default_rng(0) if rng is None else rng)
    if isinstance(runs, bool) or not isinstance(runs, int | np.integer) or runs < 2:
        raise ValueError(f"runs must be an integer >= 2, got {runs!r}")
    fill = np.asarray(fill, dtype=np.float32)
    if fill.shape != x.shape:
        raise ValueError(f"fill image shape {fill.shape} differs from the image's {x.shape}")
    _, height, width = x.shape
    boxes = block_boxes(height, width, block)
    n_blocks = boxes.shape[0]
    size = int(subset) if isinstance(subset, int | np.integer) else math.ceil(float(subset) * n_blocks)
    if not 1 <= size < n_blocks:
        raise ValueError(f"subset must pick 1..{n_blocks - 1} of the {n_blocks} blocks, got {subset!r}")
    labels = _block_labels(boxes, height, width)
    block_sum = np.bincount(labels.ravel(), weights=rel.ravel(), minlength=n_blocks)
    picks = [rng.choice(n_blocks, size=size, replace=False) for _ in range(runs)]
    masks = [np.isin(labels, p) for p in picks]
    base = class_scores(net, x[None], cls, output)[0]
    drops = base - _scores_of_masks(net, x, fill, masks, cls, output)
    sums = np.array([block_sum[p].sum() for p in picks])
    if np.ptp(sums) == 0 or np.ptp(drops) == 0:
        corr = float("nan")
    else:
        corr = float(np.corrcoef(sums, drops)[0, 1])
    return {"correlation": corr, "attribution_sums": sums, "drops": drops, "subset_blocks": size}


# -- controls ------------------------------------------------------------------------------------------


def random_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The random-map control: i.i.d. standard normal values (float32 H×W)."""
    return _check_generator(rng).standard_normal(tuple(shape)).astype(np.float32)


def constant_map(shape: tuple[int, int]) -> np.ndarray:
    """The all-equal control: every pixel 0 (no ranking; ties are broken at random by the metrics)."""
    return np.zeros(tuple(shape), dtype=np.float32)


# -- model randomisation --------------------------------------------------------------------------------


def learnable_layers(net: Any) -> list[str]:
    """The net's layers with learnable blobs, input to output (prototxt order)."""
    weights = net.get_weights()
    return [layer.name for layer in net.net_param.layer if layer.name in weights]


def randomised_weights(
    net: Any, layers: int | str, seed: int
) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """(weights, names): the net's weights with its top `layers` learnable layers ("all": every one)
    replaced by seeded draws from the prototxt's fillers (pda_repro.backends.fillers)."""
    from pda_repro.backends.fillers import initial_weights  # noqa: PLC0415

    names = learnable_layers(net)
    if layers == "all":
        count = len(names)
    elif isinstance(layers, int | np.integer) and not isinstance(layers, bool) and 1 <= layers <= len(names):
        count = int(layers)
    else:
        raise ValueError(f"layers must be 'all' or an integer in 1..{len(names)}, got {layers!r}")
    trained = net.get_weights()
    fresh = initial_weights(net.net_param, None, int(seed))
    chosen = names[len(names) - count :]
    return {name: (fresh[name] if name in chosen else trained[name]) for name in trained}, chosen


ExplainFn = Callable[[Any, np.ndarray, int], np.ndarray]


def randomisation_check(
    net: Any,
    explain_fn: ExplainFn,
    x: Any,
    cls: int,
    levels: Sequence[int | str] = (1, "all"),
    seed: int = 0,
    threshold: float = 0.5,
    mask: Any = None,
    trained_map: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Adebayo et al.'s model-parameter randomisation: for each level (top n learnable layers, or "all"),
    explain_fn(net, x, cls) -> H×W map on the randomised net vs the trained net's map. Rows: level, layers,
    spearman, spearman_abs, ssim and changed (= |spearman| < threshold; for a constant map: whether it is
    not the same map). The trained weights are restored."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    cls = _check_class(net, cls)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    trained = net.get_weights()
    base = np.asarray(explain_fn(net, x, cls) if trained_map is None else trained_map, dtype=np.float64)
    rows = []
    try:
        for level in levels:
            weights, names = randomised_weights(net, level, seed)
            net.set_weights(weights)
            m = np.asarray(explain_fn(net, x, cls), dtype=np.float64)
            rho = spearman(base, m, mask)
            rows.append(
                {
                    "level": f"top{level}" if level != "all" else "all",
                    "layers_randomised": len(names),
                    "layers": ",".join(names),
                    "spearman": rho,
                    "spearman_abs": spearman(np.abs(base), np.abs(m), mask),
                    "ssim": ssim(base, m, mask),
                    # |ρ| below the threshold; undefined ρ (a constant map): changed if the map is not the same
                    "changed": bool(abs(rho) < threshold)
                    if not np.isnan(rho)
                    else not np.array_equal(base, m),
                }
            )
            net.set_weights(trained)
    finally:
        net.set_weights(trained)
    return rows
