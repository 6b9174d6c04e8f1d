"""The conditional patch Gaussian of PDA (paper Section 2, Algorithm 1 line 7; Algorithm 2 line 5).

See pda_repro.sampling for the maths, the border rules and the precision; this module holds the
estimate (`fit`, `fit_cached`), the per-border-case factors and the vectorised means and draws.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from scipy.linalg import LinAlgError, blas, cho_factor, cholesky, solve_triangular

from pda_repro import paths
from pda_repro.grid import window_starts
from pda_repro.io import atomic_savez, remove_stale_temps
from pda_repro.sampling.base import (
    WindowImputer,
    _check_count,
    _check_dtype,
    _check_generator,
    _check_image,
    _check_window_sizes,
    _check_windows,
    limit_blas_threads,
)
from pda_repro.sampling.fitting import estimate_patch_gaussian

FORMAT_VERSION = 1
_CHUNK_WINDOWS = 2048  # windows per matrix product (bounds temporary memory, keeps BLAS calls large)


def _check_writable(directory: Path) -> None:
    """Create `directory` and a file in it (removed again); an OSError names the directory and the cause."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(directory, older_than=3600.0)  # left by killed fits (a live one takes far less)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(directory)) from None


def _lower_times_inplace(trmm, chol: np.ndarray, block: np.ndarray) -> None:
    """block[..., :] ← L @ block[..., :] for a C-contiguous block (..., d): one BLAS trmm on the
    Fortran-ordered (d, m) view, i.e. z @ Lᵀ for all rows at once with half the flops of a general product."""
    flat_t = block.reshape(-1, block.shape[-1]).T  # F-contiguous view, so trmm works in place
    res = trmm(1.0, chol, flat_t, side=0, lower=1, overwrite_b=1)
    if not np.shares_memory(res, block):  # pragma: no cover - BLAS copied (non-contiguous input)
        flat_t[...] = res


# -- the conditional patch Gaussian -----------------------------------------------------------------------


BORDER_MODES = ("clip", "shift")


@dataclass(frozen=True)
class _CaseFactors:
    """Everything about one border case that does not depend on the image (float64 maths)."""

    patch_o: np.ndarray  # indices into the flattened (C, l, l) patch of the conditioning pixels o
    gain_t: np.ndarray  # (|o|, C·k·k) = (Σ_wo Σ_oo⁻¹)ᵀ
    offset: np.ndarray  # (C·k·k,) = μ_w − Σ_wo Σ_oo⁻¹ μ_o, so that mean = offset + x_o @ gain_t
    cond_cov: np.ndarray  # (C·k·k, C·k·k) conditional covariance
    cond_chol: np.ndarray  # its lower Cholesky factor L
    frame: tuple[int, int]  # (row, col) of the window's top-left corner inside the l×l patch frame


