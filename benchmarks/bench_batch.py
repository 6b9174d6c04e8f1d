"""Forward time per image against batch size, per model and backend: the evidence behind the default batch
that `pda-repro explain` and `load_model` use on a CPU (pda_repro.backends.default_batch).

The paper runs batch 160 on a GPU, where bigger batches fill the device. On a CPU a batch's activations
outgrow the caches long before 160 images (VGG-16's first conv output alone is 12.8 MB per image), so
a forward pass of 160 images can cost more per image than one of 16. This measures it: for every model and
batch size, a warm-up call, then `--rounds` timed rounds of at least `--min-images` images (whole batches),
interleaved over the batch sizes so that a change of load on this shared machine hits every size alike;
seconds per image is the best round. One thread per library by default (`--threads 0`: the libraries'
defaults), the setting every benchmark here uses.

    .venv/bin/python benchmarks/bench_batch.py [--models mnist,alexnet] [--backends torch,caffe] [--threads 1]

Writes results/<env>/batch_size.csv (one row per model, backend, batch) and batch_size.json (settings and
machine) atomically; `ratio_to_best` is each batch's time per image over the model's best batch size.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pda_repro.bench.results import (  # noqa: E402
    RESULTS_DIR,
    atomic_write_csv,
    atomic_write_json,
    env_name,
    machine_metadata,
)

DEFAULT_MODELS = ("mnist", "alexnet", "googlenet", "efficientnet_lite0", "vgg16")
DEFAULT_BATCHES = (1, 4, 8, 16, 32, 64, 160)
# VGG-16 costs ~0.3 s per image on one core here: its 160-image rounds alone would take minutes
LARGEST_BATCH = {"vgg16": 64}


def _batches(model: str, batches: tuple[int, ...]) -> list[int]:
    top = LARGEST_BATCH.get(model)
    return [b for b in batches if top is None or b <= top]


def measure(
    net, batches: list[int], rounds: int, min_images: int, rng: np.random.Generator
) -> dict[int, list[float]]:
    """Seconds per image of each round, per batch size (the rounds interleave the sizes)."""
    from pda_repro.bench.common import random_input

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--backends", default="torch")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="threads per library; 0 = library defaults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    try:
        batches = tuple(int(b) for b in args.batches.split(",") if b)
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 1:
        parser.error(f"--batches must be positive integers, got {args.batches!r}")
    for name, value in (("--rounds", args.rounds), ("--min-images", args.min_images)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")

    from pda_repro import zoo
    from pda_repro.backends import load_backend
    from pda_repro.bench.runner import limit_threads

    unknown = [m for m in models if m not in zoo.names()]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(zoo.names())}")
    rng = np.random.default_rng(args.seed)
    rows = []
    for backend in backends:
        for model in models:
            sizes = _batches(model, batches)
            net = load_backend(model, backend=backend, device="cpu", batch=max(sizes), seed=args.seed)
            threads = limit_threads(args.threads or None)  # after load: pycaffe brings its own OpenBLAS
            load_before = round(os.getloadavg()[0], 2)
            per_image = measure(net, sizes, args.rounds, args.min_images, rng)
            best = {b: min(v) for b, v in per_image.items()}
            fastest = min(best.values())
            for b in sizes:
                rows.append(
                    {
                        "model": model,
                        "backend": backend,
                        "device": "cpu",
                        "threads": threads.get("torch") if args.threads else "default",
                        "batch": b,
                        "images_per_round": max(1, math.ceil(args.min_images / b)) * b,
                        "rounds": args.rounds,
                        "ms_per_image_best": 1000 * best[b],
                        "ms_per_image_median": 1000 * float(np.median(per_image[b])),
                        "ratio_to_best": best[b] / fastest,
                        "load_1min_before": load_before,
                        "weights": str(net.weights_source).replace(f"{REPO}/", ""),
                    }
                )
                print(
                    f"{backend:5s} {model:18s} batch {b:4d}: {1000 * best[b]:8.2f} ms/image "
                    f"({best[b] / fastest:.2f}× the best)",
                    flush=True,
                )
    out_dir = Path(args.results_dir) / env_name("cpu")
    csv = atomic_write_csv(out_dir / "batch_size.csv", rows)
    atomic_write_json(
        out_dir / "batch_size.json",
        {
            "what": "forward seconds per image vs batch size (benchmarks/bench_batch.py)",
            "settings": {
                "models": models,
                "backends": backends,
                "batches": list(batches),
                "largest_batch": LARGEST_BATCH,
                "rounds": args.rounds,
                "min_images": args.min_images,
                "threads": args.threads or "library defaults",
                "seed": args.seed,
                "input": "seeded uniform noise over each model's preprocessed range (speed does not "
                "depend on the pixels)",
            },
            "machine": machine_metadata(),
        },
    )
    print(f"wrote {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
