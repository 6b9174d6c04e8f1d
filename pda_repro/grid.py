"""The window grid: every k×k window of an H×W image at a stride (paper Sec. 2; Algorithm 1's loop).

The only place where window counts, corners and the pixels the windows cover are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def window_starts(size: int, k: int, stride: int = 1) -> np.ndarray:
    """Top-left coordinates 0, stride, 2·stride, … ≤ size − k of the windows along one axis."""
    if not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if k > size:
        raise ValueError(f"window k={k} is larger than the image side {size}")
    return np.arange(0, size - k + 1, stride, dtype=np.int64)


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

    def subset(self, count: int | Sequence[int] | np.ndarray | None) -> np.ndarray:
        """`count` window ids spread evenly over all windows (all of them when count is None), or,
        for a sequence, exactly those window ids (distinct, in 0..n_windows-1; returned sorted).

        Used to time a run on a fixed fraction of the windows and extrapolate."""
        n = self.n_windows
        if count is None:
            return np.arange(n, dtype=np.int64)
        if isinstance(count, np.ndarray | list | tuple):
            ids = np.asarray(count)
            if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    f"window_subset ids must be a non-empty 1-D sequence of integers, got {ids!r}"
                )
            if ids.min() < 0 or ids.max() >= n or np.unique(ids).size != ids.size:
                raise ValueError(f"window_subset ids must be distinct integers in 0..{n - 1}, got {ids!r}")
            return np.sort(ids).astype(np.int64)
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or not 1 <= count <= n:
            raise ValueError(
                f"window_subset must be an integer in 1..{n} (the number of windows), got {count!r}"
            )
        if count == 1:
            return np.array([n // 2], dtype=np.int64)
        # spacing (n-1)/(count-1) >= 1, so the rounded positions are distinct
        return np.round(np.linspace(0, n - 1, count)).astype(np.int64)

    def coverage(self) -> np.ndarray:
        """H×W bool: True where at least one window of the grid covers the pixel (False: the far rows
        and columns the last corner does not reach, and the gaps between windows when stride > k)."""
        rows = np.zeros(self.height, dtype=bool)
        cols = np.zeros(self.width, dtype=bool)
        for start in range(0, self.n_rows * self.stride, self.stride):
            rows[start : start + self.window] = True
        for start in range(0, self.n_cols * self.stride, self.stride):
            cols[start : start + self.window] = True
        return rows[:, None] & cols[None, :]
