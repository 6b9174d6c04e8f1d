"""Figure 12: the time to explain one image with PDA (Algorithm 1) and with efficient PDA (Algorithm 2).

Setting (paper Section 3, "Computational Speed"): window k=10, outer patch l=18, S=10 samples per window
(PDA), the conditional Gaussian sampler, forward batches of 160, stride 1, the predicted class. The
sampler's per-clipping-case factorisations are computed before the clock starts (the paper: "these
distribution parameters can be computed in advance") and reported apart (``sampler_setup_seconds``).

Profiles: ``paper`` runs every window of the image. ``quick`` runs an evenly spread fixed subset of
windows (``explain(window_subset=n)``: n = ``QUICK_BATCHES`` full forward batches' worth for each method,
e.g. 48 windows for PDA and 480 for efficient PDA at batch 160) and extrapolates each time linearly to all
windows: t_all = t_subset × windows_total / windows_evaluated. Every extrapolated row says so:
``extrapolated`` is True and ``extrapolated_from_windows`` holds n. Where every window needs at most
``FULL_IF_AT_MOST_IMAGES`` forward images (mnist: 361 windows), the quick profile runs them all and nothing
is extrapolated. Efficient PDA runs before PDA, and one untimed forward batch warms the backend up first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pda_repro.bench.cells import Cell, net_or_skip
from pda_repro.bench.context import BenchContext
from pda_repro.bench.inputs import timing_image

WINDOW, OUTER, SAMPLES, STRIDE = 10, 18, 10, 1
METHODS = ("epda", "pda")  # efficient PDA first: the cheaper result is in even if a run is cut short
QUICK_BATCHES = 3
FULL_IF_AT_MOST_IMAGES = 20_000  # the quick profile runs every window when that forwards at most this many
PAPER_SPEEDUP = 10.0

DESCRIPTION = (
    "Figure 12: seconds to explain one image (the predicted class) with PDA (S samples per window from "
    "the conditional Gaussian) and efficient PDA (the conditional mean), stride 1, per model, backend, "
    "device. Quick profile: an evenly spread subset of windows timed and extrapolated linearly to all "
    "windows (extrapolated=True, extrapolated_from_windows=n); paper profile: every window."
)
COLUMNS = {
    "method": "pda (Algorithm 1) or epda (Algorithm 2, efficient PDA)",
    "profile": "quick (subset of windows, extrapolated) or paper (every window)",
    "inference": "full (paste + forward) or incremental (only what the window changes; torch backend)",
    "window": "k",
    "outer": "l",
    "samples": "S (PDA) / 1 (efficient PDA)",
    "stride": "window stride",
    "batch": "images per forward pass",
    "weights": "weights the net ran with",
    "image": "the explained image",
    "explained_class": "class index explained (the predicted one)",
    "windows_total": "windows in the image",
    "windows_evaluated": "windows actually run",
    "extrapolated": "True when the times are extrapolated from windows_evaluated to windows_total",
    "extrapolated_from_windows": "number of windows the extrapolation is based on (empty: measured in full)",
    "total_seconds": "time to explain the whole image [s] (extrapolated where stated)",
    "sampling_seconds": "part of total spent drawing samples / conditional means [s]",
    "forward_seconds": "part of total spent in backend.forward [s]",
    "other_seconds": "the rest: pasting windows, running sums, weight of evidence, averaging [s]",
    "measured_seconds": "wall time actually measured on windows_evaluated [s]",
    "measured_sampling_seconds": "sampling time actually measured [s]",
    "measured_forward_seconds": "forward time actually measured [s]",
    "forward_passes_measured": "backend.forward calls actually made",
    "forward_passes_total": "forward batches needed for the whole image: ceil(windows_total*S/batch)",
    "images_forwarded_total": "windows_total * S",
    "sampler_setup_seconds": "factorising every clipping case once before the clock starts [s] (not extrapolated)",
}


def quick_windows(method: str, samples: int, batch: int) -> int:
    """Windows timed by the quick profile: QUICK_BATCHES full batches (no partial batch to skew it)."""
    per_window = samples if method == "pda" else 1
    return max(1, QUICK_BATCHES * batch // per_window)


def extrapolate(measured: float, windows_evaluated: int, windows_total: int) -> float:
    """Linear extrapolation of a time measured on a subset of windows to all windows."""
    if windows_evaluated < 1 or windows_total < windows_evaluated:
        raise ValueError(
            f"cannot extrapolate from {windows_evaluated} windows to {windows_total} "
            "(need 1 <= evaluated <= total)"
        )
    return measured * windows_total / windows_evaluated


def summarise_run(
    timings: dict[str, float],
    seconds: float,
    windows_evaluated: int,
    windows_total: int,
    forward_passes: int,
    samples: int,
    batch: int,
) -> dict[str, Any]:
    """The CSV columns of one explain run: whole-image times (extrapolated when a subset ran) and the raw
    measurements. ``timings`` is Explanation.timings (sampling / forward / other seconds)."""
    extrapolated = windows_evaluated < windows_total
    scale = extrapolate(1.0, windows_evaluated, windows_total)
    sampling = float(timings.get("sampling", 0.0))
    forward = float(timings.get("forward", 0.0))
    other = max(0.0, float(seconds) - sampling - forward)
    images = windows_total * samples
    return {
        "windows_total": windows_total,
        "windows_evaluated": windows_evaluated,
        "extrapolated": extrapolated,
        "extrapolated_from_windows": windows_evaluated if extrapolated else None,
        "total_seconds": float(seconds) * scale,
        "sampling_seconds": sampling * scale,
        "forward_seconds": forward * scale,
        "other_seconds": other * scale,
        "measured_seconds": float(seconds),
        "measured_sampling_seconds": sampling,
        "measured_forward_seconds": forward,
        "forward_passes_measured": int(forward_passes),
        "forward_passes_total": math.ceil(images / batch),
        "images_forwarded_total": images,
    }


def time_explanation(
    ctx: BenchContext,
    model: str,
    backend_name: str,
    method: str,
    window: int = WINDOW,
    outer: int = OUTER,
    samples: int = SAMPLES,
    subset: int | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Explain the model's timing image once with ``method`` and return the CSV row (no extrapolation
    when ``subset`` is None or covers every window)."""
    from pda_repro.explain import explain

    net = net_or_skip(ctx, model, backend_name)
    image, image_name = timing_image(ctx, model)
    _, h, w = image.shape
    sampler, setup = ctx.sampler(model, window, outer, (h, w))
    windows_total = ((h - window) // STRIDE + 1) * ((w - window) // STRIDE + 1)
    if subset is not None and subset >= windows_total:
        subset = None
    probs, _ = net.forward(image[None])
    explained = int(np.argmax(probs[0]))
    warm = np.repeat(image[None], ctx.settings.batch, axis=0)
    net.forward(warm)  # warm-up batch, untimed
    s = samples if method == "pda" else 1
    start = time.perf_counter()
    result = explain(
        net,
        image,
        method=method,
        window=window,
        outer=outer,
        samples=samples,
        stride=STRIDE,
        batch=ctx.settings.batch,
        sampler=sampler,
        classes=[explained],
        rng=ctx.rng("fig12", model, method),
        progress=ctx.settings.show_inner_progress,
        checkpoint=checkpoint,
        window_subset=subset,
        inference=ctx.settings.inference,
        train_size=int(ctx.spec(model).train_size),
    )
    wall = time.perf_counter() - start
    seconds = float(getattr(result, "seconds", wall) or wall)
    evaluated = int(getattr(result, "windows_evaluated", subset or windows_total))
    row = summarise_run(
        dict(result.timings), seconds, evaluated, windows_total, result.forward_passes, s, ctx.settings.batch
    )
    _, weights = ctx.weights_for(model)
    return {
        "inference": result.params["inference"],
        "window": window,
        "outer": outer,
        "samples": s,
        "stride": STRIDE,
        "weights": weights,
        "image": image_name,
        "explained_class": explained,
        **row,
        "sampler_setup_seconds": setup,
    }


def cells(ctx: BenchContext, models: Sequence[str], backends: Sequence[str]) -> list[Cell]:
    """One Fig 12 cell per (model, backend, method) on ctx.settings.device and ctx.settings.profile."""
    out = []
    for model in models:
        for backend_name in backends:
            for method in METHODS:
                key = {
                    "model": model,
                    "backend": backend_name,
                    "device": ctx.settings.device,
                    "method": method,
                    "profile": ctx.settings.profile,
                    "batch": ctx.settings.batch,
                }
                if inference_of(ctx, backend_name) == "incremental":  # full cells keep their old keys
                    key["inference"] = "incremental"
                total = _windows_total(ctx, model)
                per_window = SAMPLES if method == "pda" else 1
                spb = ctx.seconds_per_batch(model, backend_name)
                subset = None
                if ctx.settings.profile == "quick" and total * per_window > FULL_IF_AT_MOST_IMAGES:
                    subset = quick_windows(method, SAMPLES, ctx.settings.batch)
                n = total if subset is None else min(subset, total)
                batches = math.ceil(n * per_window / ctx.settings.batch) + 1
                estimate = batches * spb + 3.0
                checkpoint = None
                if ctx.settings.profile == "paper":
                    checkpoint = str(
                        ctx.store.dir
                        / "checkpoints"
                        / f"fig12_{model}_{backend_name}_{method}_b{ctx.settings.batch}.ckpt.npz"
                    )

                def run(
                    model: str = model,
                    backend_name: str = backend_name,
                    method: str = method,
                    subset: int | None = subset,
                    checkpoint: str | None = checkpoint,
                ) -> tuple[list[dict], dict]:
                    row = time_explanation(
                        ctx, model, backend_name, method, subset=subset, checkpoint=checkpoint
                    )
                    return [row], {"setting": f"k={WINDOW} l={OUTER} S={SAMPLES} stride={STRIDE}"}

                label = f"fig12 {model}/{backend_name}/{ctx.settings.device} {method} {inference_of(ctx, backend_name)} ({ctx.settings.profile}"
                label += f", {n} of {total} windows)" if n < total else ", all windows)"
                out.append(Cell("fig12", key, label, estimate, run, model, DESCRIPTION, COLUMNS))
    return out


def inference_of(ctx: BenchContext, backend_name: str) -> str:
    """The inference mode a Figure 12 cell runs with: pycaffe always re-runs the net in full; the
    torch backend follows ctx.settings.inference (auto = incremental: every zoo net has the rules)."""
    return "full" if backend_name == "caffe" or ctx.settings.inference == "full" else "incremental"


def _windows_total(ctx: BenchContext, model: str) -> int:
    _, h, w = ctx.spec(model).input_shape
    return ((h - WINDOW) // STRIDE + 1) * ((w - WINDOW) // STRIDE + 1)
