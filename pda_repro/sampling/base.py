"""The imputer contract (`WindowImputer`, described in pda_repro.sampling), the argument checks the
samplers share, and the BLAS thread limit they sample under (threadpoolctl)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from pda_repro.fingerprint import object_fingerprint
from pda_repro.grid import WindowGrid, window_starts

_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_dtype(dtype: DTypeLike) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _check_generator(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_count(n: object, name: str = "n") -> int:
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _check_window_sizes(k: int, l: int | None = None) -> None:  # noqa: E741
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"window size k must be a positive integer, got {k!r}")
    if l is None:
        return
    if not isinstance(l, int | np.integer) or l <= k:
        raise ValueError(f"outer patch size l must be an integer larger than the window k={k}, got l={l!r}")
    if (l - k) % 2:
        raise ValueError(
            f"l - k must be even so the outer patch is centred on the window, got k={k}, l={l} (l-k={l - k})"
        )


def _check_image(x: ArrayLike, channels: int, min_side: int, min_name: str, dtype: np.dtype) -> np.ndarray:
    """x as a C-contiguous C×H×W array of `dtype`; ValueError naming the values if it does not fit."""
    arr = np.asarray(x)
    if arr.ndim != 3:
        raise ValueError(f"expected one image C×H×W, got an array of shape {arr.shape}")
    if arr.shape[0] != channels:
        raise ValueError(
            f"image has {arr.shape[0]} channels (shape {arr.shape}) but the sampler models {channels}"
        )
    if arr.shape[1] < min_side or arr.shape[2] < min_side:
        raise ValueError(f"{min_name}={min_side} is larger than the image ({arr.shape[1]}×{arr.shape[2]})")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"image must hold real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"image contains {bad} NaN/inf values")
    return arr


def _check_windows(rows: ArrayLike, cols: ArrayLike, k: int, height: int, width: int):
    r = np.asarray(rows)
    c = np.asarray(cols)
    if r.ndim != 1 or c.ndim != 1 or r.shape != c.shape:
        raise ValueError(
            f"rows and cols must be 1-D arrays of equal length, got shapes {r.shape} and {c.shape}"
        )
    if r.size and not (np.issubdtype(r.dtype, np.integer) and np.issubdtype(c.dtype, np.integer)):
        raise ValueError(f"rows and cols must be integers, got dtypes {r.dtype} and {c.dtype}")
    r = r.astype(np.int64, copy=False)
    c = c.astype(np.int64, copy=False)
    for name, v, limit in (("row", r, height - k), ("col", c, width - k)):
        bad = np.flatnonzero((v < 0) | (v > limit))
        if bad.size:
            raise ValueError(
                f"window {name} {int(v[bad[0]])} (index {int(bad[0])}) is outside 0..{limit} "
                f"for k={k} in a {height}×{width} image"
            )
    return r, c


_BLAS_CONTROLLER: object | None = None


def _blas_controller() -> Any:
    """threadpoolctl's handle on every BLAS loaded in this process (numpy's and scipy's bundled
    OpenBLAS), found once: this module imports scipy.linalg first."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        _BLAS_CONTROLLER = ThreadpoolController().select(user_api="blas")
    return _BLAS_CONTROLLER


def blas_thread_counts() -> list[int]:
    """The current thread count of each BLAS loaded in this process (see `limit_blas_threads`)."""
    return [int(lib["num_threads"]) for lib in _blas_controller().info()]


@contextlib.contextmanager
def limit_blas_threads(n: int | None) -> Iterator[int]:
    """Run numpy's and scipy's BLAS with `n` threads inside the block (None: leave them alone); yields
    how many BLAS libraries were limited.  On a busy machine multi-threaded BLAS waits for descheduled
    threads (results/<env>/sampler.csv compares 1 and 2 threads)."""
    if n is None:
        yield 0
        return
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"BLAS thread count must be a positive integer or None, got {n!r}")
    controller = _blas_controller()
    with controller.limit(limits=int(n)):
        yield len(controller.lib_controllers)


# -- the shared contract ----------------------------------------------------------------------------------


class WindowImputer(ABC):
    """Base of the samplers: what fills a k×k window (the module docstring gives the contract)."""

    k: int
    channels: int
    l: int | None = None  # the outer patch a conditional sampler was fitted for (None: any)  # noqa: E741

    def check(self, x: ArrayLike) -> None:
        """Raise ValueError naming the values if image `x` (C×H×W) does not fit this sampler."""
        _check_image(x, self.channels, self.k, "window k", np.dtype(np.float32))

    def fingerprint(self) -> dict:
        """What changes the imputed values, JSON-able: the type and a hash of the fitted parameters."""
        return {"sampler": type(self).__name__, "sampler_hash": object_fingerprint(self)}

    @abstractmethod
    def sample_at(
        self,
        x: ArrayLike,
        rows: ArrayLike,
        cols: ArrayLike,
        n: int,
        rng: np.random.Generator,
        dtype: DTypeLike = np.float32,
    ) -> np.ndarray:
        """n draws for each window (rows[i], cols[i]): (W, n, C, k, k)."""

    @abstractmethod
    def mean_at(self, x: ArrayLike, rows: ArrayLike, cols: ArrayLike, dtype: DTypeLike = np.float32):
        """The fill value (conditional mean) of each window: (W, C, k, k)."""

    def _grid(self, x: ArrayLike, stride: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        shape = np.shape(x)
        if len(shape) != 3:
            raise ValueError(f"expected one image C×H×W, got an array of shape {shape}")
        window_starts(shape[1], self.k, stride)  # checks stride and k (ValueError naming them)
        window_starts(shape[2], self.k, stride)
        grid = WindowGrid(shape[1], shape[2], self.k, stride)
        rows, cols = grid.corners()
        return rows, cols, grid.n_rows, grid.n_cols

    def conditional_means(self, x: ArrayLike, stride: int = 1, dtype: DTypeLike = np.float32) -> np.ndarray:
        """Every window's mean, (n_rows, n_cols, C, k, k); windows at 0, stride, … ≤ H − k (row-major)."""
        rows, cols, nr, nc = self._grid(x, stride)
        return self.mean_at(x, rows, cols, dtype=dtype).reshape(nr, nc, self.channels, self.k, self.k)

    def sample(
        self,
        x: ArrayLike,
        n: int,
        rng: np.random.Generator,
        stride: int = 1,
        dtype: DTypeLike = np.float32,
    ) -> np.ndarray:
        """n draws for every window, (n_rows, n_cols, n, C, k, k) (Algorithm 1 line 7 for all windows)."""
        rows, cols, nr, nc = self._grid(x, stride)
        return self.sample_at(x, rows, cols, n, rng, dtype=dtype).reshape(
            nr, nc, n, self.channels, self.k, self.k
        )
