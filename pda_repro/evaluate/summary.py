"""Means over images with percentile-bootstrap 95 % intervals (what the ranked bar charts and the README show)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BOOTSTRAP_RESAMPLES", "STRIDE_COMPARISON", "bootstrap_ci", "stride_choice", "summarise"]

BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(
    values: Any, rng: np.random.Generator, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95
) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values: the mean and the percentile bootstrap interval of the mean
    (`resamples` resamples of the n values with replacement). NaN values (undefined metrics) are left out;
    all-NaN gives NaNs and n = 0."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(v.mean()), float(lo), float(hi), int(v.size)


def summarise(frame: pd.DataFrame, by: Sequence[str], values: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """One row per group of `by`: for each column of `values` its mean, ci_low, ci_high and n (over rows =
    images), the bootstrap seeded from `seed` (the same numbers every time)."""
    rows = []
    for key, group in frame.groupby(list(by), sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for col in values:
            mean, lo, hi, n = bootstrap_ci(group[col], np.random.default_rng(seed))
            row.update({f"{col}_mean": mean, f"{col}_low": lo, f"{col}_high": hi, f"{col}_n": n})
        rows.append(row)
    return pd.DataFrame(rows)


STRIDE_COMPARISON = (
    "epda_stride1_vs_stride"  # agreement rows "epda_stride1_vs_stride<s>": map at stride 1 vs s
)


def stride_choice(
    agreement: pd.DataFrame, threshold: float = 0.9, min_images: int = 3, seed: int = 0
) -> tuple[pd.DataFrame, int]:
    """How far efficient PDA's stride can grow before its map stops ranking the pixels like stride 1's.

    From the agreement rows ``epda_stride1_vs_stride<s>`` (one per image: Spearman ρ of the stride-s map with
    the stride-1 map on the pixels both cover): per model and stride s the mean ρ with its bootstrap 95 %
    interval over images, and `kept` = at least `min_images` images and the interval's lower end ≥
    `threshold`. Returns (that table, sorted by model and stride, and the chosen stride): the largest s
    that every model measured at s keeps, with every smaller measured stride of those models kept too
    (1 when no coarser stride passes). A stride only some models measured counts for those models."""
    rows = agreement[agreement["comparison"].astype(str).str.startswith(STRIDE_COMPARISON)]
    columns = ["model", "stride", "spearman_mean", "spearman_low", "spearman_high", "spearman_n", "kept"]
    if rows.empty:
        return pd.DataFrame(columns=columns), 1
    rows = rows.assign(stride=rows["comparison"].str.slice(len(STRIDE_COMPARISON)).astype(int))
    table = summarise(rows, ["model", "stride"], ["spearman"], seed=seed)
    table["kept"] = (table["spearman_n"] >= min_images) & (table["spearman_low"] >= threshold)
    table = table.sort_values(["model", "stride"], kind="stable").reset_index(drop=True)
    choice = 1
    for s in sorted(table["stride"].unique()):
        at_most = table[table["stride"] <= s]
        models = set(table.loc[table["stride"] == s, "model"])
        if at_most[at_most["model"].isin(models)]["kept"].all():
            choice = int(s)
        else:
            break
    return table[columns], choice
