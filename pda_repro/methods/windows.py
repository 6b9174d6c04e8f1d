"""The one window loop shared by PDA, efficient PDA and occlusion (paper Algorithms 1 and 2).

A window method is three choices, and nothing else:
  * how a k×k window is imputed                 -> an `Imputation`: a sampler (WindowImputer) and
                                                   its kind (samples, a mean, a constant)
  * how many evaluations each window gets       -> `Imputation.evaluations_per_window` (S or 1)
  * how the evaluations are reduced             -> always the mean of the class probabilities
                                                   (Algorithm 1, line 10; with one evaluation it is
                                                   that evaluation, Algorithm 2, line 6)

`run_window_loop` does the rest for all of them. It splits the windows into fixed chunks -- the work
unit, `run_chunk` (pda_repro.methods.chunks): the imputation gives a chunk's patches (its noise drawn from a generator derived
from one root seed and the chunk's index, so the batch size never changes which patch a window sees),
(window × imputation) pairs go, at most `batch` at a time and in batches aligned to the chunk's
start, to `backend.forward_windows` -- the image with those windows replaced; pasting + full forward
or incremental inference is the backend's choice -- and each window's class probabilities are summed.
An executor (pda_repro.parallel: in-process, or Ray actors on local cores or a cluster) runs the
chunks; the driver places each finished chunk's sums, so the result does not depend on the executor,
and checkpoints finished and unfinished chunks atomically for resume (pda_repro.methods.checkpoint).

Then `weight_of_evidence` (Laplace correction + log2 odds, Algorithm 1 line 11) turns the
per-window probabilities into per-window WE, and `average_over_windows` gives each pixel the mean WE
of the windows that cover it (Algorithm 1, line 14), vectorised with a 2-D difference array.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.fingerprint import array_fingerprint, net_fingerprint
from pda_repro.grid import WindowGrid
from pda_repro.methods.base import (
    Method,
    MethodResult,
    ProgressCallback,
    RunContext,
    check_positive_int,
)
from pda_repro.methods.checkpoint import Checkpoint, LoopRun
from pda_repro.methods.chunks import ChunkExecutor, WindowTask, root_seed_from
from pda_repro.sampling import WindowImputer

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
# The imputation: what a method plugs into the loop
# --------------------------------------------------------------------------------------------------
IMPUTATION_KINDS = ("samples", "conditional_mean", "empirical_mean", "constant")


@dataclass(frozen=True)
class Imputation:
    """How the loop fills a window -- the one thing the window methods differ in: an imputer
    (pda_repro.sampling.WindowImputer) and which of its outputs become the window's evaluations.

      "samples"           S draws, each one evaluation (PDA, Algorithm 1 lines 6-9)
      "conditional_mean"  the imputer's mean, one evaluation (efficient PDA, Algorithm 2 lines 5-6)
      "empirical_mean"    the mean of S draws (float64 sum, float32 result), one evaluation (Fig. 15)
      "constant"          the fill of a ConstantFill, one evaluation (occlusion)
    """

    imputer: WindowImputer
    kind: str
    samples: int | None = None  # S, for "samples" and "empirical_mean"

    def __post_init__(self) -> None:
        if not isinstance(self.imputer, WindowImputer):
            raise TypeError(f"imputer must be a WindowImputer, got {type(self.imputer).__name__}")
        if self.kind not in IMPUTATION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(IMPUTATION_KINDS)}, got {self.kind!r}")
        if (self.samples is not None) != (self.kind in ("samples", "empirical_mean")):
            raise ValueError(f"imputation {self.kind!r} with samples={self.samples!r}")

    @property
    def evaluations_per_window(self) -> int:
        """Forward passes per window (S for PDA, 1 otherwise); their probabilities are averaged."""
        return self.samples if self.kind == "samples" else 1

    @property
    def draws_per_window(self) -> int:
        """Patches drawn per window (sizes the chunks)."""
        return self.samples if self.samples is not None else 1

    def impute(
        self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Patches for the windows at (rows[i], cols[i]): float32 (W, evaluations_per_window, C, k, k)."""
        if self.kind == "samples":
            return self.imputer.sample_at(x, rows, cols, self.samples, rng)
        if self.kind == "empirical_mean":
            draws = self.imputer.sample_at(x, rows, cols, self.samples, rng)
            return draws.mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
        return self.imputer.mean_at(x, rows, cols)[:, None]

    def fingerprint(self) -> dict:
        """JSON-able description of everything that changes the imputed values (for checkpoints)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.samples is not None:
            out["samples"] = self.samples
        return {**out, **self.imputer.fingerprint()}


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


def run_window_loop(
    net: Backend,
    x: np.ndarray,
    window: int,
    rows: np.ndarray,
    cols: np.ndarray,
    imputation: Imputation,
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
    run = LoopRun(task, checkpoint, progress, callback, description)
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
    if not isinstance(sampler, WindowImputer):
        raise ValueError(
            f"sampler {type(sampler).__name__} is not a pda_repro.sampling.WindowImputer (imputer contract)"
        )
    if sampler.k != window:
        raise ValueError(f"sampler {sampler!r} was fitted for window k={sampler.k}, but window={window}")
    if outer is not None and sampler.l is not None and sampler.l != outer:
        raise ValueError(f"sampler {sampler!r} was fitted for outer l={sampler.l}, but outer={outer}")
    if sampler.channels != image.shape[0]:
        raise ValueError(
            f"sampler {sampler!r} models {sampler.channels} channels, the image has {image.shape[0]}"
        )
    sampler.check(image)


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
    def imputation(self, ctx: RunContext) -> Imputation:
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
        sampler: WindowImputer | None = None,
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
