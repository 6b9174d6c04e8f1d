"""Agreement between two maps of the same image: Spearman rank correlation, SSIM, top-q pixel overlap.

All three compare maps on the pixels both maps cover (`mask`; a stride-s window map leaves its last rows and
columns uncovered). The maps may be in different units (log2 odds, probability differences, gradients):

* ``spearman(a, b)``   Pearson correlation of the pixel ranks (ties get their average rank), in [-1, 1];
                       NaN when one map is constant on the mask (no ranking to correlate).
* ``ssim(a, b)``       structural similarity (Wang et al. 2004) of the two maps, each first divided by its
                       largest |value| so that both lie in [-1, 1] (data range 2): 7×7 uniform windows,
                       sample covariances, K1 = 0.01, K2 = 0.03, the mean over all windows inside the
                       covered rectangle (scikit-image's ``structural_similarity`` computes it).
* ``top_overlap(a, b)`` |top(a) ∩ top(b)| / |top(a)|, top = the ⌈q·n⌉ pixels with the largest (most positive:
                       evidence *for* the class) values; 1 = the same pixels, q = the chance level.
                       Ties at the threshold are broken by a passed Generator (or by pixel order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["SSIM_WINDOW", "agreement", "covered_box", "spearman", "ssim", "top_overlap"]

SSIM_WINDOW = 7


def _pair(a: Any, b: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"maps must be two H×W arrays of the same shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("maps hold NaN or Inf values")
    m = np.ones(a.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != a.shape:
        raise ValueError(f"mask shape {m.shape} differs from the maps' {a.shape}")
    if m.sum() < 2:
        raise ValueError(f"mask covers {int(m.sum())} pixels; need at least 2")
    return a, b, m


def spearman(a: Any, b: Any, mask: Any = None) -> float:
    """Spearman rank correlation of two H×W maps over the mask's pixels (NaN if one is constant there)."""
    a, b, m = _pair(a, b, mask)
    x, y = a[m], b[m]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def covered_box(mask: Any) -> tuple[slice, slice]:
    """The bounding rectangle of a mask's True pixels, as two slices."""
    m = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask covers no pixel")
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _unit_scale(m: np.ndarray) -> np.ndarray:
    peak = np.abs(m).max()
    return m / peak if peak > 0 else m


def ssim(a: Any, b: Any, mask: Any = None) -> float:
    """SSIM of two maps, each scaled by its largest |value| (data range 2), on the mask's bounding box."""
    from skimage.metrics import structural_similarity  # noqa: PLC0415

    a, b, m = _pair(a, b, mask)
    rows, cols = covered_box(m)
    a, b = _unit_scale(a[rows, cols]), _unit_scale(b[rows, cols])
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}×{SSIM_WINDOW} covered pixels, got {a.shape}")
    return float(
        structural_similarity(
            a, b, win_size=SSIM_WINDOW, data_range=2.0, gaussian_weights=False, use_sample_covariance=True
        )
    )


def _top(values: np.ndarray, count: int, rng: np.random.Generator | None) -> np.ndarray:
    order = np.arange(values.size) if rng is None else rng.permutation(values.size)
    ranked = order[np.argsort(-values[order], kind="stable")]
    return ranked[:count]


def top_overlap(
    a: Any, b: Any, mask: Any = None, fraction: float = 0.1, rng: np.random.Generator | None = None
) -> float:
    """Share of a's top-`fraction` pixels (largest values) that are also among b's, over the mask."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    a, b, m = _pair(a, b, mask)
    x, y = a[m], b[m]
    count = max(1, math.ceil(fraction * x.size))
    top_a, top_b = _top(x, count, rng), _top(y, count, rng)
    return float(np.intersect1d(top_a, top_b).size / count)


def agreement(
    a: Any,
    b: Any,
    mask: Any = None,
    fraction: float = 0.1,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """All three numbers for one pair of maps: {"spearman", "ssim", "top_overlap"}."""
    return {
        "spearman": spearman(a, b, mask),
        "ssim": ssim(a, b, mask),
        "top_overlap": top_overlap(a, b, mask, fraction, rng),
    }
