"""Incremental vs full inference: the same explanation computed both ways, timed in one run.

Setting: torch backend, k=10, l=18, S=10 (PDA), stride 1, the predicted class of the Figure 12
image. Per (model, method) cell the same windows are explained six times in the order full,
incremental, incremental with contiguous maps, the same again, incremental, full (so a drift of the
machine's load hits every mode alike; the engine keeps its maps channels-last, and the contiguous
runs measure what that layout gains), at the
same batch -- `batch` windows per forward_windows call: on a CPU the window batch the tool uses for
incremental runs of that net (`default_window_batch("incremental")`: 16, or 64 where the dense tail's
weights are large), the harness batch on a GPU -- and once more in
full at the CPU default batch (what the tool used before incremental inference). Quick profile:
QUICK_WINDOWS windows in runs of RUN consecutive windows spread over the image (a stride-1 run
hands the engine consecutive windows, whose blocks align; isolated windows would cost more), times
extrapolated linearly to all windows as in Figure 12; paper profile: every window. Because the
engine's work per window depends on where the window is (border boxes are clipped), the rows also
give `speedup_run_estimate` = speedup × engine_ratio / engine_ratio_timed: the measured speed-up
corrected by the ratio of the engine's multiply-adds over every window to those over the timed ones.

Beside the measured speed-ups the rows hold the ideal ratio (full / incremental multiply-adds, each
window's own box, over every window of the run; pda_repro.incremental.cost), the ratio of what the
engine computes (the batch's common block size) for the run order and for the timed subset, the
peak resident memory of both modes at the same batch, the stored activations' size, the largest
probability difference between the modes (the windows' conditional means) and the loop's own share
of the incremental run (everything but forward_windows).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pda_repro.bench.cells import Cell, net_or_skip
from pda_repro.bench.context import BenchContext
from pda_repro.bench.inputs import timing_image
from pda_repro.bench.timing import PeakMemory

WINDOW, OUTER, SAMPLES, STRIDE = 10, 18, 10, 1
METHODS = ("epda", "pda")
QUICK_WINDOWS = {"epda": 64, "pda": 8}
RUN = {"epda": 16, "pda": 4}
MODELS_WITH_TARGETS = {"vgg16": 8.0, "alexnet": 3.0, "googlenet": 2.0, "efficientnet_lite0": 1.4}
KRYPTON_VGG16_CPU = 5.4  # Nakandala et al. 2019: exact incremental occlusion, VGG-16, CPU

DESCRIPTION = (
    "Incremental vs full inference (torch backend): one explanation timed in both modes on the same "
    "windows (order full, incremental, incremental with contiguous maps, the same again, incremental, full), at the same batch, plus full inference at the "
    "CPU default batch; quick profile extrapolated from an evenly spread subset of windows."
)
COLUMNS = {
    "model": "zoo model name",
    "method": "epda (Algorithm 2) or pda (Algorithm 1, S samples)",
    "window": "k",
    "outer": "l",
    "samples": "S (PDA) / 1 (efficient PDA)",
    "stride": "window stride",
    "batch": "windows per forward_windows call, both modes",
    "full_default_batch": "images per forward call of full inference at the CPU default",
    "weights": "weights the net ran with",
    "image": "the explained image",
    "windows_total": "windows in the image",
    "windows_evaluated": "windows timed (extrapolated to windows_total when fewer)",
    "extrapolated": "True when the seconds are extrapolated from windows_evaluated",
    "full_seconds": "explanation time with inference=full at `batch` (mean of two runs) [s]",
    "incremental_seconds": "explanation time with inference=incremental at `batch` (mean of two runs) [s]",
    "full_default_batch_seconds": "explanation time with inference=full at full_default_batch [s]",
    "speedup": "full_seconds / incremental_seconds (same batch)",
    "speedup_vs_full_default_batch": "full_default_batch_seconds / incremental_seconds",
    "incremental_contiguous_seconds": "the incremental explanation with the engine's maps contiguous (N×C×H×W in "
    "memory) instead of channels-last, timed between the channels-last runs (mean of two runs) [s]",
    "layout_speedup": "incremental_contiguous_seconds / incremental_seconds",
    "max_abs_dmap_layout": "largest |map_channels_last - map_contiguous| (weight of evidence, log2 odds)",
    "ideal_ratio": "full / incremental multiply-adds, each window's own box, every window of the run",
    "engine_ratio": "full / incremental multiply-adds the engine computes (common block per batch), run order",
    "engine_ratio_timed": "the same for the timed windows in their timed order",
    "speedup_run_estimate": "speedup x engine_ratio / engine_ratio_timed: the whole run's speed-up estimated from "
    "the timed windows (equals speedup when every window ran)",
    "fraction_of_ideal": "speedup / ideal_ratio",
    "target_speedup": "the target of the incremental-inference issue (efficient PDA, stride 1, CPU)",
    "peak_rss_full_mib": "process resident-memory high-water mark during a full run [MiB]",
    "peak_rss_incremental_mib": "the same during an incremental run [MiB]",
    "base_state_mib": "stored activations of the unmodified image (incl. padded copies) [MiB]",
    "max_abs_dprob": "largest |P_incremental - P_full| over the classes of the timed windows' first batch",
    "max_abs_dmap": "largest |map_incremental - map_full| (weight of evidence, log2 odds)",
    "loop_overhead_fraction": "share of the incremental run outside forward_windows (imputation, bookkeeping)",
    "krypton_vgg16_cpu": "Krypton's exact incremental occlusion speed-up on VGG-16, CPU (for comparison)",
}


def _explain(net, image, method, sampler, cls, subset, batch, inference, ctx, model, train_size):
    from pda_repro.explain import explain

    with PeakMemory(ctx.settings.device) as peak:
        start = time.perf_counter()
        result = explain(
            net, image, method=method, window=WINDOW, outer=OUTER, samples=SAMPLES, stride=STRIDE,
            batch=batch, sampler=sampler, classes=[cls], rng=ctx.rng("incremental", model, method),
            progress=ctx.settings.show_inner_progress, window_subset=subset, train_size=train_size,
            inference=inference,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    return result, seconds, peak.peak_rss_mib


def measure(ctx: BenchContext, model: str, method: str, subset: int | None) -> dict[str, Any]:
    """One row: the explanation of the model's timing image in both modes (see the module docstring)."""
    net = net_or_skip(ctx, model, "torch")
    image, image_name = timing_image(ctx, model)
    sampler, _ = ctx.sampler(model, WINDOW, OUTER, image.shape[1:])
    _, weights = ctx.weights_for(model)
    return measure_net(ctx, net, model, method, subset, image, image_name, sampler, weights)


