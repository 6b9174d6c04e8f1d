"""Efficient PDA (paper Algorithm 2) and its sampled variant (paper Fig. 15).

`epda`: one forward pass per window, the window replaced by its conditional mean E[x_w | x̂_w\\x_w]
(Algorithm 2, line 5): the normalised geometric mean of Eq. 11-15 pushed down to the input.
`epda_sampled`: the conditional mean replaced by the empirical mean of S samples (Fig. 15), to
separate sampling noise from the approximation error of Eq. 15.
"""

from __future__ import annotations

from pda_repro.methods.base import RunContext
from pda_repro.methods.pda import PDA
from pda_repro.methods.windows import Imputation, SamplerWindowMethod


class EfficientPDA(SamplerWindowMethod):
    """Algorithm 2: P(c|x\\w) ≈ P(c|x') with x'_w the conditional mean of the window."""

    name = "epda"
    uses = frozenset({"window", "outer", "stride", "sampler"})

    def imputation(self, ctx: RunContext) -> Imputation:
        """The sampler's conditional mean, one evaluation per window (Algorithm 2, lines 5-6)."""
        return Imputation(self.sampler, "conditional_mean")


class SampledEfficientPDA(PDA):
    """Fig. 15: efficient PDA with the conditional mean replaced by the mean of S samples.

    The same arguments as PDA (Algorithm 1); only the imputation differs: one evaluation per window at
    the empirical mean of the S samples instead of S evaluations."""

    name = "epda_sampled"

    def imputation(self, ctx: RunContext) -> Imputation:
        """The mean of S samples, one evaluation per window (Fig. 15)."""
        return Imputation(self.sampler, "empirical_mean", self.samples)
