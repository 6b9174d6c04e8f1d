"""One forward batch per model and backend (the unit of Table 1), as a pytest-benchmark micro-benchmark."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def loaded(model_backend, batch, bench_rng):
    from pda_repro import zoo
    from pda_repro.backends import load_backend
    from pda_repro.bench.context import random_input

    model, backend = model_backend
    try:
        net = load_backend(model, backend=backend, device="cpu", batch=batch)
    except ImportError as exc:
        pytest.skip(f"{backend} backend not available: {exc}")
    from pda_repro.bench.timing import limit_threads

    limit_threads(int(os.environ.get("PDA_BENCH_THREADS", "1")) or None)  # pycaffe's OpenBLAS loads with it
    x = random_input((batch, *net.input_shape), zoo.get(model), bench_rng)
    return model, backend, net, x


def test_forward_batch(benchmark, loaded):
    model, backend, net, x = loaded
    benchmark.group = f"forward, batch {x.shape[0]}, cpu"
    benchmark.extra_info.update({"model": model, "backend": backend, "batch": x.shape[0], "device": "cpu"})
    probs, _ = benchmark.pedantic(net.forward, args=(x,), rounds=5, warmup_rounds=1, iterations=1)
    assert probs.shape == (x.shape[0], net.num_classes)
