"""Slow, per-window references for pda_repro.sampling (used only by tests and the sampler benchmark).

`brute_force_conditional` writes the Gaussian conditioning out pixel by pixel with an explicit inverse of
the conditioning block, so it can be checked by eye.  `ReferenceSampler` does what the paper timed
("Sampling Time", Section 2): for every window separately, build the conditional with an explicit
Cholesky factorisation in NumPy and draw S samples y = L z + μ.
"""

from __future__ import annotations

import numpy as np


def outer_patch_pixels(x: np.ndarray, k: int, l: int, row: int, col: int):  # noqa: E741
    """Split the l×l patch centred on window (row, col) into window pixels and in-image conditioning pixels.

    Returns (window patch indices, conditioning patch indices, conditioning pixel values) where a patch
    index is c·l·l + i·l + j for pixel (i, j) of the l×l patch, channel c; out-of-image pixels are dropped."""
    channels, height, width = x.shape
    pad = (l - k) // 2
    window, cond, values = [], [], []
    for c in range(channels):
        for i in range(l):
            for j in range(l):
                y, xx = row - pad + i, col - pad + j
                if not (0 <= y < height and 0 <= xx < width):
                    continue  # clipped: this pixel is outside the image
                index = c * l * l + i * l + j
                if pad <= i < pad + k and pad <= j < pad + k:
                    window.append(index)
                else:
                    cond.append(index)
                    values.append(x[c, y, xx])
    return np.array(window), np.array(cond), np.array(values, dtype=np.float64)


def brute_force_conditional(mean, cov, k, l, x, row, col):  # noqa: E741
    """Conditional mean (C, k, k) and covariance of window (row, col) given the in-image rest of its outer
    patch: the joint Gaussian of the in-image pixels is the sub-block of (mean, cov); then
    μ_w + Σ_wo inv(Σ_oo) (x_o − μ_o) and Σ_ww − Σ_wo inv(Σ_oo) Σ_ow with numpy.linalg.inv."""
    w, o, x_o = outer_patch_pixels(x, k, l, row, col)
    s_oo_inv = np.linalg.inv(cov[np.ix_(o, o)])
    s_wo = cov[np.ix_(w, o)]
    cond_mean = mean[w] + s_wo @ s_oo_inv @ (x_o - mean[o])
    cond_cov = cov[np.ix_(w, w)] - s_wo @ s_oo_inv @ s_wo.T
    return cond_mean.reshape(x.shape[0], k, k), cond_cov


class ReferenceSampler:
    """Per-window conditional sampling in float64 NumPy, the way the paper timed it (slow on purpose)."""

    def __init__(self, mean, cov, k, l):  # noqa: E741
        self.mean = np.asarray(mean, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64)
        self.k = k
        self.l = l

    def conditional(self, x, row, col):
        """(mean (C·k·k,), lower Cholesky factor of the covariance) for one window, factorised afresh."""
        w, o, x_o = outer_patch_pixels(x, self.k, self.l, row, col)
        s_oo = self.cov[np.ix_(o, o)]
        s_ow = self.cov[np.ix_(o, w)]
        l_oo = np.linalg.cholesky(s_oo)
        v = np.linalg.solve(l_oo, s_ow)  # L_oo⁻¹ Σ_ow
        r = np.linalg.solve(l_oo, x_o - self.mean[o])  # L_oo⁻¹ (x_o − μ_o)
        cond_mean = self.mean[w] + v.T @ r
        cond_cov = self.cov[np.ix_(w, w)] - v.T @ v
        return cond_mean, np.linalg.cholesky(cond_cov)

    def mean_at(self, x, rows, cols):
        """(W, C, k, k) float64 conditional means, one window at a time."""
        c = x.shape[0]
        return np.stack(
            [self.conditional(x, r, q)[0].reshape(c, self.k, self.k) for r, q in zip(rows, cols, strict=True)]
        )

    def sample_at(self, x, rows, cols, n, rng):
        """(W, n, C, k, k) float64: for each window in turn, factorise and draw n samples μ + L z with z drawn
        as rng.standard_normal((n, C·k·k)) — the same stream order as the vectorised sampler in float64."""
        c = x.shape[0]
        out = []
        for r, q in zip(rows, cols, strict=True):
            cond_mean, chol = self.conditional(x, r, q)
            z = rng.standard_normal((n, cond_mean.size))
            out.append((cond_mean + z @ chol.T).reshape(n, c, self.k, self.k))
        return np.stack(out)
