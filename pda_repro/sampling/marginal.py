"""The samplers that need no fit: the marginal sampler (dataset images) and the constant fill."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from pda_repro.sampling.base import (
    WindowImputer,
    _check_count,
    _check_dtype,
    _check_generator,
    _check_image,
    _check_window_sizes,
    _check_windows,
)


class MarginalSampler(WindowImputer):
    """A window's values taken at the same location from images of a dataset (marginal sampling).

    ``mode="random"`` (default) draws, for every window and draw, a dataset image uniformly at random (with
    replacement) from the passed generator; ``mode="first"`` uses images 0..n−1 for every window, as the
    original PDA code did with its first S images.  mean_at is the dataset mean at that location."""

    def __init__(self, images: ArrayLike | Sequence[np.ndarray], k: int, mode: str = "random") -> None:
        _check_window_sizes(k)
        if mode not in ("random", "first"):
            raise ValueError(f"mode must be 'random' or 'first', got {mode!r}")
        data = np.asarray(images, dtype=np.float32)
        if data.ndim != 4 or data.shape[0] < 1:
            raise ValueError(f"images must be an N×C×H×W array with N >= 1, got shape {data.shape}")
        if data.shape[2] < k or data.shape[3] < k:
            raise ValueError(f"window k={k} is larger than the images ({data.shape[2]}×{data.shape[3]})")
        finite = np.isfinite(data).reshape(data.shape[0], -1).all(axis=1)
        if not finite.all():
            raise ValueError(
                f"images contain NaN/inf values (first bad image index {int(np.argmin(finite))})"
            )
        self.images = np.ascontiguousarray(data)
        self.k = int(k)
        self.channels = int(data.shape[1])
        self.mode = mode
        self._mean_image = data.mean(axis=0, dtype=np.float64)

    def __repr__(self) -> str:
        # What a run records (checkpoint identity, result params): the same for the same data in any
        # process; the data themselves are hashed by fingerprint().
        n, c, h, w = self.images.shape
        return f"MarginalSampler(k={self.k}, images={n}x{c}x{h}x{w}, mode={self.mode!r})"

    def check(self, x: ArrayLike) -> None:
        _check_image(x, self.channels, self.k, "window k", np.dtype(np.float32))
        shape = np.shape(x)
        if shape != self.images.shape[1:]:
            raise ValueError(f"image shape {shape} differs from the dataset images' {self.images.shape[1:]}")

    def _windows(self, x: ArrayLike, rows: ArrayLike, cols: ArrayLike):
        self.check(x)
        return _check_windows(rows, cols, self.k, self.images.shape[2], self.images.shape[3])

    def sample_at(
        self,
        x: ArrayLike,
        rows: ArrayLike,
        cols: ArrayLike,
        n: int,
        rng: np.random.Generator,
        dtype: DTypeLike = np.float32,
    ) -> np.ndarray:
        """(W, n, C, k, k): window i from n dataset images (random with replacement, or the first n)."""
        dt = _check_dtype(dtype)
        rng = _check_generator(rng)
        n = _check_count(n)
        rows, cols = self._windows(x, rows, cols)
        n_images = self.images.shape[0]
        if self.mode == "first":
            if n > n_images:
                raise ValueError(f"mode='first' needs n <= number of images ({n_images}), got n={n}")
            which = np.broadcast_to(np.arange(n), (rows.size, n))
        else:
            which = rng.integers(0, n_images, size=(rows.size, n))
        view = np.lib.stride_tricks.sliding_window_view(self.images, (self.k, self.k), axis=(2, 3))
        # advanced indices on axes 0, 2, 3 around a slice: the broadcast (W, n) axes come first
        out = view[which, :, rows[:, None], cols[:, None]]
        return out.astype(dt, copy=False)

    def mean_at(
        self, x: ArrayLike, rows: ArrayLike, cols: ArrayLike, dtype: DTypeLike = np.float32
    ) -> np.ndarray:
        """The dataset mean over the window: (W, C, k, k)."""
        dt = _check_dtype(dtype)
        rows, cols = self._windows(x, rows, cols)
        view = np.lib.stride_tricks.sliding_window_view(self._mean_image, (self.k, self.k), axis=(1, 2))
        return np.moveaxis(view[:, rows, cols], 0, 1).astype(dt)


class ConstantFill(WindowImputer):
    """Occlusion: every window is filled with a constant (a scalar or one value per channel)."""

    def __init__(self, value: float | Sequence[float], k: int, channels: int) -> None:
        _check_window_sizes(k)
        _check_count(channels, "channels")
        v = np.asarray(value, dtype=np.float64)
        if v.ndim == 0:
            v = np.full(channels, float(v))
        if v.shape != (channels,):
            raise ValueError(f"value must be a scalar or {channels} per-channel values, got {value!r}")
        if not np.isfinite(v).all():
            raise ValueError(f"value must be finite, got {value!r}")
        self.value = v
        self.k = int(k)
        self.channels = int(channels)

    def __repr__(self) -> str:
        return f"ConstantFill(value={np.asarray(self.value).tolist()}, k={self.k}, channels={self.channels})"

    def fingerprint(self) -> dict:
        """The fill value is all that changes the imputed windows."""
        return {"value": [float(v) for v in self.value]}

    def mean_at(
        self, x: ArrayLike, rows: ArrayLike, cols: ArrayLike, dtype: DTypeLike = np.float32
    ) -> np.ndarray:
        """The constant, (W, C, k, k)."""
        dt = _check_dtype(dtype)
        self.check(x)
        rows, _ = _check_windows(rows, cols, self.k, np.shape(x)[1], np.shape(x)[2])
        fill = np.broadcast_to(self.value.astype(dt)[:, None, None], (self.channels, self.k, self.k))
        return np.broadcast_to(fill, (rows.size, *fill.shape)).copy()

    def sample_at(
        self,
        x: ArrayLike,
        rows: ArrayLike,
        cols: ArrayLike,
        n: int,
        rng: np.random.Generator,
        dtype: DTypeLike = np.float32,
    ) -> np.ndarray:
        """The constant repeated n times per window, (W, n, C, k, k); `rng` is not used."""
        _check_generator(rng)
        n = _check_count(n)
        means = self.mean_at(x, rows, cols, dtype=dtype)
        return np.broadcast_to(means[:, None], (means.shape[0], n, *means.shape[1:])).copy()
