"""The one window loop shared by PDA, efficient PDA and occlusion (paper Algorithms 1 and 2).

A window method is three choices, and nothing else:
  * how a k×k window is imputed                 -> a `WindowImputation` (samples, a mean, a constant)
  * how many evaluations each window gets       -> `WindowImputation.evaluations_per_window` (S or 1)
  * how the evaluations are reduced             -> always the mean of the class probabilities
                                                   (Algorithm 1, line 10; with one evaluation it is
                                                   that evaluation, Algorithm 2, line 6)

`run_window_loop` does the rest for all of them: it walks the windows in fixed chunks, asks the
imputation for each chunk's patches (its noise drawn from a generator derived from one root seed and
the chunk's index, so the batch size never changes which patch a window sees), hands (window ×
imputation) pairs, at most `batch` at a time, to `backend.forward_windows` -- the image with those
windows replaced; pasting + full forward or incremental inference is the backend's choice -- and
keeps per-window running sums of the requested classes' probabilities. It can checkpoint those sums atomically and resume.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from pda_repro.backends.base import Backend
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
@dataclass(frozen=True)
class WindowGrid:
    """All k×k windows of an H×W image whose top-left corners are at rows/cols 0, s, 2s, ... ≤ H−k.

    Windows are numbered row-major. With stride 1 there are (H−k+1)(W−k+1) of them (paper Sec. 2).
    When (H−k) is not a multiple of the stride the last rows/columns of pixels are covered by no
    window; they get the value 0 and the count 0 in `average_over_windows`.
    """

    height: int
    width: int
    window: int
    stride: int = 1

    @property
    def n_rows(self) -> int:
        return (self.height - self.window) // self.stride + 1

    @property
    def n_cols(self) -> int:
        return (self.width - self.window) // self.stride + 1

    @property
    def n_windows(self) -> int:
        return self.n_rows * self.n_cols

    def corners(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-left (rows, cols) pixel coordinates of the windows `ids` (default all), int64."""
        if ids is None:
            ids = np.arange(self.n_windows)
        ids = np.asarray(ids, dtype=np.int64)
        return (ids // self.n_cols) * self.stride, (ids % self.n_cols) * self.stride

    def subset(self, count: int | None) -> np.ndarray:
        """`count` window ids spread evenly over all windows (all of them when count is None).

        Used to time a run on a fixed fraction of the windows and extrapolate."""
        n = self.n_windows
        if count is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or not 1 <= count <= n:
            raise ValueError(
                f"window_subset must be an integer in 1..{n} (the number of windows), got {count!r}"
            )
        if count == 1:
            return np.array([n // 2], dtype=np.int64)
        # spacing (n-1)/(count-1) >= 1, so the rounded positions are distinct
        return np.round(np.linspace(0, n - 1, count)).astype(np.int64)


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
# Checkpoints
# --------------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """Atomic save/resume of the loop's running sums.

    A run with `checkpoint=path` writes {identity, next evaluation, running sums, timings} to `path`
    (a temporary file in the same directory, then os.replace) every `every_batches` batches or
    `every_seconds` seconds, whichever comes first. A rerun whose identity (method, parameters, image,
    net, weights, sampler, classes, root seed, windows) equals the saved one resumes; any difference is
    a ValueError naming the fields. The file is removed when the run completes (unless
    `remove_when_done` is False: then the caller removes it after writing its results).
    """

    path: Path
    identity: dict
    every_batches: int = 50
    every_seconds: float = 30.0
    remove_when_done: bool = True  # False: the caller removes it once its results are safely written

    def load(self) -> tuple[int, np.ndarray, dict] | None:
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                saved = json.loads(str(f["identity"]))
                cursor = int(f["cursor"])
                sums = np.array(f["sums"], dtype=np.float64)
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
        return cursor, sums, timings

    def save(self, cursor: int, sums: np.ndarray, timings: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    identity=np.array(json.dumps(self.identity)),
                    cursor=np.array(cursor, dtype=np.int64),
                    sums=sums,
                    timings=np.array(json.dumps(timings)),
                )
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
    forward_calls: int  # backend.forward calls made by this process (resumed work not counted)
    images_forwarded: int  # images in those calls
    resumed_evaluations: int  # evaluations taken from a checkpoint
    chunk_windows: int
    timings: dict = field(default_factory=dict)  # sampling / forward / other seconds (incl. resumed)


def _accumulate(sums: np.ndarray, win: np.ndarray, draw: np.ndarray, values: np.ndarray) -> None:
    """sums[win[e]] += values[e] for every evaluation e, each window's terms added in evaluation
    order (ascending draw), so the float64 sums do not depend on how evaluations were batched."""
    if draw.size and draw.min() == draw.max():  # one draw per window in this batch: windows are unique
        sums[win] += values
        return
    for s in np.unique(draw):  # within one draw index a window occurs at most once
        sel = draw == s
        sums[win[sel]] += values[sel]


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
) -> WindowLoopResult:
    """Evaluate every window's imputations and return each window's mean class probabilities.

    Evaluation e (global, window-major) is window e // S, imputation e % S. Batch b holds evaluations
    [b·batch, (b+1)·batch) -- fixed positions, so a resumed run forwards the same batches. Noise for
    windows [i·m, (i+1)·m) comes from `chunk_generator(root_seed, i)`, m fixed per method, so neither
    `batch` nor a resume changes which patch any evaluation sees. The probabilities of each window
    are summed in evaluation order in float64.
    """
    c = x.shape[0]
    k = window
    n_eval = int(imputation.evaluations_per_window)
    n_windows = rows.size
    total = n_windows * n_eval
    chunk_windows = max(1, CHUNK_DRAWS // max(1, int(imputation.draws_per_window)))
    sums = np.zeros((n_windows, classes.size), dtype=np.float64)
    timings = {"sampling": 0.0, "forward": 0.0, "other": 0.0}
    cursor = 0
    if checkpoint is not None:
        state = checkpoint.load()
        if state is not None:
            cursor, saved_sums, saved_timings = state
            if saved_sums.shape != sums.shape or not 0 <= cursor <= total:
                raise ValueError(
                    f"checkpoint {checkpoint.path} holds sums {saved_sums.shape} at evaluation {cursor}; "
                    f"this run needs {sums.shape} and at most {total} evaluations"
                )
            sums = saved_sums
            timings.update({k_: float(v) for k_, v in saved_timings.items() if k_ in timings})
    resumed = cursor
    started = time.perf_counter()
    run_sampling = run_forward = 0.0

    cached_chunk: tuple[int, np.ndarray] | None = None
    forward_calls = images = 0
    last_save_time, batches_since_save = time.perf_counter(), 0

    committing = False
    bar = tqdm(total=total, initial=cursor, unit="img", desc=description, disable=not progress, leave=False)
    try:
        while cursor < total:
            stop = min(total, (cursor // batch + 1) * batch)
            evals = np.arange(cursor, stop, dtype=np.int64)
            win, draw = evals // n_eval, evals % n_eval
            n = evals.size
            patches = np.empty((n, c, k, k), dtype=np.float32)
            chunk_of = win // chunk_windows
            for ci in np.unique(chunk_of):
                ci = int(ci)
                if cached_chunk is None or cached_chunk[0] != ci:
                    ids = slice(ci * chunk_windows, min(n_windows, (ci + 1) * chunk_windows))
                    t0 = time.perf_counter()
                    imputed = imputation.impute(x, rows[ids], cols[ids], chunk_generator(root_seed, ci))
                    run_sampling += time.perf_counter() - t0
                    expected = (ids.stop - ids.start, n_eval, c, k, k)
                    if imputed.shape != expected:
                        raise RuntimeError(f"imputation returned {imputed.shape}, expected {expected}")
                    cached_chunk = (ci, imputed)
                sel = chunk_of == ci
                patches[sel] = cached_chunk[1][win[sel] - ci * chunk_windows, draw[sel]]
            t0 = time.perf_counter()
            probs, _ = net.forward_windows(x, rows[win], cols[win], patches)
            run_forward += time.perf_counter() - t0
            committing = True  # from here until the cursor moves, sums and cursor may disagree
            _accumulate(sums, win, draw, probs[:, classes].astype(np.float64))
            forward_calls += 1
            images += n
            cursor = stop
            committing = False
            batches_since_save += 1
            if checkpoint is not None and cursor < total:
                now = time.perf_counter()
                if (
                    batches_since_save >= checkpoint.every_batches
                    or now - last_save_time >= checkpoint.every_seconds
                ):
                    checkpoint.save(cursor, sums, _timings(timings, run_sampling, run_forward, started))
                    last_save_time, batches_since_save = now, 0
            bar.update(n)
            if callback is not None:
                callback(cursor, total)
    except KeyboardInterrupt:
        # Ctrl-C: keep what is done. Sums and cursor agree unless the interrupt hit the few statements
        # between the forward pass and the cursor update; then the last periodic checkpoint stands.
        if checkpoint is not None and not committing and cursor > resumed:
            checkpoint.save(cursor, sums, _timings(timings, run_sampling, run_forward, started))
        raise
    finally:
        bar.close()
    final = _timings(timings, run_sampling, run_forward, started)
    if checkpoint is not None and checkpoint.remove_when_done:
        checkpoint.remove()
    return WindowLoopResult(
        mean_probs=sums / n_eval,
        forward_calls=forward_calls,
        images_forwarded=images,
        resumed_evaluations=resumed,
        chunk_windows=chunk_windows,
        timings=final,
    )


def _timings(previous: dict, sampling: float, forward: float, started: float) -> dict:
    elapsed = time.perf_counter() - started
    out = {
        "sampling": previous["sampling"] + sampling,
        "forward": previous["forward"] + forward,
    }
    out["other"] = previous["other"] + max(0.0, elapsed - sampling - forward)
    return out


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
                "format": 1,
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
