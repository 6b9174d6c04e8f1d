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
from pda_repro.methods.windows import Imputation, SamplerWindowMethod


class PDA(SamplerWindowMethod):
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
        super().__init__(window=window, outer=outer, stride=stride, sampler=sampler, train_size=train_size)
        self.samples = samples

    def validate(self, net: Backend, image: np.ndarray) -> None:
        self.samples = check_positive_int("samples", self.samples)
        super().validate(net, image)

    def params(self) -> dict[str, Any]:
        params = super().params()
        sampler = params.pop("sampler")
        return {**params, "samples": self.samples, "sampler": sampler}

    def imputation(self, ctx: RunContext) -> Imputation:
        """S draws per window, each one evaluation (Algorithm 1, lines 6-9)."""
        return Imputation(self.sampler, "samples", self.samples)
