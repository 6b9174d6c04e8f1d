"""Shared fixtures: seeded generators and the pycaffe guard."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


def require_caffe():
    """Import pycaffe for a test. Skips locally when it is missing, FAILS when env CI is set.

    Tests that need pycaffe must never be silently skipped in CI (foundation issue)."""
    try:
        import caffe  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(f"pycaffe is required in CI but does not import: {exc}")
        pytest.skip(f"pycaffe not available: {exc}")
    caffe.set_mode_cpu()
    return caffe


@pytest.fixture
def caffe():
    return require_caffe()


@pytest.fixture
def seed() -> int:
    return 20240607


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture
def torch_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Tests share a 2-core machine: keep torch to 2 threads."""
    torch.set_num_threads(2)
    yield
