"""The one window loop shared by PDA, efficient PDA and occlusion (paper Algorithms 1 and 2).

A window method is three choices, and nothing else:
  * how a k×k window is imputed                 -> a `WindowImputation` (samples, a mean, a constant)
  * how many evaluations each window gets       -> `WindowImputation.evaluations_per_window` (S or 1)
  * how the evaluations are reduced             -> always the mean of the class probabilities
                                                   (Algorithm 1, line 10; with one evaluation it is
                                                   that evaluation, Algorithm 2, line 6)

`run_window_loop` does the rest for all of them. It splits the windows into fixed chunks -- the work
unit, `run_chunk`: the imputation gives a chunk's patches (its noise drawn from a generator derived
from one root seed and the chunk's index, so the batch size never changes which patch a window sees),
(window × imputation) pairs go, at most `batch` at a time and in batches aligned to the chunk's
start, to `backend.forward_windows` -- the image with those windows replaced; pasting + full forward
or incremental inference is the backend's choice -- and each window's class probabilities are summed.
An executor (pda_repro.parallel: in-process, or Ray actors on local cores or a cluster) runs the
chunks; the driver places each finished chunk's sums, so the result does not depend on the executor,
and checkpoints finished and unfinished chunks atomically for resume.

Then `weight_of_evidence` (Laplace correction + log2 odds, Algorithm 1 line 11) turns the
per-window probabilities into per-window WE, and `average_over_windows` gives each pixel the mean WE
of the windows that cover it (Algorithm 1, line 14), vectorised with a 2-D difference array.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from pda_repro.backends.base import Backend
from pda_repro.grid import WindowGrid
from pda_repro.methods.base import (
    Method,
    MethodResult,
    ProgressCallback,
    RunContext,
    check_positive_int,
)

# Chunks of windows share one generator. Their size depends only on how many draws a window needs
# (never on `batch`): about CHUNK_DRAWS imputed patches per chunk keeps memory small and the sampler's
# vectorised calls large.
CHUNK_DRAWS = 2560


# --------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------
def average_over_windows(
    values: np.ndarray, rows: np.ndarray, cols: np.ndarray, window: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean of per-window values over the windows covering each pixel (Algorithm 1, l. 14).

    values: (n_maps, n_windows); rows/cols: the windows' top-left corners. Returns maps
    (n_maps, height, width) float64 and counts (height, width) int64. Each window adds its value to a
    2-D difference array at its four corners; two cumulative sums give every pixel's sum. Pixels that
    no window covers get 0 (and count 0), never NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if values.ndim != 2 or values.shape[1] != rows.size or rows.shape != cols.shape:
        raise ValueError(f"values must be (n_maps, {rows.size}) for {rows.size} windows, got {values.shape}")
    k = window
    count_diff = np.zeros((height + 1, width + 1), dtype=np.int64)
    for r_sign, dr in ((1, 0), (-1, k)):
        for c_sign, dc in ((1, 0), (-1, k)):
            np.add.at(count_diff, (rows + dr, cols + dc), r_sign * c_sign)
    counts = count_diff.cumsum(0).cumsum(1)[:height, :width]
    covered = counts > 0
    maps = np.zeros((values.shape[0], height, width), dtype=np.float64)
    block = max(1, (1 << 22) // ((height + 1) * (width + 1)))  # classes per block: ~32 MB of diff array
    for start in range(0, values.shape[0], block):
        v = values[start : start + block]
        diff = np.zeros((v.shape[0], height + 1, width + 1), dtype=np.float64)
        for r_sign, dr in ((1, 0), (-1, k)):
            for c_sign, dc in ((1, 0), (-1, k)):
                np.add.at(diff, (slice(None), rows + dr, cols + dc), (r_sign * c_sign) * v)
        sums = diff.cumsum(1).cumsum(2)[:, :height, :width]
        maps[start : start + block] = np.where(covered, sums / np.maximum(counts, 1), 0.0)
    return maps, counts


# --------------------------------------------------------------------------------------------------
# Weight of evidence
# --------------------------------------------------------------------------------------------------
def laplace_correct(p: np.ndarray, train_size: int, num_classes: int) -> np.ndarray:
    """p <- (p·N + 1)/(N + K), as in Zintgraf et al.'s PDA code, so that log-odds stay finite."""
    return (np.asarray(p, dtype=np.float64) * train_size + 1.0) / (train_size + num_classes)


