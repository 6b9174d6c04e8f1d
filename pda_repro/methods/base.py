"""What every explanation method shares: the run context it gets and the result it returns.

`explain()` validates the image and classes, runs the net once on the image, builds the method from
the METHODS registry and calls `Method.run(context)`. Methods never touch Caffe or torch directly:
they see only the Backend interface.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pda_repro.backends.base import Backend

ProgressCallback = Callable[[int, int], None]
"""Called after every batch of a long run with (evaluations done, evaluations in all)."""


@dataclass
class RunContext:
    """Everything a method needs for one image (already validated by explain())."""

    net: Backend
    image: np.ndarray  # (C, H, W) float32, finite
    classes: np.ndarray  # (n,) int64 class indices, in range
    probs: np.ndarray  # (K,) float32 P(c|x) of the image
    logits: np.ndarray  # (K,) float32
    batch: int
    rng: np.random.Generator
    progress: bool = True
    callback: ProgressCallback | None = None
    checkpoint: Path | None = None
    checkpoint_options: dict = field(default_factory=dict)  # every_batches / every_seconds
    window_subset: Any = None  # int (evenly spread), window ids, or None (all)
    executor: Any = None  # a pda_repro.methods.chunks.ChunkExecutor for window methods (None: in-process)


@dataclass
class MethodResult:
    maps: np.ndarray  # (n_classes, H, W)
    windows_evaluated: int = 0
    forward_passes: int = 0  # backend.forward calls (the initial one on the image is added by explain)
    backward_passes: int = 0  # backend gradient calls
    images_forwarded: int = 0
    timings: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # extra facts for Explanation.params


class Method(ABC):
    """One explanation method. Subclasses set `name`, `uses` and implement `validate` and `run`.

    `uses`: which of explain()'s generic arguments (window, outer, samples, stride, sampler, output)
    the method takes; explain() passes only those, plus the method's own keyword options.
    """

    name: ClassVar[str]
    uses: ClassVar[frozenset[str]] = frozenset()
    needs_rng: ClassVar[bool] = False
    checkpointable: ClassVar[bool] = False
    supports_window_subset: ClassVar[bool] = False

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword arguments the constructor accepts."""
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @abstractmethod
    def validate(self, net: Backend, image: np.ndarray) -> None:
        """Raise ValueError for arguments that cannot work on this net/image (before any forward)."""

    @abstractmethod
    def run(self, ctx: RunContext) -> MethodResult:
        """Compute the maps."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The method's parameters, JSON-able, for Explanation.params."""


def model_spec(net: Backend) -> Any:
    """The zoo ModelSpec a net was loaded from (load_backend sets `model_spec`), or None."""
    return getattr(net, "model_spec", None)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_output(value: object) -> str:
    if value not in ("prob", "logit"):
        raise ValueError(f"output must be 'prob' or 'logit', got {value!r}")
    return str(value)
