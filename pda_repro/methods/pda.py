"""Prediction Difference Analysis, Zintgraf et al. (paper Algorithm 1).

Every k×k window is replaced by S samples from the sampler (the conditional Gaussian of the l×l
patch around it, or a marginal sampler); P(c|x\\w) is the arithmetic mean of the S class
probabilities (Eq. 9/10, Algorithm 1 line 10); WE and per-pixel averaging as in `windows`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.methods.base import RunContext, check_positive_int
from pda_repro.methods.windows import (
    WindowImputation,
    WindowMethod,
    check_outer,
    check_sampler,
    object_fingerprint,
)


class SampledImputation(WindowImputation):
    """S draws per window from the sampler; each is one evaluation (Algorithm 1, lines 6-9)."""

    def __init__(self, sampler: Any, samples: int) -> None:
        self.sampler = sampler
        self.evaluations_per_window = samples
        self.draws_per_window = samples

    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return self.sampler.sample_at(x, rows, cols, self.evaluations_per_window, rng)

    def fingerprint(self) -> dict:
        return {
            "kind": "samples",
            "samples": self.evaluations_per_window,
            "sampler": type(self.sampler).__name__,
            "sampler_hash": object_fingerprint(self.sampler),
        }


class PDA(WindowMethod):
    """Algorithm 1: S samples per window, P(c|x\\w) = mean of their probabilities."""

    name = "pda"
    uses = frozenset({"window", "outer", "samples", "stride", "sampler"})
    needs_rng = True

    def __init__(
        self,
        window: int = 10,
        outer: int = 18,
        samples: int = 10,
        stride: int = 1,
        sampler: Any = None,
        train_size: int | None = None,
    ) -> None:
        super().__init__(window=window, stride=stride, train_size=train_size)
        self.outer = outer
        self.samples = samples
        self.sampler = sampler

    def validate(self, net: Backend, image: np.ndarray) -> None:
        super().validate(net, image)
        self.outer = check_outer(self.outer, self.window)
        self.samples = check_positive_int("samples", self.samples)
        check_sampler(self.sampler, self.name, self.window, self.outer, image)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "outer": self.outer,
            "samples": self.samples,
            "sampler": repr(self.sampler),
        }

    def imputation(self, ctx: RunContext) -> WindowImputation:
        return SampledImputation(self.sampler, self.samples)