def log2_odds(p: np.ndarray) -> np.ndarray:
    """log2(p / (1 − p)) for p in (0, 1)."""
    p = np.asarray(p, dtype=np.float64)
    return np.log2(p) - np.log2(1.0 - p)


def weight_of_evidence(
    p_image: np.ndarray, p_marginal: np.ndarray, train_size: int, num_classes: int
) -> np.ndarray:
    """WE = log2 odds(c|x) − log2 odds(c|x\\w) of Laplace-corrected probabilities (Alg. 1, line 11).

    Positive: the window is evidence for the class (removing it lowers the class's odds)."""
    return log2_odds(laplace_correct(p_image, train_size, num_classes)) - log2_odds(
        laplace_correct(p_marginal, train_size, num_classes)
    )


# --------------------------------------------------------------------------------------------------
# Imputations (what a method plugs into the loop)
# --------------------------------------------------------------------------------------------------
class WindowImputation(ABC):
    """How one method fills windows.

    evaluations_per_window: forward passes per window (S for PDA, 1 otherwise); their class
    probabilities are averaged. draws_per_window: patches drawn per window (sizes the chunks).
    """

    evaluations_per_window: int = 1
    draws_per_window: int = 1

    @abstractmethod
    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Patches for the windows at (rows[i], cols[i]): float32 (W, evaluations_per_window, C, k, k)."""

    @abstractmethod
    def fingerprint(self) -> dict:
        """JSON-able description of everything that changes the imputed values (for checkpoints)."""


class SamplerImputation(WindowImputation):
    """An imputation that draws on a sampler (pda_repro.sampling); `kind` and `samples` (S, if it
    draws S per window) name it in checkpoints with the sampler's type and content hash."""

    kind: ClassVar[str]

    def __init__(self, sampler: Any, samples: int | None = None) -> None:
        self.sampler = sampler
        self.samples = samples

    def fingerprint(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        if self.samples is not None:
            out["samples"] = self.samples
        out["sampler"] = type(self.sampler).__name__
        out["sampler_hash"] = object_fingerprint(self.sampler)
        return out


def chunk_generator(root_seed: int, chunk_index: int) -> np.random.Generator:
    """The generator of one chunk of windows: independent streams from one root seed."""
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=(chunk_index,)))


def root_seed_from(rng: np.random.Generator) -> int:
    """The one root seed a run takes from the caller's generator."""
    return int(rng.integers(0, 2**63 - 1))


