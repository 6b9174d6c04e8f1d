"""Micro-benchmarks (pytest-benchmark), kept apart from the unit tests in tests/:

    .venv/bin/python -m pytest benchmarks --benchmark-json results/<env>/pytest-benchmark.json

(`make microbench` where the Makefile has it.) A bare `pytest` never collects them (pyproject's testpaths
is ["tests"]). Models: PDA_BENCH_MODELS (comma list, default "mnist,alexnet"); batch: PDA_BENCH_BATCH
(default 160). A backend that cannot load here (no pycaffe) is skipped with the reason.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

BACKENDS = ("caffe", "torch")


def bench_models() -> list[str]:
    return [m.strip() for m in os.environ.get("PDA_BENCH_MODELS", "mnist,alexnet").split(",") if m.strip()]


def bench_batch() -> int:
    return int(os.environ.get("PDA_BENCH_BATCH", "160"))


def pytest_generate_tests(metafunc):
    if "model_backend" in metafunc.fixturenames:
        pairs = [(m, b) for m in bench_models() for b in BACKENDS]
        metafunc.parametrize("model_backend", pairs, ids=[f"{m}-{b}" for m, b in pairs], scope="module")


@pytest.fixture(scope="session")
def bench_rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@pytest.fixture(scope="session")
def batch() -> int:
    return bench_batch()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Put the machine and library facts of pda_repro.bench.results into the JSON."""
    from pda_repro.bench.results import env_name, machine_metadata

    output_json["pda_repro"] = {"env": env_name("cpu"), **machine_metadata()}


@pytest.fixture(scope="session", autouse=True)
def _threads_per_library():
    """One thread per library (PDA_BENCH_THREADS, 0 = library defaults), as `pda-repro benchmark run`."""
    from pda_repro.bench.timing import limit_threads

    n = int(os.environ.get("PDA_BENCH_THREADS", "1"))
    limit_threads(n or None)
    yield
