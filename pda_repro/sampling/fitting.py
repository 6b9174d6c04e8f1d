"""Estimating the patch Gaussian from images (paper Section 2: the l×l patch distribution).

`estimate_patch_gaussian` is what `PatchGaussian.fit` runs: the sample mean and (ridge-regularised)
covariance of `n_patches` l×l patches at distinct positions drawn without replacement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pda_repro.grid import WindowGrid
from pda_repro.sampling.base import _check_count, _check_generator, _check_window_sizes


def estimate_patch_gaussian(
    images: np.ndarray | Sequence[np.ndarray],
    k: int,
    l: int,  # noqa: E741
    n_patches: int,
    rng: np.random.Generator | None,
    independent_channels: bool,
    ridge: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean (C·l·l,), covariance (C·l·l, C·l·l), C) of the l×l patches; see `PatchGaussian.fit`."""
    rng = _check_generator(rng)
    _check_window_sizes(k, l)
    n_patches = _check_count(n_patches, "n_patches")
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    stack = images if isinstance(images, np.ndarray) and images.ndim == 4 else None
    imgs = list(images) if stack is None else stack
    if len(imgs) == 0:
        raise ValueError("fit needs at least one image, got none")
    channels = None
    for i in range(1 if stack is not None else len(imgs)):
        shape = np.shape(imgs[i])
        if len(shape) != 3:
            raise ValueError(f"image {i} must be C×H×W, got shape {shape}")
        if channels is None:
            channels = shape[0]
        elif shape[0] != channels:
            raise ValueError(f"image {i} has {shape[0]} channels, image 0 has {channels}")
        if shape[1] < l or shape[2] < l:
            raise ValueError(f"outer patch l={l} is larger than image {i} ({shape[1]}×{shape[2]})")
        if stack is None and not np.isfinite(np.asarray(imgs[i], dtype=np.float64)).all():
            raise ValueError(f"image {i} contains NaN/inf values")
    if stack is not None:
        finite = np.isfinite(stack).reshape(stack.shape[0], -1).all(axis=1)
        if not finite.all():
            raise ValueError(f"image {int(np.argmin(finite))} contains NaN/inf values")
    dim = channels * l * l
    block = l * l if independent_channels else dim
    if n_patches <= block:
        raise ValueError(
            f"n_patches={n_patches} is too few for a {block}-dimensional covariance "
            f"(C={channels}, l={l}{', per channel' if independent_channels else ''}): "
            f"need more than {block} or the sample covariance is singular"
        )
    sizes = [np.shape(im)[1:] for im in imgs] if stack is None else [stack.shape[2:]]
    grids = [WindowGrid(int(h), int(w), l) for h, w in sizes]  # every l×l position (stride 1)
    counts = np.array([g.n_windows for g in grids], dtype=np.int64)
    if stack is not None:
        counts = np.repeat(counts, stack.shape[0])
    total = int(counts.sum())
    if n_patches > total:
        raise ValueError(
            f"asked for n_patches={n_patches} but the images hold only {total} l×l positions (l={l})"
        )
    # distinct (image, row, col) positions, drawn without replacement, in sorted order
    picks = np.sort(rng.choice(total, size=n_patches, replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    which = np.searchsorted(bounds, picks, side="right") - 1
    local = picks - bounds[which]
    if stack is not None:  # one gather for an N×C×H×W array
        r, c = grids[0].corners(local)
        view = np.lib.stride_tricks.sliding_window_view(stack, (l, l), axis=(2, 3))  # N, C, H', W', l, l
        patches = view[which, :, r, c].reshape(n_patches, dim).astype(np.float64)
    else:
        patches = np.empty((n_patches, dim), dtype=np.float64)
        for i in np.unique(which):
            sel = np.flatnonzero(which == i)
            r, c = grids[i].corners(local[sel])
            im = np.asarray(imgs[i], dtype=np.float64)
            view = np.lib.stride_tricks.sliding_window_view(im, (l, l), axis=(1, 2))  # C, H', W', l, l
            patches[sel] = np.moveaxis(view[:, r, c], 0, 1).reshape(sel.size, dim)
    mean = patches.mean(axis=0)
    centred = patches - mean
    cov = centred.T @ centred / (n_patches - 1)
    if independent_channels:
        owner = np.repeat(np.arange(channels), l * l)
        cov[owner[:, None] != owner[None, :]] = 0.0
    mean_var = float(np.trace(cov)) / dim
    if mean_var <= 0:
        raise ValueError(f"the {n_patches} patches have zero variance (constant images?); cannot fit")
    cov[np.diag_indices(dim)] += ridge * mean_var
    return mean, cov, channels
