"""Forward time per image against batch size, per model and backend: the evidence behind the default batch
that `pda-repro explain` and `load_model` use on a CPU (pda_repro.backends.default_batch).

The paper runs batch 160 on a GPU, where bigger batches fill the device. On a CPU a batch's activations
outgrow the caches long before 160 images (VGG-16's first conv output alone is 12.8 MB per image), so
a forward pass of 160 images can cost more per image than one of 16. This measures it: for every model and
batch size, a warm-up call, then `--rounds` timed rounds of at least `--min-images` images (whole batches),
interleaved over the batch sizes so that a change of the machine's load hits every size alike; seconds per
image is the best round. One thread per library by default (`--threads 0`: the libraries' defaults), the
setting every benchmark here uses.

    pda-repro benchmark batch [--models mnist,alexnet] [--backends torch,caffe] [--threads 1]

Writes results/<env>/batch_size.csv (one row per model, backend, batch) and batch_size.json (settings and
machine) atomically; `ratio_to_best` is each batch's time per image over the model's best batch size.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.results import (
    RESULTS_DIR,
    atomic_write_csv,
    atomic_write_json,
    env_name,
    machine_metadata,
)
from pda_repro.paths import REPO_ROOT

__all__ = ["DEFAULT_BATCHES", "DEFAULT_MODELS", "LARGEST_BATCH", "measure", "run"]

DEFAULT_MODELS = ("mnist", "alexnet", "googlenet", "efficientnet_lite0", "vgg16")
DEFAULT_BATCHES = (1, 4, 8, 16, 32, 64, 160)
# the largest batch timed per model (VGG-16's rounds of 160 images would dominate the run)
LARGEST_BATCH = {"vgg16": 64}


def _batches(model: str, batches: tuple[int, ...]) -> list[int]:
    top = LARGEST_BATCH.get(model)
    return [b for b in batches if top is None or b <= top]


def measure(
    net: Any, batches: list[int], rounds: int, min_images: int, rng: np.random.Generator
) -> dict[int, list[float]]:
    """Seconds per image of each round, per batch size (the rounds interleave the sizes)."""
    from pda_repro.bench.context import random_input

    inputs = {b: random_input((b, *net.input_shape), net.model_spec, rng) for b in batches}
    calls = {b: max(1, math.ceil(min_images / b)) for b in batches}
    for b in batches:  # warm-up: allocations, first-call dispatch
        net.batch = b
        net.forward(inputs[b])
    out: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(rounds):
        for b in batches:
            net.batch = b
            t0 = time.perf_counter()
            for _ in range(calls[b]):
                net.forward(inputs[b])
            out[b].append((time.perf_counter() - t0) / (calls[b] * b))
    return out


def run(
    models: Sequence[str] = DEFAULT_MODELS,
    backends: Sequence[str] = ("torch",),
    batches: Sequence[int] = DEFAULT_BATCHES,
    rounds: int = 3,
    min_images: int = 32,
    threads: int = 1,
    seed: int = 0,
    results_dir: str | Path = RESULTS_DIR,
) -> Path:
    """Measure every (backend, model, batch) and write batch_size.csv/.json; returns the CSV path."""
    from pda_repro import zoo
    from pda_repro.backends import load_backend
    from pda_repro.bench.timing import limit_threads

    unknown = [m for m in models if m not in zoo.names()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(zoo.names())}")
    batches = tuple(batches)
    rng = np.random.default_rng(seed)
    rows = []
    for backend in backends:
        for model in models:
            sizes = _batches(model, batches)
            net = load_backend(model, backend=backend, device="cpu", batch=max(sizes), seed=seed)
            threads = limit_threads(threads or None)  # after load: pycaffe brings its own OpenBLAS
            load_before = round(os.getloadavg()[0], 2)
            per_image = measure(net, sizes, rounds, min_images, rng)
            best = {b: min(v) for b, v in per_image.items()}
            fastest = min(best.values())
            for b in sizes:
                rows.append(
                    {
                        "model": model,
                        "backend": backend,
                        "device": "cpu",
                        "threads": threads.get("torch") if threads else "default",
                        "batch": b,
                        "images_per_round": max(1, math.ceil(min_images / b)) * b,
                        "rounds": rounds,
                        "ms_per_image_best": 1000 * best[b],
                        "ms_per_image_median": 1000 * float(np.median(per_image[b])),
                        "ratio_to_best": best[b] / fastest,
                        "load_1min_before": load_before,
                        "weights": str(net.weights_source).replace(f"{REPO_ROOT}/", ""),
                    }
                )
                print(
                    f"{backend:5s} {model:18s} batch {b:4d}: {1000 * best[b]:8.2f} ms/image "
                    f"({best[b] / fastest:.2f}× the best)",
                    flush=True,
                )
    out_dir = Path(results_dir) / env_name("cpu")
    csv = atomic_write_csv(out_dir / "batch_size.csv", rows)
    atomic_write_json(
        out_dir / "batch_size.json",
        {
            "what": "forward seconds per image vs batch size (pda-repro benchmark batch)",
            "settings": {
                "models": list(models),
                "backends": list(backends),
                "batches": list(batches),
                "largest_batch": LARGEST_BATCH,
                "rounds": rounds,
                "min_images": min_images,
                "threads": threads or "library defaults",
                "seed": seed,
                "input": "seeded uniform noise over each model's preprocessed range (speed does not "
                "depend on the pixels)",
            },
            "machine": machine_metadata(),
        },
    )
    print(f"wrote {csv}")
    return csv