class PatchGaussian(WindowImputer):
    """Location-independent Gaussian over l×l patches, all C channels jointly (vector in (C, l, l) order).

    Build it from parameters, ``PatchGaussian(mean, cov, k, l, channels)``, or estimate it with
    ``PatchGaussian.fit`` / ``PatchGaussian.fit_cached``; ``save`` / ``load`` keep it in a ``.npz``.
    ``blas_threads`` (default 1; None leaves BLAS alone) is the OpenBLAS thread count used while sampling:
    single-threaded BLAS was faster in every measurement on the shared 2-core machine.
    ``border`` ("clip" default, "shift" as the original PDA code) is how a window whose outer patch sticks
    out of the image is conditioned (module docstring); ``with_border`` gives the other mode."""

    def __init__(
        self,
        mean: ArrayLike,
        cov: ArrayLike,
        k: int,
        l: int,  # noqa: E741 - the paper's name for the outer patch size
        channels: int,
        *,
        tag: str = "",
        source: str = "",
        n_patches: int = 0,
        independent_channels: bool = False,
        ridge: float = 0.0,
        blas_threads: int | None = 1,
        border: str = "clip",
    ) -> None:
        _check_window_sizes(k, l)
        if border not in BORDER_MODES:
            raise ValueError(f"border must be one of {', '.join(BORDER_MODES)}, got {border!r}")
        if blas_threads is not None:
            _check_count(blas_threads, "blas_threads")
        _check_count(channels, "channels")
        dim = channels * l * l
        mean = np.array(mean, dtype=np.float64)
        cov = np.array(cov, dtype=np.float64)
        if mean.shape != (dim,):
            raise ValueError(
                f"mean must have shape ({dim},) = (C·l·l,) for C={channels}, l={l}; got {mean.shape}"
            )
        if cov.shape != (dim, dim):
            raise ValueError(f"cov must have shape ({dim}, {dim}) for C={channels}, l={l}; got {cov.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise ValueError("mean and cov must be finite (found NaN/inf)")
        asym = float(np.max(np.abs(cov - cov.T)))
        scale = float(np.max(np.abs(cov))) or 1.0
        if asym > 1e-10 * scale:
            raise ValueError(f"cov must be symmetric; max |cov - cov.T| = {asym:.3g}")
        cov = 0.5 * (cov + cov.T)
        try:
            cholesky(cov, lower=True, check_finite=False)
        except LinAlgError:
            eig_min = float(np.linalg.eigvalsh(cov)[0])
            raise ValueError(
                f"cov ({dim}×{dim}) is not positive definite (smallest eigenvalue {eig_min:.3g}); "
                "fit with more patches or a larger ridge"
            ) from None
        self.mean = mean
        self.cov = cov
        self.k = int(k)
        self.l = int(l)
        self.channels = int(channels)
        self.pad = (self.l - self.k) // 2
        self.tag = str(tag)
        self.source = str(source)
        self.n_patches = int(n_patches)
        self.independent_channels = bool(independent_channels)
        self.ridge = float(ridge)
        self.blas_threads = blas_threads
        self.border = str(border)
        # patch-vector indices of the window pixels, in (C, k, k) order
        ch, ii, jj = np.meshgrid(
            np.arange(self.channels),
            np.arange(self.k) + self.pad,
            np.arange(self.k) + self.pad,
            indexing="ij",
        )
        self._patch_w = np.ravel_multi_index((ch, ii, jj), (self.channels, self.l, self.l)).ravel()
        self._cases: dict[tuple[int, int, int, int], _CaseFactors] = {}
        self._cast: dict[tuple[tuple[int, int, int, int], str], tuple[np.ndarray, ...]] = {}
        self._offsets: dict[tuple[tuple[int, int, int, int], int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"PatchGaussian(k={self.k}, l={self.l}, channels={self.channels}, tag={self.tag!r}, "
            f"n_patches={self.n_patches}, independent_channels={self.independent_channels}"
            + (f", border={self.border!r})" if self.border != "clip" else ")")
        )

    def with_border(self, border: str) -> PatchGaussian:
        """The same Gaussian with border rule `border` ("clip" or "shift"); self if it already has it."""
        if border == self.border:
            return self
        return PatchGaussian(
            self.mean,
            self.cov,
            self.k,
            self.l,
            self.channels,
            tag=self.tag,
            source=self.source,
            n_patches=self.n_patches,
            independent_channels=self.independent_channels,
            ridge=self.ridge,
            blas_threads=self.blas_threads,
            border=border,
        )

    @property
    def window_dim(self) -> int:
        """C·k·k, the dimension of one window sample."""
        return self.channels * self.k * self.k

    # -- estimation ----------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        images: np.ndarray | Sequence[np.ndarray],
        k: int,
        l: int,  # noqa: E741
        n_patches: int = 20_000,
        rng: np.random.Generator | None = None,
        independent_channels: bool = False,
        ridge: float = 1e-5,
        tag: str = "",
        source: str = "",
    ) -> PatchGaussian:
        """Estimate mean and covariance from `n_patches` random l×l patches (distinct positions, drawn
        without replacement) of `images` (an N×C×H×W array or a list of C×H×W arrays of any sizes, already
        preprocessed for the model).  The covariance is the unbiased sample covariance plus
        ``ridge × (mean variance) × I`` so that it is positive definite (1e-5 of the mean pixel variance is
        below the quantisation noise of 8-bit photos).  ``independent_channels=True`` fits one Gaussian per
        channel (cross-channel covariance zero), as the original PDA code does."""
        mean, cov, channels = estimate_patch_gaussian(
            images, k, l, n_patches, rng, independent_channels, ridge
        )
        return cls(
            mean,
            cov,
            k,
            l,
            channels,
            tag=tag,
            source=source,
            n_patches=n_patches,
            independent_channels=independent_channels,
            ridge=ridge,
        )

    @classmethod
    def fit_cached(
        cls,
        images: np.ndarray | Sequence[np.ndarray] | Callable[[], np.ndarray | Sequence[np.ndarray]],
        k: int,
        l: int,  # noqa: E741
        *,
        channels: int,
        tag: str,
        source: str,
        n_patches: int = 20_000,
        seed: int = 0,
        independent_channels: bool = False,
        ridge: float = 1e-5,
        cache_dir: str | os.PathLike | None = None,
    ) -> PatchGaussian:
        """`fit` with a cache keyed by (k, l, channels, preprocessing tag, n_patches, image source, seed,
        independent_channels, ridge).  `images` may be a zero-argument callable so that images are only
        loaded on a cache miss.  The file is written atomically under `cache_dir` (default: samplers/ in
        the cache directory, pda_repro.paths)."""
        _check_window_sizes(k, l)
        key = {
            "k": int(k),
            "l": int(l),
            "channels": int(channels),
            "tag": str(tag),
            "n_patches": int(n_patches),
            "source": str(source),
            "seed": int(seed),
            "independent_channels": bool(independent_channels),
            "ridge": float(ridge),
        }
        digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
        safe_tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(tag))[:40] or "untagged"
        path = (
            Path(cache_dir or paths.cache_dir("samplers"))
            / f"patch_gaussian_{safe_tag}_k{k}_l{l}_{digest}.npz"
        )
        if path.exists():
            try:
                cached = cls.load(path)
                with np.load(path, allow_pickle=False) as meta:
                    stored_seed = int(meta["seed"]) if "seed" in meta else None
                found = {
                    "k": cached.k,
                    "l": cached.l,
                    "channels": cached.channels,
                    "tag": cached.tag,
                    "n_patches": cached.n_patches,
                    "source": cached.source,
                    "seed": stored_seed,
                    "independent_channels": cached.independent_channels,
                    "ridge": cached.ridge,
                }
                if found == key:
                    return cached
            except Exception:  # noqa: BLE001 - a truncated/corrupt/stale entry is refitted and replaced
                pass
        _check_writable(path.parent)  # before the fit: an unwritable cache fails in seconds, not minutes
        data = images() if callable(images) else images
        first = data[0]
        if np.shape(first)[0] != channels:
            raise ValueError(f"images have {np.shape(first)[0]} channels but channels={channels} was given")
        fitted = cls.fit(
            data,
            k,
            l,
            n_patches=n_patches,
            rng=np.random.default_rng(seed),
            independent_channels=independent_channels,
            ridge=ridge,
            tag=tag,
            source=source,
        )
        fitted.save(path, seed=seed)
        return fitted

    # -- persistence ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, **extra: int | float | str) -> Path:
        """Write parameters and metadata to `path` (.npz) atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_savez(
            path,
            format_version=np.array(FORMAT_VERSION),
            mean=self.mean,
            cov=self.cov,
            k=np.array(self.k),
            l=np.array(self.l),
            channels=np.array(self.channels),
            tag=np.array(self.tag),
            source=np.array(self.source),
            n_patches=np.array(self.n_patches),
            independent_channels=np.array(self.independent_channels),
            ridge=np.array(self.ridge),
            **{name: np.array(value) for name, value in extra.items()},
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatchGaussian:
        """Read a PatchGaussian written by `save`."""
        with np.load(Path(path), allow_pickle=False) as f:
            version = int(f["format_version"]) if "format_version" in f else -1
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: format_version {version}, expected {FORMAT_VERSION}")
            return cls(
                f["mean"],
                f["cov"],
                int(f["k"]),
                int(f["l"]),
                int(f["channels"]),
                tag=str(f["tag"]),
                source=str(f["source"]),
                n_patches=int(f["n_patches"]),
                independent_channels=bool(f["independent_channels"]),
                ridge=float(f["ridge"]),
            )

    # -- clipping cases ------------------------------------------------------------------------------

    def check(self, x: ArrayLike) -> None:
        _check_image(x, self.channels, self.l, "outer patch l", np.dtype(np.float64))

    def _clip_cases(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
        """For each window, how far its outer patch sticks out (top, bottom, left, right), as (W, 4)."""
        pad, k = self.pad, self.k
        return np.stack(
            [
                np.maximum(0, pad - rows),
                np.maximum(0, rows + k + pad - height),
                np.maximum(0, pad - cols),
                np.maximum(0, cols + k + pad - width),
            ],
            axis=1,
        )

    def _shift_cases(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
        """border="shift": each window's (row, col) inside its l×l patch moved to lie in the image, (W, 2)."""
        top = np.clip(rows - self.pad, 0, height - self.l)
        left = np.clip(cols - self.pad, 0, width - self.l)
        return np.stack([rows - top, cols - left], axis=1)

    def _border_cases(self, rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
        """Each window's border case: (top, bottom, left, right) clipping for "clip", its position in the
        shifted patch (row, col) for "shift"."""
        if self.border == "shift":
            return self._shift_cases(rows, cols, height, width)
        return self._clip_cases(rows, cols, height, width)

    def _groups(self, rows, cols, height, width):
        """Yield (case, indices of the windows with that case) in a fixed order."""
        if rows.size == 0:
            return
        clips = self._border_cases(rows, cols, height, width)
        base = self.l + 1
        codes = np.zeros(clips.shape[0], dtype=np.int64)
        for column in clips.T:
            codes = codes * base + column
        if codes.size and (codes == codes[0]).all():
            yield tuple(int(v) for v in clips[0]), None  # None: all windows
            return
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_codes)) + 1, [codes.size]])
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            idx = order[a:b]
            yield tuple(int(v) for v in clips[idx[0]]), idx

    def case_factors(self, case: tuple[int, ...]) -> _CaseFactors:
        """Gain, offset and conditional Cholesky factor for one border case -- (top, bottom, left, right)
        clipping with border="clip", the window's (row, col) in the shifted patch with "shift" -- float64,
        computed with Cholesky solves and cached."""
        cached = self._cases.get(case)
        if cached is not None:
            return cached
        with limit_blas_threads(self.blas_threads):
            factors = self._factorise(case)
        self._cases[case] = factors
        return factors

    def _factorise(self, case: tuple[int, ...]) -> _CaseFactors:
        size, pad, k = self.l, self.pad, self.k
        inside = np.zeros((self.channels, size, size), dtype=bool)
        if len(case) == 2:  # border="shift": the whole patch, the window at `case` inside it
            wr, wc = case
            if not (0 <= wr <= size - k and 0 <= wc <= size - k):
                raise ValueError(f"shift case {case} puts the {k}×{k} window outside the {size}×{size} patch")
            inside[:] = True
        else:
            top, bottom, left, right = case
            wr = wc = pad
            inside[:, top : size - bottom, left : size - right] = True
        window = np.zeros_like(inside)
        window[:, wr : wr + k, wc : wc + k] = True
        inside &= ~window  # the window itself is not conditioned on
        patch_o = np.flatnonzero(inside.ravel())
        w = np.flatnonzero(window.ravel())  # (C, k, k) order, as self._patch_w
        s_oo = self.cov[np.ix_(patch_o, patch_o)]
        s_ow = self.cov[np.ix_(patch_o, w)]
        try:
            l_oo = cholesky(s_oo, lower=True, check_finite=False)
        except LinAlgError:
            raise ValueError(
                f"conditioning block for clipping case {case} is not positive definite"
            ) from None
        v = solve_triangular(l_oo, s_ow, lower=True, check_finite=False)  # L_oo⁻¹ Σ_ow
        gain_t = solve_triangular(l_oo, v, lower=True, trans="T", check_finite=False)  # Σ_oo⁻¹ Σ_ow
        cond_cov = self.cov[np.ix_(w, w)] - v.T @ v
        cond_cov = 0.5 * (cond_cov + cond_cov.T)
        try:
            cond_chol = cho_factor(cond_cov, lower=True, check_finite=False)[0]
        except LinAlgError:
            raise ValueError(
                f"conditional covariance for clipping case {case} is not positive definite; "
                "refit with a larger ridge"
            ) from None
        cond_chol = np.tril(cond_chol)
        offset = self.mean[w] - self.mean[patch_o] @ gain_t
        return _CaseFactors(patch_o, gain_t, offset, cond_cov, cond_chol, (int(wr), int(wc)))

    def _factors(self, case, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (case, dtype.str)
        cast = self._cast.get(key)
        if cast is None:
            f = self.case_factors(case)
            cast = (
                np.ascontiguousarray(f.gain_t, dtype=dtype),
                f.offset.astype(dtype),
                np.asfortranarray(f.cond_chol, dtype=dtype),
            )
            self._cast[key] = cast
        return cast

    def _image_offsets(self, case, height: int, width: int) -> np.ndarray:
        """Flat offsets into a C×H×W image of the conditioning pixels, relative to the outer patch corner."""
        key = (case, height, width)
        offs = self._offsets.get(key)
        if offs is None:
            ch, ii, jj = np.unravel_index(self.case_factors(case).patch_o, (self.channels, self.l, self.l))
            offs = (ch * height + ii) * width + jj
            self._offsets[key] = offs
        return offs

    def precompute(self, height: int, width: int, dtype: DTypeLike = np.float32) -> int:
        """Factorise every clipping case that occurs in a height×width image (stride 1); returns the count.
        Optional: the cases are otherwise factorised on first use."""
        dt = _check_dtype(dtype)
        rows = window_starts(height, self.k)
        cols = window_starts(width, self.k)
        half = 1 if self.border == "shift" else 2  # case = (row part, col part)
        clips_r = self._border_cases(rows, np.zeros_like(rows), height, width)[:, :half]
        clips_c = self._border_cases(np.zeros_like(cols), cols, height, width)[:, half:]
        cases = {
            (*map(int, a), *map(int, b))
            for a in np.unique(clips_r, axis=0)
            for b in np.unique(clips_c, axis=0)
        }
        for case in sorted(cases):
            self._factors(case, dt)
        return len(cases)

    # -- the conditional ------------------------------------------------------------------------------

    def conditional_at(self, x: ArrayLike, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean (C, k, k) and covariance (C·k·k, C·k·k) of one window, float64."""
        x = _check_image(x, self.channels, self.l, "outer patch l", np.dtype(np.float64))
        rows, cols = _check_windows([row], [col], self.k, x.shape[1], x.shape[2])
        mean = self.mean_at(x, rows, cols, dtype=np.float64)[0]
        case = tuple(int(v) for v in self._border_cases(rows, cols, x.shape[1], x.shape[2])[0])
        return mean, self.case_factors(case).cond_cov.copy()

    def _means_into(self, x: np.ndarray, rows, cols, out: np.ndarray) -> None:
        """out[i] = conditional mean (flattened) of window i; x already checked, in out's dtype."""
        _, height, width = x.shape
        flat = x.reshape(-1)
        with limit_blas_threads(self.blas_threads):
            for case, idx in self._groups(rows, cols, height, width):
                gain_t, offset, _ = self._factors(case, out.dtype)
                offs = self._image_offsets(case, height, width)
                fr, fc = self.case_factors(case).frame  # window corner inside the patch frame
                sel = np.arange(rows.size) if idx is None else idx
                for a in range(0, sel.size, _CHUNK_WINDOWS):
                    part = sel[a : a + _CHUNK_WINDOWS]
                    corner = (rows[part] - fr) * width + (cols[part] - fc)
                    x_o = flat[corner[:, None] + offs[None, :]]
                    res = x_o @ gain_t
                    res += offset
                    out[part] = res

    def mean_at(
        self, x: ArrayLike, rows: ArrayLike, cols: ArrayLike, dtype: DTypeLike = np.float32
    ) -> np.ndarray:
        """Conditional mean μ_w + Σ_wo Σ_oo⁻¹ (x_o − μ_o) of each window (Algorithm 2 line 5): (W, C, k, k)."""
        dt = _check_dtype(dtype)
        x = _check_image(x, self.channels, self.l, "outer patch l", dt)
        rows, cols = _check_windows(rows, cols, self.k, x.shape[1], x.shape[2])
        out = np.empty((rows.size, self.window_dim), dtype=dt)
        self._means_into(x, rows, cols, out)
        return out.reshape(rows.size, self.channels, self.k, self.k)

    def sample_at(
        self,
        x: ArrayLike,
        rows: ArrayLike,
        cols: ArrayLike,
        n: int,
        rng: np.random.Generator,
        dtype: DTypeLike = np.float32,
    ) -> np.ndarray:
        """n draws mean + L z from each window's conditional Gaussian (Algorithm 1 line 7): (W, n, C, k, k).

        z is drawn as one (W, n, C·k·k) block in the given window order; then the windows are grouped by
        clipping case and each group is transformed with few, large in-place triangular products (BLAS
        trmm).  BLAS runs with ``self.blas_threads`` threads (default 1, see `limit_blas_threads`)."""
        dt = _check_dtype(dtype)
        rng = _check_generator(rng)
        n = _check_count(n)
        x = _check_image(x, self.channels, self.l, "outer patch l", dt)
        rows, cols = _check_windows(rows, cols, self.k, x.shape[1], x.shape[2])
        d = self.window_dim
        z = rng.standard_normal((rows.size, n, d), dtype=dt)
        means = np.empty((rows.size, d), dtype=dt)
        self._means_into(x, rows, cols, means)
        trmm = blas.get_blas_funcs("trmm", dtype=dt)
        _, height, width = x.shape
        with limit_blas_threads(self.blas_threads):
            for case, idx in self._groups(rows, cols, height, width):
                chol = self._factors(case, dt)[2]
                if idx is None:  # one clipping case for all windows: transform z in place
                    for a in range(0, rows.size, _CHUNK_WINDOWS):
                        block = z[a : a + _CHUNK_WINDOWS]
                        _lower_times_inplace(trmm, chol, block)
                        block += means[a : a + _CHUNK_WINDOWS, None, :]
                    continue
                for a in range(0, idx.size, _CHUNK_WINDOWS):
                    part = idx[a : a + _CHUNK_WINDOWS]
                    block = z[part]  # a contiguous copy
                    _lower_times_inplace(trmm, chol, block)
                    block += means[part, None, :]
                    z[part] = block
        return z.reshape(rows.size, n, self.channels, self.k, self.k)
