"""The simplified efficient PDA (paper Algorithm 3, Eq. 37-38).

One forward and one backward pass per class: with g = ∂f(x)/∂x, each window w gets the first-order
Taylor estimate of f(x) − f(x'_w) (Eq. 38),

    WE_w = g · (x − x'_w) = Σ_{pixels, channels of w} g (x − m_w),   m_w the window's conditional mean,

and each pixel the mean over the windows covering it (Algorithm 3, lines 7-10).

Which f: `output="prob"` (default, the paper: f = P(c|x), so maps are differences of probabilities)
or `output="logit"` (f = the class's logit, the Softmax's input; for a net that is linear up to its
logits this equals the exact logit difference). Maps are NOT in log2-odds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.grid import WindowGrid
from pda_repro.methods.base import Method, MethodResult, RunContext, check_output
from pda_repro.methods.windows import (
    CHUNK_DRAWS,
    average_over_windows,
    check_outer,
    check_sampler,
    check_window_args,
)


class SimplifiedPDA(Method):
    """Algorithm 3."""

    name = "simplified"
    uses = frozenset({"window", "outer", "stride", "sampler", "output"})
    supports_window_subset = True

    def __init__(
        self,
        window: int = 10,
        outer: int = 18,
        stride: int = 1,
        sampler: Any = None,
        output: str = "prob",
    ) -> None:
        self.window = window
        self.outer = outer
        self.stride = stride
        self.sampler = sampler
        self.output = output

    def validate(self, net: Backend, image: np.ndarray) -> None:
        self.window, self.stride = check_window_args(self.window, self.stride, image.shape)
        self.outer = check_outer(self.outer, self.window)
        self.output = check_output(self.output)
        check_sampler(self.sampler, self.name, self.window, self.outer, image)

    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "outer": self.outer,
            "stride": self.stride,
            "sampler": repr(self.sampler),
            "output": self.output,
        }

    def run(self, ctx: RunContext) -> MethodResult:
        x = ctx.image
        c, h, w = x.shape
        k = self.window
        n_cls = ctx.classes.size
        t0 = time.perf_counter()
        grads = ctx.net.input_gradient(np.repeat(x[None], n_cls, axis=0), ctx.classes, output=self.output)
        t_backward = time.perf_counter() - t0
        grads = grads.astype(np.float64)
        grid = WindowGrid(h, w, k, self.stride)
        ids = grid.subset(ctx.window_subset)
        rows, cols = grid.corners(ids)
        # Σ_w g·x is a box sum of Σ_channels g·x; only Σ_w g·m_w needs the per-window means.
        gx = (grads * x.astype(np.float64)).sum(axis=1)  # (n_cls, H, W)
        prefix = np.zeros((n_cls, h + 1, w + 1))
        prefix[:, 1:, 1:] = gx.cumsum(1).cumsum(2)
        values = (
            prefix[:, rows + k, cols + k]
            - prefix[:, rows, cols + k]
            - prefix[:, rows + k, cols]
            + prefix[:, rows, cols]
        )
        g_windows = np.lib.stride_tricks.sliding_window_view(
            grads, (k, k), axis=(2, 3)
        )  # (n, C, H', W', k, k)
        chunk = max(1, CHUNK_DRAWS)
        class_block = max(1, (1 << 23) // (chunk * c * k * k))  # bounds the gathered gradient patches
        t_sampling = 0.0
        for a in range(0, ids.size, chunk):
            r, q = rows[a : a + chunk], cols[a : a + chunk]
            t1 = time.perf_counter()
            means = self.sampler.mean_at(x, r, q).astype(np.float64)  # (W, C, k, k)
            t_sampling += time.perf_counter() - t1
            for b in range(0, n_cls, class_block):
                g = g_windows[b : b + class_block, :, r, q]  # (n, C, W, k, k)
                values[b : b + class_block, a : a + chunk] -= np.einsum("ncwij,wcij->nw", g, means)
        t2 = time.perf_counter()
        maps, counts = average_over_windows(values, rows, cols, k, h, w)
        other = time.perf_counter() - t2
        return MethodResult(
            maps=maps,
            windows_evaluated=int(ids.size),
            backward_passes=1,
            timings={"sampling": t_sampling, "forward": 0.0, "backward": t_backward, "other": other},
            params={
                "windows_total": grid.n_windows,
                "pixels_uncovered": int((counts == 0).sum()),
                "units": f"first-order {'probability' if self.output == 'prob' else 'logit'} difference (Eq. 38)",
            },
        )
