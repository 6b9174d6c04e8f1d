"""Table 1: the time of one forward pass of a batch (160 by default) per model, backend and device.

Paper (Section 2, "Forward Pass Time"): Caffe + cuDNN on a Tesla K80, batch 160 — AlexNet 342 ms,
VGG-16 3301 ms, GoogLeNet 634 ms. Here: one untimed warm-up batch, then the median and the spread
(interquartile range, min, max) of ``repeats`` >= 5 timed batches, each between device syncs, and the
peak memory of the timed block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pda_repro.bench.cells import Cell, net_or_skip
from pda_repro.bench.context import BenchContext, random_input
from pda_repro.bench.timing import PeakMemory, synchronize, time_calls

PAPER_TABLE1_MS = {"alexnet": 342.0, "vgg16": 3301.0, "googlenet": 634.0}
PAPER_TABLE1_SETTING = "Caffe + cuDNN, Tesla K80, batch 160 (paper Table 1)"
MIN_REPEATS = 5

DESCRIPTION = (
    "Table 1: time of one forward pass of one batch (input of seeded uniform noise over the net's "
    "preprocessed pixel range), one untimed warm-up batch first, then `repeats` timed batches between "
    "device syncs; peak memory of the timed block."
)
COLUMNS = {
    "model": "zoo model name",
    "backend": "caffe (pycaffe) or torch (our prototxt -> torch.nn graph)",
    "device": "cpu or cuda",
    "batch": "images per forward pass",
    "weights": "weights the net ran with",
    "input_shape": "C x H x W",
    "median_ms": "median time of one batch [ms]",
    "iqr_ms": "interquartile range of the batch times [ms]",
    "min_ms": "fastest batch [ms]",
    "max_ms": "slowest batch [ms]",
    "mean_ms": "mean batch time [ms]",
    "std_ms": "standard deviation of the batch times [ms]",
    "repeats": "timed batches (after the warm-up)",
    "ms_per_image": "median_ms / batch",
    "rss_before_mib": "process resident memory before the timed block [MiB]",
    "peak_rss_mib": "process resident-memory high-water mark during the timed block [MiB]",
    "cuda_peak_mib": "torch.cuda.max_memory_allocated during the timed block [MiB] (cuda only)",
    "memory_method": "how the peak was measured",
    "paper_k80_ms": "the paper's Table 1 value (Caffe, K80, batch 160), where it has one",
}


MAX_REPEATS = 50
BUDGET_SECONDS = {"quick": 3.0, "paper": 20.0}


def repeats_for(profile: str, warmup_seconds: float) -> int:
    """Timed batches per cell: enough to fill the profile's time budget (3 s quick, 20 s paper) at the
    warm-up batch's speed, never fewer than 5 nor more than 50 (fast nets get more repeats: their times
    are the noisiest when other processes share the cores)."""
    budget = BUDGET_SECONDS[profile]
    wanted = int(budget / warmup_seconds) if warmup_seconds > 0 else MAX_REPEATS
    return max(MIN_REPEATS, min(MAX_REPEATS, wanted))


def measure_forward(ctx: BenchContext, model: str, backend_name: str) -> dict[str, Any]:
    """Time forward passes of one batch after one warm-up (repeats: ``repeats_for``); the CSV row."""
    net = net_or_skip(ctx, model, backend_name)
    spec = ctx.spec(model)
    x = random_input((ctx.settings.batch, *net.input_shape), spec, ctx.rng("table1", model))
    t0 = time.perf_counter()
    net.forward(x)  # warm-up (allocations, kernel selection), untimed
    synchronize(ctx.settings.device)
    repeats = repeats_for(ctx.settings.profile, time.perf_counter() - t0)
    with PeakMemory(ctx.settings.device) as memory:
        stats = time_calls(lambda: net.forward(x), repeats=repeats, warmup=0, device=ctx.settings.device)
    _, weights = ctx.weights_for(model)
    row: dict[str, Any] = {
        "weights": weights,
        "input_shape": "x".join(str(v) for v in net.input_shape),
        **stats.as_ms(),
        "ms_per_image": stats.median * 1e3 / ctx.settings.batch,
        **memory.as_columns(),
        "paper_k80_ms": PAPER_TABLE1_MS.get(model),
    }
    return row


def cells(ctx: BenchContext, models: Sequence[str], backends: Sequence[str]) -> list[Cell]:
    """One Table 1 cell per (model, backend) on ctx.settings.device."""
    out = []
    for model in models:
        for backend_name in backends:
            key = {
                "model": model,
                "backend": backend_name,
                "device": ctx.settings.device,
                "batch": ctx.settings.batch,
            }
            spb = ctx.seconds_per_batch(model, backend_name)
            estimate = (repeats_for(ctx.settings.profile, spb) + 1) * spb + 2.0

            def run(model: str = model, backend_name: str = backend_name) -> tuple[list[dict], dict]:
                row = measure_forward(ctx, model, backend_name)
                return [row], {"warmup_batches": 1, "input": "seeded uniform noise over the input range"}

            out.append(
                Cell(
                    experiment="table1",
                    key=key,
                    label=f"table1 {model}/{backend_name}/{ctx.settings.device} batch {ctx.settings.batch}",
                    estimate_seconds=estimate,
                    run=run,
                    model=model,
                    description=DESCRIPTION,
                    columns=COLUMNS,
                )
            )
    return out
