"""Occlusion (Zeiler & Fergus): every window filled with a constant grey value.

Same loop, WE output (Laplace-corrected log2 odds) and per-pixel averaging as PDA, so the maps are
directly comparable. The default fill 0.0 is the grey of the training set's mean pixel for nets whose
preprocessing subtracts the mean (the ILSVRC nets); pass `value=` (a scalar or one value per
channel, in the net's preprocessed units) otherwise, e.g. 0.5 for MNIST's 0..1 pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.methods.base import RunContext
from pda_repro.methods.windows import Imputation, WindowMethod
from pda_repro.sampling import ConstantFill


class Occlusion(WindowMethod):
    """Zeiler & Fergus occlusion with PDA's weight-of-evidence output."""

    name = "occlusion"
    uses = frozenset({"window", "stride"})

    def __init__(
        self,
        window: int = 10,
        stride: int = 1,
        value: float | tuple[float, ...] = 0.0,
        train_size: int | None = None,
    ) -> None:
        super().__init__(window=window, stride=stride, train_size=train_size)
        self.value = value

    def validate(self, net: Backend, image: np.ndarray) -> None:
        super().validate(net, image)
        self._fill = ConstantFill(self.value, self.window, image.shape[0])  # checks the value

    def params(self) -> dict[str, Any]:
        value = np.asarray(self.value, dtype=np.float64)
        return {**super().params(), "value": value.tolist()}

    def imputation(self, ctx: RunContext) -> Imputation:
        """The fill value, one evaluation per window."""
        return Imputation(self._fill, "constant")