def array_fingerprint(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def object_fingerprint(obj: object) -> str:
    """Content hash of an object's array and scalar attributes (samplers: fitted parameters)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(obj).__qualname__.encode())
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if isinstance(value, np.ndarray):
            h.update(name.encode() + array_fingerprint(value).encode())
        elif isinstance(value, int | float | str | bool | tuple) or value is None:
            h.update(f"{name}={value!r}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Work units: chunks of windows
# --------------------------------------------------------------------------------------------------
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
    imputation: WindowImputation
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


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
@dataclass
class CheckpointState:
    """What a checkpoint holds: finished chunks with their windows' sums, unfinished ones with the
    evaluations done and the sums so far, and the timings of the runs that wrote it."""

    finished: dict[int, np.ndarray]
    partial: dict[int, tuple[int, np.ndarray]]
    timings: dict
    evaluations: int


@dataclass
class Checkpoint:
    """Atomic save/resume of the loop's finished and unfinished chunks.

    A run with `checkpoint=path` writes {identity, finished chunk ids + their windows' sums,
    unfinished chunks (evaluations done + sums so far), evaluations done ("cursor"), timings} to
    `path` (a temporary file in the same directory, then os.replace) whenever a chunk finishes, and,
    for the chunk running in this process, every `every_batches` batches or `every_seconds` seconds,
    whichever comes first. A rerun whose identity (method, parameters, image, net, weights, sampler,
    classes, root seed, windows) equals the saved one resumes -- with any number of workers; any
    difference is a ValueError naming the fields. The file is removed when the run completes (unless
    `remove_when_done` is False: then the caller removes it after writing its results).
    """

    path: Path
    identity: dict
    every_batches: int = 50
    every_seconds: float = 30.0
    remove_when_done: bool = True  # False: the caller removes it once its results are safely written

    def load(self) -> CheckpointState | None:
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                saved = json.loads(str(f["identity"]))
                cursor = int(f["cursor"])
                chunks = np.array(f["chunks"], dtype=np.int64)
                sizes = np.array(f["chunk_sizes"], dtype=np.int64)
                sums = np.array(f["sums"], dtype=np.float64)
                partial = np.array(f["partial"], dtype=np.int64).reshape(-1, 3)  # chunk, done, size
                partial_sums = np.array(f["partial_sums"], dtype=np.float64)
                timings = json.loads(str(f["timings"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ValueError(f"checkpoint {self.path} is not a readable PDA checkpoint: {exc}") from exc
        mine = json.loads(json.dumps(self.identity))  # normalise tuples -> lists like the saved copy
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {mine.get(k)!r}" for k in diff[:6])
            raise ValueError(
                f"checkpoint {self.path} was written by a run with other arguments ({details}); "
                "rerun with the same arguments to resume, or delete the file / pass another path"
            )
        if sums.shape[0] != sizes.sum() or partial_sums.shape[0] != partial[:, 2].sum():
            raise ValueError(f"checkpoint {self.path} is inconsistent (chunk sizes and sums disagree)")
        blocks = np.split(sums, np.cumsum(sizes)[:-1]) if chunks.size else []
        finished = dict(zip(chunks.tolist(), blocks, strict=True))
        parts = np.split(partial_sums, np.cumsum(partial[:, 2])[:-1]) if partial.size else []
        unfinished = {int(ci): (int(done), s) for (ci, done, _), s in zip(partial, parts, strict=True)}
        return CheckpointState(finished, unfinished, timings, cursor)

    def save(
        self,
        finished: dict[int, np.ndarray],
        partial: list[ChunkState],
        evaluations: int,
        timings: dict,
        n_classes: int,
    ) -> None:
        ids = sorted(finished)
        empty = np.zeros((0, n_classes), dtype=np.float64)
        arrays = {
            "identity": np.array(json.dumps(self.identity)),
            "cursor": np.array(evaluations, dtype=np.int64),
            "chunks": np.array(ids, dtype=np.int64),
            "chunk_sizes": np.array([finished[i].shape[0] for i in ids], dtype=np.int64),
            "sums": np.concatenate([finished[i] for i in ids]) if ids else empty,
            "partial": np.array([(s.chunk, s.done, s.sums.shape[0]) for s in partial], dtype=np.int64),
            "partial_sums": np.concatenate([s.sums for s in partial]) if partial else empty,
            "timings": np.array(json.dumps(timings)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
@dataclass
class WindowLoopResult:
    mean_probs: np.ndarray  # (n_windows, n_classes) float64: P(c|x\w) per window, requested classes
    forward_calls: int  # forward_windows calls made by this run, all workers (resumed work not counted)
    images_forwarded: int  # images in those calls
    resumed_evaluations: int  # evaluations taken from a checkpoint
    chunk_windows: int
    timings: dict = field(default_factory=dict)  # sampling / forward / other seconds (incl. resumed)
    executor: str = "in-process"
    workers: int = 1


class _LoopRun(ChunkSink):
    """The driver's side of one run: per-window sums, progress bar, callback and checkpoint."""

    def __init__(
        self,
        task: WindowTask,
        checkpoint: Checkpoint | None,
        progress: bool,
        callback: ProgressCallback | None,
        description: str,
    ) -> None:
        self.task, self.checkpoint, self.callback = task, checkpoint, callback
        self.sums = np.zeros((task.n_windows, task.classes.size), dtype=np.float64)
        self.finished_sums: dict[int, np.ndarray] = {}
        self.partial: dict[int, ChunkState] = {}  # unfinished chunks from the checkpoint
        self.live: ChunkState | None = None  # the chunk running in this process
        self.base_timings = {"sampling": 0.0, "forward": 0.0, "other": 0.0}
        self.done_evaluations = 0
        if checkpoint is not None:
            saved = checkpoint.load()
            if saved is not None:
                self._restore(saved)
        self.resumed = self.done_evaluations
        self.forward_calls = self.images = 0
        self.sampling = self.forward = 0.0  # this run's finished chunks
        self.started = self.last_save = time.perf_counter()
        self.batches_since_save = 0
        # one bar on the driver, in windows (an evaluation is 1/S of a window), over all workers
        self.bar = tqdm(
            total=task.n_windows,
            initial=self.done_evaluations // task.evaluations_per_window,
            unit="window",
            desc=description,
            disable=not progress,
            leave=False,
            smoothing=0.1,
        )

    def _restore(self, saved: CheckpointState) -> None:
        task, path = self.task, self.checkpoint.path if self.checkpoint else None
        n_cls = task.classes.size
        for ci, sums in saved.finished.items():
            if not 0 <= ci < task.n_chunks or sums.shape != (task.chunk_size(ci), n_cls):
                raise ValueError(
                    f"checkpoint {path} holds chunk {ci} with sums {sums.shape}; this run has "
                    f"{task.n_chunks} chunks of up to ({task.chunk_windows}, {n_cls})"
                )
            self.sums[task.chunk_slice(ci)] = sums
            self.finished_sums[ci] = sums
        for ci, (done, sums) in saved.partial.items():
            if (
                not 0 <= ci < task.n_chunks
                or ci in saved.finished
                or sums.shape != (task.chunk_size(ci), n_cls)
                or not 0 <= done <= task.chunk_evaluations(ci)
            ):
                raise ValueError(
                    f"checkpoint {path} holds unfinished chunk {ci} at evaluation {done} with sums "
                    f"{sums.shape}; this run has {task.n_chunks} chunks of up to ({task.chunk_windows}, {n_cls})"
                )
            self.partial[ci] = ChunkState(ci, done, sums)
        self.done_evaluations = sum(task.chunk_evaluations(ci) for ci in self.finished_sums) + sum(
            s.done for s in self.partial.values()
        )
        self.base_timings.update({k: float(v) for k, v in saved.timings.items() if k in self.base_timings})

    def pending(self) -> list[ChunkState]:
        """The chunks still to do, in chunk order (unfinished ones continue where they stopped)."""
        return [
            self.partial.get(ci) or ChunkState.fresh(self.task, ci)
            for ci in range(self.task.n_chunks)
            if ci not in self.finished_sums
        ]

    # -- ChunkSink ---------------------------------------------------------------------------------
    def advance(self, n: int, state: ChunkState | None = None) -> None:
        self.done_evaluations += n
        self.bar.update(self.done_evaluations // self.task.evaluations_per_window - self.bar.n)
        if state is not None:
            self.live = state
            self.batches_since_save += 1
            if self.checkpoint is not None and self.done_evaluations < self.task.total_evaluations:
                now = time.perf_counter()
                if (
                    self.batches_since_save >= self.checkpoint.every_batches
                    or now - self.last_save >= self.checkpoint.every_seconds
                ):
                    self.save()
        if self.callback is not None:
            self.callback(self.done_evaluations, self.task.total_evaluations)

    def finished(self, state: ChunkState) -> None:
        if state.done != self.task.chunk_evaluations(state.chunk):  # pragma: no cover - executor bug
            raise RuntimeError(f"chunk {state.chunk} reported finished at evaluation {state.done}")
        self.sums[self.task.chunk_slice(state.chunk)] = state.sums
        self.finished_sums[state.chunk] = state.sums
        self.partial.pop(state.chunk, None)
        if self.live is not None and self.live.chunk == state.chunk:
            self.live = None
        self.forward_calls += state.forward_calls
        self.images += state.images
        self.sampling += state.sampling
        self.forward += state.forward
        if self.checkpoint is not None and (
            len(self.finished_sums) < self.task.n_chunks or not self.checkpoint.remove_when_done
        ):  # the last chunk too when the caller removes the file: then a kill before its results
            self.save()  # are written loses nothing

    # -- checkpoint --------------------------------------------------------------------------------
    def timings(self) -> dict:
        live = self.live if self.live is not None else ChunkState(-1, 0, np.zeros((0, 0)))
        sampling, forward = self.sampling + live.sampling, self.forward + live.forward
        elapsed = time.perf_counter() - self.started
        return {
            "sampling": self.base_timings["sampling"] + sampling,
            "forward": self.base_timings["forward"] + forward,
            "other": self.base_timings["other"] + max(0.0, elapsed - sampling - forward),
        }

    def save(self) -> None:
        partial = dict(self.partial)
        if self.live is not None and not self.live.committing and self.live.done > 0:
            partial[self.live.chunk] = self.live
        self.checkpoint.save(
            self.finished_sums,
            [partial[ci] for ci in sorted(partial)],
            self.done_evaluations,
            self.timings(),
            self.task.classes.size,
        )
        self.last_save, self.batches_since_save = time.perf_counter(), 0

    def interrupted(self) -> None:
        """Ctrl-C: keep what is done. If the interrupt hit the few statements between a batch's
        accumulation and its count, that chunk's progress is left at the last periodic checkpoint."""
        if self.checkpoint is None or self.done_evaluations <= self.resumed:
            return
        if self.live is not None and self.live.committing:
            self.live = None
        self.save()


def run_window_loop(
    net: Backend,
    x: np.ndarray,
    window: int,
    rows: np.ndarray,
    cols: np.ndarray,
    imputation: WindowImputation,
    classes: np.ndarray,
    *,
    batch: int,
    root_seed: int,
    checkpoint: Checkpoint | None = None,
    progress: bool = True,
    callback: ProgressCallback | None = None,
    description: str = "windows",
    executor: ChunkExecutor | None = None,
) -> WindowLoopResult:
    """Evaluate every window's imputations and return each window's mean class probabilities.

    The windows are split into chunks of m (fixed per method: CHUNK_DRAWS // draws per window); a
    chunk is the work unit (`run_chunk`): its noise comes from `chunk_generator(root_seed, i)` and
    its evaluations are forwarded in batches of `batch` aligned to the chunk's start, so neither
    `batch`, a resume nor the executor (pda_repro.parallel: in-process by default, or Ray workers)
    changes which patch any evaluation sees, and every executor forwards the same batches: the sums,
    float64 in evaluation order per window, are bitwise the same.
    """
    chunk_windows = max(1, CHUNK_DRAWS // max(1, int(imputation.draws_per_window)))
    task = WindowTask(
        x=x,
        window=window,
        rows=np.asarray(rows, dtype=np.int64),
        cols=np.asarray(cols, dtype=np.int64),
        imputation=imputation,
        classes=np.asarray(classes, dtype=np.int64),
        batch=int(batch),
        root_seed=int(root_seed),
        chunk_windows=chunk_windows,
    )
    if executor is None:
        from pda_repro.parallel import InProcessExecutor  # noqa: PLC0415 - parallel imports this module

        executor = InProcessExecutor()
    run = _LoopRun(task, checkpoint, progress, callback, description)
    try:
        executor.run(net, task, run.pending(), run)
    except KeyboardInterrupt:
        run.interrupted()
        raise
    finally:
        run.bar.close()
    missing = task.n_chunks - len(run.finished_sums)
    if missing:  # pragma: no cover - an executor bug, never a silent partial map
        raise RuntimeError(f"executor {executor.name} returned with {missing} chunks unfinished")
    final = run.timings()
    if checkpoint is not None and checkpoint.remove_when_done:
        checkpoint.remove()
    return WindowLoopResult(
        mean_probs=run.sums / task.evaluations_per_window,
        forward_calls=run.forward_calls,
        images_forwarded=run.images,
        resumed_evaluations=run.resumed,
        chunk_windows=chunk_windows,
        timings=final,
        executor=executor.name,
        workers=executor.workers,
    )


# --------------------------------------------------------------------------------------------------
# Shared validation and the base class of PDA, efficient PDA and occlusion
# --------------------------------------------------------------------------------------------------
def net_fingerprint(net: Backend) -> dict:
    """Identity of a net for checkpoints: backend, prototxt hash, weights hash."""
    weights = net.get_weights()
    arrays = [a for name in sorted(weights) for a in weights[name]]
    return {
        "backend": net.name,
        "prototxt": hashlib.blake2b(net.net_param.SerializeToString(), digest_size=16).hexdigest(),
        "weights": array_fingerprint(*arrays) if arrays else "",
    }


def check_window_args(window: object, stride: object, image_shape: tuple[int, ...]) -> tuple[int, int]:
    """window in 1..min(H, W)-1 and stride >= 1, else ValueError naming the values."""
    window = check_positive_int("window", window)
    stride = check_positive_int("stride", stride)
    _, h, w = image_shape
    if window >= min(h, w):
        raise ValueError(f"window={window} must be smaller than the image ({h}×{w})")
    return window, stride


def check_outer(outer: object, window: int) -> int:
    outer = check_positive_int("outer", outer)
    if outer <= window:
        raise ValueError(f"outer={outer} must be larger than window={window}")
    if (outer - window) % 2:
        raise ValueError(
            f"outer - window must be even (outer patch centred on the window), got {outer} - {window}"
        )
    return outer


def check_sampler(sampler: object, method: str, window: int, outer: int | None, image: np.ndarray) -> None:
    """The sampler must exist, follow the imputer contract and fit this window, outer patch and image."""
    if sampler is None:
        raise ValueError(
            f"method {method!r} needs a sampler (e.g. pda_repro.sampling.PatchGaussian.fit(...) or "
            "MarginalSampler(images, k)); got sampler=None"
        )
    missing = [a for a in ("k", "channels", "sample_at", "mean_at") if not hasattr(sampler, a)]
    if missing:
        raise ValueError(f"sampler {type(sampler).__name__} lacks {', '.join(missing)} (imputer contract)")
    if sampler.k != window:
        raise ValueError(f"sampler {sampler!r} was fitted for window k={sampler.k}, but window={window}")
    sampler_outer = getattr(sampler, "l", None)
    if outer is not None and sampler_outer is not None and sampler_outer != outer:
        raise ValueError(f"sampler {sampler!r} was fitted for outer l={sampler_outer}, but outer={outer}")
    if sampler.channels != image.shape[0]:
        raise ValueError(
            f"sampler {sampler!r} models {sampler.channels} channels, the image has {image.shape[0]}"
        )
    check = getattr(sampler, "check", None)
    if check is not None:
        check(image)


class WindowMethod(Method):
    """PDA, efficient PDA and occlusion: the window loop, then WE per window, then per-pixel mean.

    Subclasses only say how to impute (`imputation`) -- Algorithm 1 vs 2 vs Zeiler & Fergus."""

    checkpointable: ClassVar[bool] = True
    supports_window_subset: ClassVar[bool] = True

    def __init__(self, window: int = 10, stride: int = 1, train_size: int | None = None) -> None:
        self.window = window
        self.stride = stride
        self.train_size = train_size

    @abstractmethod
    def imputation(self, ctx: RunContext) -> WindowImputation:
        """What fills the windows."""

    def validate(self, net: Backend, image: np.ndarray) -> None:
        self.window, self.stride = check_window_args(self.window, self.stride, image.shape)
        if self.train_size is None:
            raise ValueError(f"method {self.name!r} needs train_size (N of the Laplace correction)")
        self.train_size = check_positive_int("train_size", self.train_size)

    def params(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "train_size": self.train_size}

    def run(self, ctx: RunContext) -> MethodResult:
        _, h, w = ctx.image.shape
        grid = WindowGrid(h, w, self.window, self.stride)
        ids = grid.subset(ctx.window_subset)
        rows, cols = grid.corners(ids)
        imputation = self.imputation(ctx)
        root_seed = root_seed_from(ctx.rng) if self.needs_rng else 0
        checkpoint = None
        if ctx.checkpoint is not None:
            identity = {
                "format": 2,  # 2: chunks finished/unfinished (1: one cursor over all evaluations)
                "method": self.name,
                **self.params(),
                "imputation": imputation.fingerprint(),
                "classes": [int(c) for c in ctx.classes],
                "root_seed": root_seed,
                "image": array_fingerprint(ctx.image),
                "net": net_fingerprint(ctx.net),
                "windows": array_fingerprint(ids),
                "grid": [grid.n_rows, grid.n_cols],
                "chunk_draws": CHUNK_DRAWS,
            }
            checkpoint = Checkpoint(Path(ctx.checkpoint), identity, **ctx.checkpoint_options)
        loop = run_window_loop(
            ctx.net,
            ctx.image,
            self.window,
            rows,
            cols,
            imputation,
            ctx.classes,
            batch=ctx.batch,
            root_seed=root_seed,
            checkpoint=checkpoint,
            progress=ctx.progress,
            callback=ctx.callback,
            description=self.name,
            executor=ctx.executor,
        )
        t0 = time.perf_counter()
        n_cls = ctx.classes.size
        maps = np.empty((n_cls, h, w), dtype=np.float32)
        block = 64  # classes at a time: bounds the float64 temporaries for 1000-class nets
        for a in range(0, n_cls, block):
            we = weight_of_evidence(
                ctx.probs[ctx.classes[a : a + block]][:, None],
                loop.mean_probs[:, a : a + block].T,
                self.train_size,
                ctx.net.num_classes,
            )  # (classes in block, n_windows)
            maps[a : a + block], counts = average_over_windows(we, rows, cols, self.window, h, w)
        timings = dict(loop.timings)
        timings["other"] += time.perf_counter() - t0
        return MethodResult(
            maps=maps,
            windows_evaluated=int(ids.size),
            forward_passes=loop.forward_calls,
            images_forwarded=loop.images_forwarded,
            timings=timings,
            params={
                "windows_total": grid.n_windows,
                "root_seed": root_seed,
                "chunk_windows": loop.chunk_windows,
                "evaluations_per_window": imputation.evaluations_per_window,
                "resumed_evaluations": loop.resumed_evaluations,
                "executor": loop.executor,
                "workers": loop.workers,
                "pixels_uncovered": int((counts == 0).sum()),
                "units": "weight of evidence, log2 odds (Laplace-corrected)",
            },
        )


class SamplerWindowMethod(WindowMethod):
    """A window method whose windows come from a sampler fitted for window k and outer patch l:
    PDA (Algorithm 1) and efficient PDA (Algorithm 2)."""

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
