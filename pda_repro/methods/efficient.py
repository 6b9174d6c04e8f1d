"""Efficient PDA (paper Algorithm 2) and its sampled variant (paper Fig. 15).

`epda`: one forward pass per window, the window replaced by its conditional mean E[x_w | x̂_w\\x_w]
(Algorithm 2, line 5): the normalised geometric mean of Eq. 11-15 pushed down to the input.
`epda_sampled`: the conditional mean replaced by the empirical mean of S samples (Fig. 15), to
separate sampling noise from the approximation error of Eq. 15.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pda_repro.methods.base import RunContext
from pda_repro.methods.pda import PDA
from pda_repro.methods.windows import SamplerImputation, SamplerWindowMethod, WindowImputation


class MeanImputation(SamplerImputation):
    """The sampler's conditional mean, one evaluation per window (Algorithm 2, lines 5-6)."""

    kind = "conditional_mean"

    def __init__(self, sampler: Any) -> None:
        super().__init__(sampler)

    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return self.sampler.mean_at(x, rows, cols)[:, None]


class EmpiricalMeanImputation(SamplerImputation):
    """The mean of S samples (float64 sum, float32 result), one evaluation per window (Fig. 15)."""

    kind = "empirical_mean"

    def __init__(self, sampler: Any, samples: int) -> None:
        super().__init__(sampler, samples)
        self.draws_per_window = samples

    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        draws = self.sampler.sample_at(x, rows, cols, self.samples, rng)
        return draws.mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)


class EfficientPDA(SamplerWindowMethod):
    """Algorithm 2: P(c|x\\w) ≈ P(c|x') with x'_w the conditional mean of the window."""

    name = "epda"
    uses = frozenset({"window", "outer", "stride", "sampler"})

    def imputation(self, ctx: RunContext) -> WindowImputation:
        return MeanImputation(self.sampler)


class SampledEfficientPDA(PDA):
    """Fig. 15: efficient PDA with the conditional mean replaced by the mean of S samples.

    The same arguments as PDA (Algorithm 1); only the imputation differs: one evaluation per window at
    the empirical mean of the S samples instead of S evaluations."""

    name = "epda_sampled"

    def imputation(self, ctx: RunContext) -> WindowImputation:
        return EmpiricalMeanImputation(self.sampler, self.samples)
