"""The work unit of the window loop: a chunk of one image's windows (paper Algorithms 1 and 2).

`WindowTask` is everything a worker needs for one image (picklable); `run_chunk` finishes one chunk
on a net; `ChunkSink` is what an executor reports to and `ChunkExecutor` what runs the chunks
(pda_repro.parallel: in-process, Ray actors, auto). A chunk's noise comes from its own generator
(`chunk_generator`) and its batches start at the chunk's first evaluation, so every executor forwards
the same batches and gets bitwise the same sums.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pda_repro.backends.base import Backend

if TYPE_CHECKING:
    from pda_repro.methods.windows import Imputation


def chunk_generator(root_seed: int, chunk_index: int) -> np.random.Generator:
    """The generator of one chunk of windows: independent streams from one root seed."""
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=(chunk_index,)))


def root_seed_from(rng: np.random.Generator) -> int:
    """The one root seed a run takes from the caller's generator."""
    return int(rng.integers(0, 2**63 - 1))


@dataclass
class WindowTask:
    """One image's window evaluations split into chunks -- everything a worker needs (picklable).

    Chunk i holds windows [i·m, (i+1)·m) of rows/cols (m = chunk_windows, fixed per method); its
    patches come from `chunk_generator(root_seed, i)`. A chunk's evaluations are numbered
    window-major (evaluation e is its window e // S, imputation e % S) and forwarded in batches of
    `batch` that start at the chunk's first evaluation, so every executor -- in-process or any number
    of workers -- forwards exactly the same batches and gets bitwise the same sums.
    """

    x: np.ndarray  # (C, H, W) float32
    window: int
    rows: np.ndarray  # (n_windows,) int64 top-left corners
    cols: np.ndarray
    imputation: Imputation
    classes: np.ndarray  # (n_classes,) int64
    batch: int
    root_seed: int
    chunk_windows: int

    @property
    def evaluations_per_window(self) -> int:
        return int(self.imputation.evaluations_per_window)

    @property
    def n_windows(self) -> int:
        return int(self.rows.size)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_windows // self.chunk_windows)

    @property
    def total_evaluations(self) -> int:
        return self.n_windows * self.evaluations_per_window

    def chunk_slice(self, chunk: int) -> slice:
        """The chunk's windows (positions in rows/cols)."""
        return slice(chunk * self.chunk_windows, min(self.n_windows, (chunk + 1) * self.chunk_windows))

    def chunk_size(self, chunk: int) -> int:
        s = self.chunk_slice(chunk)
        return s.stop - s.start

    def chunk_evaluations(self, chunk: int) -> int:
        return self.chunk_size(chunk) * self.evaluations_per_window


@dataclass
class ChunkState:
    """One chunk's progress: evaluations done and the float64 class-probability sums of its windows
    so far (what a checkpoint keeps of an unfinished chunk), plus the counters of this run's work."""

    chunk: int
    done: int
    sums: np.ndarray  # (windows in the chunk, n_classes) float64
    forward_calls: int = 0
    images: int = 0
    sampling: float = 0.0
    forward: float = 0.0
    committing: bool = False  # True between adding a batch to `sums` and counting it in `done`

    @classmethod
    def fresh(cls, task: WindowTask, chunk: int) -> ChunkState:
        return cls(chunk, 0, np.zeros((task.chunk_size(chunk), task.classes.size), dtype=np.float64))


def _accumulate(sums: np.ndarray, win: np.ndarray, draw: np.ndarray, values: np.ndarray) -> None:
    """sums[win[e]] += values[e] for every evaluation e, each window's terms added in evaluation
    order (ascending draw), so the float64 sums do not depend on how evaluations were batched."""
    if draw.size and draw.min() == draw.max():  # one draw per window in this batch: windows are unique
        sums[win] += values
        return
    for s in np.unique(draw):  # within one draw index a window occurs at most once
        sel = draw == s
        sums[win[sel]] += values[sel]


def run_chunk(
    net: Backend,
    task: WindowTask,
    state: ChunkState,
    on_batch: Callable[[ChunkState, int], None] | None = None,
) -> ChunkState:
    """Finish one chunk on `net` -- the one work unit of every executor.

    Imputes the chunk's windows from the chunk's own generator, forwards its remaining evaluations
    (from `state.done`) `task.batch` at a time through `net.forward_windows`, and adds each window's
    requested class probabilities to `state.sums` in evaluation order. on_batch(state, n) runs after
    each batch of n evaluations. Returns `state`, updated in place."""
    c, k, n_eval = task.x.shape[0], task.window, task.evaluations_per_window
    ids = task.chunk_slice(state.chunk)
    total = task.chunk_evaluations(state.chunk)
    if state.done >= total:
        return state
    rows, cols = task.rows[ids], task.cols[ids]
    t0 = time.perf_counter()
    imputed = task.imputation.impute(task.x, rows, cols, chunk_generator(task.root_seed, state.chunk))
    state.sampling += time.perf_counter() - t0
    expected = (ids.stop - ids.start, n_eval, c, k, k)
    if imputed.shape != expected:
        raise RuntimeError(f"imputation returned {imputed.shape}, expected {expected}")
    while state.done < total:
        stop = min(total, (state.done // task.batch + 1) * task.batch)
        evals = np.arange(state.done, stop, dtype=np.int64)
        win, draw = evals // n_eval, evals % n_eval
        patches = np.ascontiguousarray(imputed[win, draw], dtype=np.float32)
        t0 = time.perf_counter()
        probs, _ = net.forward_windows(task.x, rows[win], cols[win], patches)
        state.forward += time.perf_counter() - t0
        values = probs[:, task.classes].astype(np.float64)
        state.committing = True  # from here until `done` moves, sums and done may disagree
        _accumulate(state.sums, win, draw, values)
        state.done = stop
        state.committing = False
        state.forward_calls += 1
        state.images += evals.size
        if on_batch is not None:
            on_batch(state, int(evals.size))
    return state


class ChunkSink(ABC):
    """What an executor reports to (the loop on the driver)."""

    @abstractmethod
    def advance(self, n: int, state: ChunkState | None = None) -> None:
        """n more evaluations are done (negative: work lost with a dead worker, to be redone).
        `state`: the chunk in this process whose batch just finished (in-process executor only)."""

    @abstractmethod
    def finished(self, state: ChunkState) -> None:
        """A chunk is complete; its sums are final."""


class ChunkExecutor(ABC):
    """Runs chunks of one image's windows (pda_repro.parallel: in-process, Ray actors, auto)."""

    name: str = "in-process"
    workers: int = 1

    @abstractmethod
    def run(self, net: Backend, task: WindowTask, states: list[ChunkState], sink: ChunkSink) -> None:
        """Bring every state to completion with run_chunk and report each to sink.finished."""
