"""Efficient PDA (paper Algorithm 2) and its sampled variant (paper Fig. 15).

`epda`: one forward pass per window, the window replaced by its conditional mean E[x_w | x̂_w\\x_w]
(Algorithm 2, line 5): the normalised geometric mean of Eq. 11-15 pushed down to the input.
`epda_sampled`: the conditional mean replaced by the empirical mean of S samples (Fig. 15), to
separate sampling noise from the approximation error of Eq. 15.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.methods.base import RunContext
from pda_repro.methods.pda import PDA
from pda_repro.methods.windows import (
    WindowImputation,
    WindowMethod,
    check_outer,
    check_sampler,
    object_fingerprint,
)


class MeanImputation(WindowImputation):
    """The sampler's conditional mean, one evaluation per window (Algorithm 2, lines 5-6)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return self.sampler.mean_at(x, rows, cols)[:, None]

    def fingerprint(self) -> dict:
        return {
            "kind": "conditional_mean",
            "sampler": type(self.sampler).__name__,
            "sampler_hash": object_fingerprint(self.sampler),
        }


class EmpiricalMeanImputation(WindowImputation):
    """The mean of S samples (float64 sum, float32 result), one evaluation per window (Fig. 15)."""

    def __init__(self, sampler: Any, samples: int) -> None:
        self.sampler = sampler
        self.samples = samples
        self.draws_per_window = samples

    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        draws = self.sampler.sample_at(x, rows, cols, self.samples, rng)
        return draws.mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)

    def fingerprint(self) -> dict:
        return {
            "kind": "empirical_mean",
            "samples": self.samples,
            "sampler": type(self.sampler).__name__,
            "sampler_hash": object_fingerprint(self.sampler),
        }


class EfficientPDA(WindowMethod):
    """Algorithm 2: P(c|x\\w) ≈ P(c|x') with x'_w the conditional mean of the window."""

    name = "epda"
    uses = frozenset({"window", "outer", "stride", "sampler"})

    def __init__(
        self,
        window: int = 10,
        outer: int = 18,
        stride: int = 1,
        sampler: Any = None,
        train_size: int | None = None,
    ) -> None:
        super().__init__(window=window, stride=stride, train_size=train_size)
        self.outer = outer
        self.sampler = sampler

    def validate(self, net: Backend, image: np.ndarray) -> None:
        super().validate(net, image)
        self.outer = check_outer(self.outer, self.window)
        check_sampler(self.sampler, self.name, self.window, self.outer, image)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "outer": self.outer, "sampler": repr(self.sampler)}

    def imputation(self, ctx: RunContext) -> WindowImputation:
        return MeanImputation(self.sampler)


class SampledEfficientPDA(PDA):
    """Fig. 15: efficient PDA with the conditional mean replaced by the mean of S samples.

    The same arguments as PDA (Algorithm 1); only the imputation differs: one evaluation per window at
    the empirical mean of the S samples instead of S evaluations."""

    name = "epda_sampled"

    def imputation(self, ctx: RunContext) -> WindowImputation:
        return EmpiricalMeanImputation(self.sampler, self.samples)