def measure_net(
    ctx: BenchContext, net: Any, model: str, method: str, subset: int | None, image: np.ndarray,
    image_name: str, sampler: Any, weights: str,
) -> dict[str, Any]:  # fmt: skip
    """The row of `measure` for any torch-based net with incremental inference (`model` names it)."""
    from pda_repro.backends.base import default_batch
    from pda_repro.grid import WindowGrid
    from pda_repro.incremental import cost

    if net.incremental_note():
        raise ValueError(f"{model}: {net.incremental_note()}")
    _, h, w = image.shape
    grid = WindowGrid(h, w, WINDOW, STRIDE)
    if subset is not None:
        subset = None if subset >= grid.n_windows else runs_of_windows(grid, subset, RUN[method])
    cls = int(np.argmax(net.forward(image[None])[0][0]))
    batch = ctx.settings.batch if ctx.settings.device == "cuda" else net.default_window_batch("incremental")
    full_batch = default_batch(ctx.settings.device)
    spec = getattr(net, "model_spec", None) or ctx.spec(model)  # a PyTorch model carries its own
    train_size = int(spec.train_size)
    run = {"full": [], "incremental": [], "contiguous": []}
    for mode in ("full", "incremental", "contiguous", "contiguous", "incremental", "full"):
        net.channels_last = False if mode == "contiguous" else None  # None: the default (engine.py "Layout")
        inference = "full" if mode == "full" else "incremental"
        run[mode].append(
            _explain(net, image, method, sampler, cls, subset, batch, inference, ctx, model, train_size)
        )
    net.channels_last = None
    default_run = _explain(
        net, image, method, sampler, cls, subset, full_batch, "full", ctx, model, train_size
    )
    evaluated = run["full"][0][0].windows_evaluated
    timed = grid.subset(subset)
    scale = grid.n_windows / evaluated
    t_full = np.mean([r[1] for r in run["full"]]) * scale
    t_incr = np.mean([r[1] for r in run["incremental"]]) * scale
    t_contiguous = np.mean([r[1] for r in run["contiguous"]]) * scale
    t_default = default_run[1] * scale
    incr = run["incremental"][0][0]
    forward = np.mean([r[0].timings["forward"] for r in run["incremental"]])
    overhead = 1.0 - forward / np.mean([r[1] for r in run["incremental"]])

    graph = net._incremental_engine().graph
    rows, cols = grid.corners()
    timed_rows, timed_cols = grid.corners(timed)
    patches = sampler.mean_at(image, timed_rows[:batch], timed_cols[:batch])
    probs = {}
    for inference in ("full", "incremental"):
        net.inference = inference
        probs[inference] = net.forward_windows(image, timed_rows[:batch], timed_cols[:batch], patches)[0]
    net.inference = "auto"
    ideal = cost.ideal_ratio(graph, WINDOW, rows, cols)
    speedup = t_full / t_incr
    engine_all = cost.engine_ratio(graph, WINDOW, rows, cols, batch)
    engine_timed = cost.engine_ratio(graph, WINDOW, timed_rows, timed_cols, batch)
    return {
        "window": WINDOW,
        "outer": OUTER,
        "samples": SAMPLES if method == "pda" else 1,
        "stride": STRIDE,
        "full_default_batch": full_batch,
        "weights": weights,
        "image": image_name,
        "windows_total": grid.n_windows,
        "windows_evaluated": evaluated,
        "extrapolated": evaluated < grid.n_windows,
        "full_seconds": t_full,
        "incremental_seconds": t_incr,
        "full_default_batch_seconds": t_default,
        "speedup": speedup,
        "speedup_vs_full_default_batch": t_default / t_incr,
        "incremental_contiguous_seconds": t_contiguous,
        "layout_speedup": t_contiguous / t_incr,
        "max_abs_dmap_layout": float(np.abs(run["contiguous"][0][0].maps - incr.maps).max()),
        "ideal_ratio": ideal,
        "engine_ratio": engine_all,
        "engine_ratio_timed": engine_timed,
        "speedup_run_estimate": speedup * engine_all / engine_timed,
        "fraction_of_ideal": speedup / ideal,
        "target_speedup": MODELS_WITH_TARGETS.get(model) if method == "epda" else None,
        "peak_rss_full_mib": max(r[2] for r in run["full"]),
        "peak_rss_incremental_mib": max(r[2] for r in run["incremental"]),
        "base_state_mib": net.base_state(image).nbytes() / 2**20,
        "max_abs_dprob": float(np.abs(probs["full"] - probs["incremental"]).max()),
        "max_abs_dmap": float(np.abs(run["full"][0][0].maps - incr.maps).max()),
        "loop_overhead_fraction": float(overhead),
        "krypton_vgg16_cpu": KRYPTON_VGG16_CPU if model == "vgg16" else None,
        "batch": batch,
    }


