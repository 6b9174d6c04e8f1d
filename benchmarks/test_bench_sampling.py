"""The conditional sampler in PDA's setting (3×224×224, k=10, l=18, S=10) as pytest-benchmark
micro-benchmarks: one window-loop chunk of samples (256 windows × 10) and all conditional means of an image.
The full vectorised-vs-reference comparison is `pda-repro benchmark sampler` (pda_repro.bench.sampler_speed)."""

from __future__ import annotations

import numpy as np
import pytest

C, H, W, K, L, S = 3, 224, 224, 10, 18, 10


@pytest.fixture(scope="module")
def gaussian_and_image():
    from pda_repro.sampling import PatchGaussian

    rng = np.random.default_rng(7)
    dim = C * L * L
    a = rng.standard_normal((dim, dim))
    cov = a @ a.T / dim + 0.5 * np.eye(dim)
    model = PatchGaussian(rng.normal(size=dim), cov, K, L, C)
    model.precompute(H, W)  # factors of every clipping case, as a whole-image run amortises them
    return model, rng.normal(size=(C, H, W)).astype(np.float32)


def test_sample_chunk(benchmark, gaussian_and_image):
    model, image = gaussian_and_image
    grid = np.arange(16) * 13  # 16 x 16 windows spread over the image (corners 0..195 <= 224 - 10)
    rows, cols = np.repeat(grid, 16), np.tile(grid, 16)
    rng = np.random.default_rng(0)
    benchmark.group = "sampler, k=10 l=18, 3x224x224"
    benchmark.extra_info.update({"windows": 256, "samples_per_window": S})
    out = benchmark.pedantic(model.sample_at, args=(image, rows, cols, S, rng), rounds=5, warmup_rounds=1)
    assert out.shape == (256, S, C, K, K)


def test_conditional_means_all_windows(benchmark, gaussian_and_image):
    model, image = gaussian_and_image
    benchmark.group = "sampler, k=10 l=18, 3x224x224"
    benchmark.extra_info.update({"windows": (H - K + 1) * (W - K + 1)})
    out = benchmark.pedantic(model.conditional_means, args=(image,), rounds=3, warmup_rounds=1)
    assert out.shape == (H - K + 1, W - K + 1, C, K, K)