def runs_of_windows(grid, count: int, run: int) -> np.ndarray:
    """`count` window ids: count // run runs of `run` consecutive (row-major) windows, the runs at the
    midpoints of equal parts of the image (so the first and last rows are not over-represented)."""
    n_runs = max(1, count // run)
    starts = np.floor((np.arange(n_runs) + 0.5) * (grid.n_windows - run + 1) / n_runs).astype(np.int64)
    return np.unique((starts[:, None] + np.arange(run)).ravel())


def cells(ctx: BenchContext, models: Sequence[str], backends: Sequence[str]) -> list[Cell]:
    """One cell per (model, method), torch backend only (pycaffe keeps full re-inference)."""
    if "torch" not in backends:
        return []
    out = []
    for model in models:
        for method in METHODS:
            subset = QUICK_WINDOWS[method] if ctx.settings.profile == "quick" else None
            key = {"model": model, "backend": "torch", "device": ctx.settings.device, "method": method,
                   "profile": ctx.settings.profile}  # fmt: skip
            per_window = SAMPLES if method == "pda" else 1
            n = subset or 50_000
            estimate = 5 * n * per_window * ctx.seconds_per_batch(model, "torch") / ctx.settings.batch + 10.0

            def run(model: str = model, method: str = method, subset: int | None = subset):
                row = measure(ctx, model, method, subset)
                return [row], {"setting": f"k={WINDOW} l={OUTER} S={SAMPLES} stride={STRIDE} torch"}

            label = f"incremental {model}/torch/{ctx.settings.device} {method} ({ctx.settings.profile})"
            out.append(Cell("incremental", key, label, estimate, run, model, DESCRIPTION, COLUMNS))
    return out
