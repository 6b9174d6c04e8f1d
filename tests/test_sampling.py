"""Tests of pda_repro.sampling against slow float64 references (tests/reference/sampling_ref.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pda_repro.grid import window_starts
from pda_repro.sampling import (
    ConstantFill,
    MarginalSampler,
    PatchGaussian,
    blas_thread_counts,
    limit_blas_threads,
)
from tests.reference.sampling_ref import ReferenceSampler, brute_force_conditional


def random_patch_gaussian(rng: np.random.Generator, channels: int, k: int, l: int):  # noqa: E741
    """A random SPD covariance (well conditioned) and mean over C×l×l patches, and the PatchGaussian."""
    dim = channels * l * l
    a = rng.standard_normal((dim, dim))
    cov = a @ a.T / dim + 0.3 * np.eye(dim)
    mean = rng.normal(2.0, 1.0, size=dim)
    return mean, cov, PatchGaussian(mean, cov, k, l, channels)


def smooth_patch_gaussian(rng: np.random.Generator, channels: int, k: int, l: int):  # noqa: E741
    """A natural-image-like Gaussian: squared-exponential spatial kernel (length 1.5 px) ⊗ a random channel
    covariance, + 0.05 I.  Its conditional covariances are strongly correlated, so L and Lᵀ differ a lot."""
    ii, jj = np.meshgrid(np.arange(l), np.arange(l), indexing="ij")
    pos = np.stack([ii.ravel(), jj.ravel()], axis=1)
    spatial = np.exp(-((pos[:, None] - pos[None]) ** 2).sum(-1) / (2 * 1.5**2))
    m = rng.standard_normal((channels, channels))
    cov = np.kron(m @ m.T + 0.5 * np.eye(channels), spatial) + 0.05 * np.eye(channels * l * l)
    mean = rng.normal(2.0, 1.0, size=channels * l * l)
    return mean, cov, PatchGaussian(mean, cov, k, l, channels)


# (channels, k, l, height, width): H != W catches row/column mix-ups; pad = (l-k)/2 = 2 gives 2 clip depths
GEOMETRIES = [(1, 3, 7, 10, 9), (3, 2, 6, 9, 11)]


def clipped_sides(model: PatchGaussian, rows, cols, height, width) -> set[str]:
    """Which sides of the outer patch are clipped for at least one of the windows."""
    clips = model._clip_cases(np.asarray(rows), np.asarray(cols), height, width)
    return {
        side for side, column in zip(("top", "bottom", "left", "right"), clips.T, strict=True) if column.any()
    }


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["C1", "C3"])
def test_conditional_means_equal_brute_force(rng, geometry, stride):
    channels, k, l, height, width = geometry  # noqa: E741
    mean, cov, model = random_patch_gaussian(rng, channels, k, l)
    x = rng.normal(2.0, 1.5, size=(channels, height, width))
    means = model.conditional_means(x, stride=stride, dtype=np.float64)
    rows, cols = window_starts(height, k, stride), window_starts(width, k, stride)
    assert means.shape == (rows.size, cols.size, channels, k, k)
    assert rows[-1] <= height - k < rows[-1] + stride
    r_grid, c_grid = np.meshgrid(rows, cols, indexing="ij")
    assert clipped_sides(model, r_grid.ravel(), c_grid.ravel(), height, width) == {
        "top",
        "bottom",
        "left",
        "right",
    }
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            expected, _ = brute_force_conditional(mean, cov, k, l, x, r, c)
            np.testing.assert_allclose(means[i, j], expected, rtol=0, atol=1e-8)
    # the float32 path (what the window loop uses) agrees to float32 precision
    means32 = model.conditional_means(x.astype(np.float32), stride=stride)
    assert means32.dtype == np.float32
    np.testing.assert_allclose(means32, means, rtol=0, atol=1e-4 * np.abs(means).max())


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["C1", "C3"])
def test_conditional_covariance_equals_brute_force_interior_edges_corners(rng, geometry):
    channels, k, l, height, width = geometry  # noqa: E741
    mean, cov, model = random_patch_gaussian(rng, channels, k, l)
    x = rng.normal(2.0, 1.5, size=(channels, height, width))
    last_r, last_c, mid_r, mid_c = height - k, width - k, (height - k) // 2, (width - k) // 2
    windows = {
        "interior": (mid_r, mid_c),
        "top": (0, mid_c),
        "bottom": (last_r, mid_c),
        "left": (mid_r, 0),
        "right": (mid_r, last_c),
        "top-left": (0, 0),
        "top-right": (0, last_c),
        "bottom-left": (last_r, 0),
        "bottom-right": (last_r, last_c),
        "one-off-edge": (1, last_c - 1),
    }
    for name, (r, c) in windows.items():
        cond_mean, cond_cov = model.conditional_at(x, r, c)
        expected_mean, expected_cov = brute_force_conditional(mean, cov, k, l, x, r, c)
        np.testing.assert_allclose(cond_mean, expected_mean, rtol=0, atol=1e-8, err_msg=name)
        np.testing.assert_allclose(cond_cov, expected_cov, rtol=0, atol=1e-8, err_msg=name)
    assert clipped_sides(model, [mid_r], [mid_c], height, width) == set()


def moment_z_scores(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """Largest |z| of the empirical mean and covariance entries against N(mean, cov), each in units of its
    standard error (var of a covariance estimate ≈ (Σii Σjj + Σij²) / N)."""
    n = samples.shape[0]
    emp_mean = samples.mean(axis=0)
    emp_cov = np.cov(samples, rowvar=False)
    var = np.diag(cov)
    z_mean = np.abs(emp_mean - mean) / np.sqrt(var / n)
    z_cov = np.abs(emp_cov - cov) / np.sqrt((np.outer(var, var) + cov**2) / n)
    return float(z_mean.max()), float(z_cov.max())


@pytest.mark.parametrize("where", ["interior", "corner"])
def test_20000_samples_have_the_conditional_moments(rng, where):
    channels, k, l, height, width = 3, 2, 6, 9, 11  # noqa: E741
    _, _, model = smooth_patch_gaussian(rng, channels, k, l)
    x = rng.normal(2.0, 1.5, size=(channels, height, width)).astype(np.float32)
    r, c = (3, 4) if where == "interior" else (height - k, 0)
    cond_mean, cond_cov = model.conditional_at(x, r, c)
    draws = model.sample_at(x, [r], [c], 20_000, rng)
    assert draws.shape == (1, 20_000, channels, k, k) and draws.dtype == np.float32
    z_mean, z_cov = moment_z_scores(
        draws[0].reshape(20_000, -1).astype(np.float64), cond_mean.ravel(), cond_cov
    )
    assert z_mean < 5 and z_cov < 5, (z_mean, z_cov)
    # the same check rejects samples drawn with a transposed factor (mean + Lᵀ z): it can fail
    chol = np.linalg.cholesky(cond_cov)
    wrong = cond_mean.ravel() + rng.standard_normal((20_000, cond_cov.shape[0])) @ chol
    assert moment_z_scores(wrong, cond_mean.ravel(), cond_cov)[1] > 10


def test_vectorised_and_reference_agree(rng):
    channels, k, l, height, width = 3, 2, 6, 9, 11  # noqa: E741
    mean, cov, model = smooth_patch_gaussian(rng, channels, k, l)
    reference = ReferenceSampler(mean, cov, k, l)
    x = rng.normal(2.0, 1.5, size=(channels, height, width))
    rows, cols = np.meshgrid(window_starts(height, k), window_starts(width, k), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    np.testing.assert_allclose(
        model.mean_at(x, rows, cols, dtype=np.float64), reference.mean_at(x, rows, cols), rtol=0, atol=1e-10
    )
    # same seed, float64: the same standard normals in the same order, so the same samples up to rounding
    fast = model.sample_at(x, rows, cols, 4, np.random.default_rng(7), dtype=np.float64)
    slow = reference.sample_at(x, rows, cols, 4, np.random.default_rng(7))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-10)
    # the float32 draw (a different normal stream) has the reference's distribution at one clipped window
    r, c = 0, width - k
    draws32 = model.sample_at(x, [r], [c], 20_000, np.random.default_rng(8))[0].reshape(20_000, -1)
    draws_ref = reference.sample_at(x, [r], [c], 20_000, np.random.default_rng(9))[0].reshape(20_000, -1)
    ref_mean, ref_chol = reference.conditional(x, r, c)
    for draws in (draws32.astype(np.float64), draws_ref):
        z_mean, z_cov = moment_z_scores(draws, ref_mean, ref_chol @ ref_chol.T)
        assert z_mean < 5 and z_cov < 5, (z_mean, z_cov)


def test_same_seed_same_samples_and_chunking_does_not_matter(rng):
    _, _, model = random_patch_gaussian(rng, 3, 2, 6)
    x = rng.normal(size=(3, 9, 11)).astype(np.float32)
    rows, cols = np.meshgrid(window_starts(9, 2), window_starts(11, 2), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    once = model.sample_at(x, rows, cols, 5, np.random.default_rng(3))
    again = model.sample_at(x, rows, cols, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(once, again)
    assert not np.array_equal(once, model.sample_at(x, rows, cols, 5, np.random.default_rng(4)))
    gen = np.random.default_rng(3)
    split = [model.sample_at(x, rows[a : a + 7], cols[a : a + 7], 5, gen) for a in range(0, rows.size, 7)]
    # the same normals; BLAS may round a differently sized product differently (float32: ~1e-7 relative)
    np.testing.assert_allclose(np.concatenate(split), once, rtol=1e-5, atol=1e-5)
    grid = model.sample(x, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(grid.reshape(once.shape), once)
    # windows given in another order get their own draws but the same conditional means
    perm = np.random.default_rng(5).permutation(rows.size)
    np.testing.assert_allclose(
        model.mean_at(x, rows[perm], cols[perm]), model.mean_at(x, rows, cols)[perm], rtol=1e-5, atol=1e-5
    )


def test_fit_recovers_a_known_gaussian(rng):
    channels, k, l, n_images = 2, 2, 4, 6000  # noqa: E741
    dim = channels * l * l
    a = rng.standard_normal((dim, dim))
    true_cov = a @ a.T / dim + 0.2 * np.eye(dim)
    true_mean = rng.normal(1.0, 2.0, size=dim)
    draws = rng.multivariate_normal(true_mean, true_cov, size=n_images)
    images = draws.reshape(n_images, channels, l, l)  # each image is exactly one l×l patch
    fitted = PatchGaussian.fit(images, k, l, n_patches=n_images, rng=rng, ridge=1e-5)
    z_mean, z_cov = moment_z_scores(np.asarray(draws), true_mean, true_cov)
    fz_mean, fz_cov = moment_z_scores(np.asarray(draws), fitted.mean, fitted.cov)
    assert max(fz_mean, fz_cov) < 1e-3  # fitted = the samples' own moments (+ a tiny ridge)
    mean_var = np.trace(np.cov(draws, rowvar=False)) / dim
    np.testing.assert_allclose(
        fitted.cov, np.cov(draws, rowvar=False) + 1e-5 * mean_var * np.eye(dim), atol=1e-10
    )
    z_fit_mean = np.abs(fitted.mean - true_mean) / np.sqrt(np.diag(true_cov) / n_images)
    var = np.diag(true_cov)
    z_fit_cov = np.abs(fitted.cov - true_cov) / np.sqrt((np.outer(var, var) + true_cov**2) / n_images)
    assert z_fit_mean.max() < 5 and z_fit_cov.max() < 5
    independent = PatchGaussian.fit(images, k, l, n_patches=n_images, rng=rng, independent_channels=True)
    block = l * l
    assert independent.independent_channels and np.all(independent.cov[:block, block:] == 0)
    np.testing.assert_allclose(independent.cov[:block, :block], fitted.cov[:block, :block], atol=1e-10)


def test_fit_finds_the_orientation_of_a_stationary_field(rng):
    """Field x[i, j] = 3 + e[i, j] + 0.8 e[i, j+1] (white e): var 1.64, horizontal neighbour cov 0.8,
    vertical 0 — a row/column mix-up in patch extraction would swap the last two."""
    noise = rng.standard_normal((30, 1, 48, 49))
    images = 3.0 + noise[..., :48] + 0.8 * noise[..., 1:]
    fitted = PatchGaussian.fit(images, 2, 4, n_patches=8000, rng=rng)
    cov = fitted.cov.reshape(4, 4, 4, 4)  # (i, j, i', j') for the single channel
    np.testing.assert_allclose(fitted.mean, 3.0, atol=0.1)
    np.testing.assert_allclose(np.diag(fitted.cov), 1.64, atol=0.12)
    np.testing.assert_allclose([cov[1, 1, 1, 2], cov[2, 0, 2, 1]], 0.8, atol=0.1)
    np.testing.assert_allclose([cov[1, 1, 2, 1], cov[0, 2, 1, 2], cov[1, 1, 1, 3]], 0.0, atol=0.1)
    # a list of the same images (the per-image path) picks the same positions and gives the same fit
    as_list = PatchGaussian.fit(list(images), 2, 4, n_patches=500, rng=np.random.default_rng(1))
    as_stack = PatchGaussian.fit(images, 2, 4, n_patches=500, rng=np.random.default_rng(1))
    np.testing.assert_allclose(as_list.cov, as_stack.cov, rtol=1e-12)
    # photos come in different sizes: crops of 48×48 down to 20×31
    crops = [im[:, : 20 + i, : 31 + (i % 7)] for i, im in enumerate(images[:28])]
    cov = PatchGaussian.fit(crops, 2, 4, n_patches=8000, rng=rng).cov.reshape(4, 4, 4, 4)
    np.testing.assert_allclose([cov[1, 1, 1, 2], cov[1, 1, 2, 1]], [0.8, 0.0], atol=0.1)


def test_save_load_and_fit_cache(tmp_path, rng):
    images = rng.normal(size=(12, 3, 20, 20)).astype(np.float32)
    calls = []

    def load_images():
        calls.append(1)
        return images

    kwargs = dict(
        channels=3, tag="unit-test", source="random normal", n_patches=200, seed=11, cache_dir=tmp_path
    )
    first = PatchGaussian.fit_cached(load_images, 2, 4, **kwargs)
    second = PatchGaussian.fit_cached(load_images, 2, 4, **kwargs)
    assert len(calls) == 1  # the second call was served from the cache without loading images
    np.testing.assert_array_equal(first.cov, second.cov)
    direct = PatchGaussian.fit(images, 2, 4, n_patches=200, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(direct.mean, first.mean)
    PatchGaussian.fit_cached(load_images, 2, 4, **{**kwargs, "tag": "other-preprocessing"})
    assert len(calls) == 2  # a different key refits
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(name.endswith(".npz") for name in files)  # no temp files left
    path = first.save(tmp_path / "model.npz")
    loaded = PatchGaussian.load(path)
    assert (loaded.k, loaded.l, loaded.channels, loaded.tag, loaded.source, loaded.n_patches) == (
        2,
        4,
        3,
        "unit-test",
        "random normal",
        200,
    )
    x = images[0]
    np.testing.assert_array_equal(
        loaded.sample(x, 3, np.random.default_rng(1)), first.sample(x, 3, np.random.default_rng(1))
    )
    with pytest.raises(TypeError, match="Generator"):
        first.sample(x, 3, 1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m, c: PatchGaussian(m, c, 3, 3, 1), r"larger than the window k=3, got l=3"),
        (lambda m, c: PatchGaussian(m, c, 4, 3, 1), r"larger than the window k=4, got l=3"),
        (lambda m, c: PatchGaussian(m, c, 2, 3, 1), r"l - k must be even.*k=2, l=3"),
        (lambda m, c: PatchGaussian(m, c, 2, 4, 2), r"shape \(32,\).*got \(16,\)"),
        (lambda m, c: PatchGaussian(m, np.zeros_like(c), 2, 4, 1), r"not positive definite"),
    ],
)
def test_bad_parameters_raise(rng, build, message):
    mean, cov, _ = random_patch_gaussian(rng, 1, 2, 4)
    with pytest.raises(ValueError, match=message):
        build(mean, cov)


def test_bad_images_raise(rng):
    _, _, model = random_patch_gaussian(rng, 3, 2, 6)
    with pytest.raises(ValueError, match=r"1 channels .* models 3"):
        model.sample(rng.normal(size=(1, 9, 9)), 2, rng)
    with pytest.raises(ValueError, match=r"outer patch l=6 is larger than the image \(5×9\)"):
        model.check(rng.normal(size=(3, 5, 9)))
    x = rng.normal(size=(3, 9, 9))
    x[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN/inf"):
        model.conditional_means(x)
    with pytest.raises(ValueError, match=r"window row 8 \(index 1\) is outside 0..7"):
        model.mean_at(rng.normal(size=(3, 9, 9)), [0, 8], [0, 0])
    with pytest.raises(ValueError, match=r"window k=12 is larger than the image side 9"):
        ConstantFill(0.0, 12, 3).sample(rng.normal(size=(3, 9, 9)), 1, rng)
    good = rng.normal(size=(20, 3, 12, 12))
    with pytest.raises(ValueError, match=r"n_patches=100 is too few for a 108-dimensional covariance"):
        PatchGaussian.fit(good, 2, 6, n_patches=100, rng=rng)
    with pytest.raises(
        ValueError, match=r"n_patches=30 is too few for a 36-dimensional covariance.*per channel"
    ):
        PatchGaussian.fit(good, 2, 6, n_patches=30, rng=rng, independent_channels=True)
    with pytest.raises(ValueError, match=r"only 980 l×l positions"):
        PatchGaussian.fit(good, 2, 6, n_patches=1000, rng=rng)
    with pytest.raises(ValueError, match=r"outer patch l=14 is larger than image 0 \(12×12\)"):
        PatchGaussian.fit(good, 2, 14, n_patches=500, rng=rng)
    bad = good.copy()
    bad[4, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"image 4 contains NaN"):
        PatchGaussian.fit(bad, 2, 6, n_patches=500, rng=rng)
    with pytest.raises(ValueError, match=r"image 1 has 1 channels, image 0 has 3"):
        PatchGaussian.fit([good[0], good[1, :1]], 2, 6, n_patches=500, rng=rng)
    with pytest.raises(ValueError, match=r"zero variance"):
        PatchGaussian.fit(np.full((20, 3, 12, 12), 5.0), 2, 6, n_patches=500, rng=rng)


def test_marginal_sampler_takes_windows_from_dataset_images(rng):
    n_images, channels, height, width, k = 6, 2, 8, 9, 3
    # image j is noise + 100·j, so every drawn window tells which image it came from
    images = (
        rng.normal(size=(n_images, channels, height, width))
        + 100.0 * np.arange(n_images)[:, None, None, None]
    )
    sampler = MarginalSampler(images, k)
    x = rng.normal(size=(channels, height, width))
    rows, cols = np.array([0, 5, 2]), np.array([6, 0, 3])
    draws = sampler.sample_at(x, rows, cols, 40, np.random.default_rng(2))
    assert draws.shape == (3, 40, channels, k, k) and draws.dtype == np.float32
    used = set()
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        for s in range(40):
            j = int(round(float(draws[i, s].mean()) / 100.0))
            used.add(j)
            np.testing.assert_array_equal(draws[i, s], images[j, :, r : r + k, c : c + k].astype(np.float32))
    assert used == set(range(n_images))
    np.testing.assert_array_equal(draws, sampler.sample_at(x, rows, cols, 40, np.random.default_rng(2)))
    first = MarginalSampler(images, k, mode="first").sample_at(x, rows, cols, 4, rng)
    np.testing.assert_array_equal(first[1, 3], images[3, :, 5:8, 0:3].astype(np.float32))
    means = sampler.mean_at(x, rows, cols)
    np.testing.assert_allclose(means[2], images.mean(axis=0)[:, 2:5, 3:6], rtol=1e-6)
    assert sampler.conditional_means(x, stride=2).shape == (3, 4, channels, k, k)
    with pytest.raises(
        ValueError, match=r"image shape \(2, 8, 8\) differs from the dataset images' \(2, 8, 9\)"
    ):
        sampler.sample_at(x[:, :, :8], rows, cols, 2, rng)
    with pytest.raises(ValueError, match=r"first bad image index 1"):
        MarginalSampler(np.where(np.arange(n_images)[:, None, None, None] == 1, np.nan, images), k)


def test_constant_fill_is_occlusion(rng):
    x = rng.normal(size=(3, 10, 12))
    grey = ConstantFill((0.5, -1.0, 2.0), 4, 3)
    out = grey.sample_at(x, [0, 6], [8, 2], 3, rng)
    assert out.shape == (2, 3, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1, 2, :, 0, 0], [0.5, -1.0, 2.0])
    assert np.all(out[:, :, 1] == -1.0)
    scalar = ConstantFill(7.0, 4, 3)
    assert np.all(scalar.mean_at(x, [1], [1]) == 7.0)
    assert scalar.sample(x, 2, rng, stride=3).shape == (3, 3, 2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"scalar or 3 per-channel values, got \(1.0, 2.0\)"):
        ConstantFill((1.0, 2.0), 4, 3)
    with pytest.raises(ValueError, match=r"image has 1 channels"):
        scalar.sample_at(x[:1], [0], [0], 1, rng)


def test_every_sampler_follows_the_window_loop_contract(rng):
    channels, height, width, k = 3, 12, 13, 2
    x = rng.normal(size=(channels, height, width)).astype(np.float32)
    _, _, gaussian = random_patch_gaussian(rng, channels, k, 6)
    samplers = [
        gaussian,
        MarginalSampler(rng.normal(size=(5, channels, height, width)), k),
        ConstantFill(0.1, k, channels),
    ]
    rows, cols = np.array([0, 3, 10]), np.array([11, 5, 0])
    for sampler in samplers:
        assert (sampler.k, sampler.channels) == (k, channels)
        sampler.check(x)
        draws = sampler.sample_at(x, rows, cols, 4, np.random.default_rng(1))
        assert draws.shape == (3, 4, channels, k, k) and draws.dtype == np.float32
        means = sampler.mean_at(x, rows, cols)
        assert means.shape == (3, channels, k, k) and means.dtype == np.float32
        assert sampler.sample_at(x, np.array([], dtype=int), np.array([], dtype=int), 4, rng).shape == (
            0,
            4,
            channels,
            k,
            k,
        )
        with pytest.raises(ValueError, match=r"2 channels"):
            sampler.check(x[:2])


def test_limit_blas_threads_sets_and_restores_openblas_threads(rng):
    before = blas_thread_counts()
    if sys.platform.startswith("linux"):
        assert len(before) >= 1  # numpy's bundled OpenBLAS at least
    with limit_blas_threads(1) as limited:
        assert limited == len(before)
        assert blas_thread_counts() == [1] * len(before)
        with limit_blas_threads(None):
            assert blas_thread_counts() == [1] * len(before)
    assert blas_thread_counts() == before
    with pytest.raises(ValueError, match=r"positive integer or None, got 0"):
        with limit_blas_threads(0):
            pass
    mean, cov, _ = random_patch_gaussian(rng, 1, 2, 4)
    with pytest.raises(ValueError, match=r"blas_threads must be a positive integer, got -2"):
        PatchGaussian(mean, cov, 2, 4, 1, blas_threads=-2)
    # the thread setting does not change results
    x = rng.normal(size=(1, 8, 8))
    unlimited = PatchGaussian(mean, cov, 2, 4, 1, blas_threads=None)
    np.testing.assert_allclose(
        unlimited.conditional_means(x, dtype=np.float64),
        PatchGaussian(mean, cov, 2, 4, 1).conditional_means(x, dtype=np.float64),
        atol=1e-12,
    )


# -- border="shift": the original PDA code's rule -----------------------------------------------------


def original_shifted_conditional(mean, cov, k, l, x, row, col):  # noqa: E741
    """The original PDA code's `_get_surr_patch` + `_get_cond_params`, written out directly: the l×l patch
    is taken at the image edge when the window is within pad = (l-k)/2 of it (top/bottom/left/right tested
    one by one, as there), else centred; the window's indices inside that patch are looked up; then
    mean = μ_w + Σ_wo inv(Σ_oo) (x_o − μ_o), cov = Σ_ww − Σ_wo inv(Σ_oo) Σ_ow with an explicit inverse."""
    channels, height, width = x.shape
    pad = (l - k) // 2
    upper, lower, left, right = row, row + k - 1, col, col + k - 1  # first/last window pixel
    if upper < pad:  # upper side: patch rows 0..l-1
        top = 0
    elif lower > height - 1 - pad:  # lower side: the last l rows
        top = height - l
    else:
        top = upper - pad
    if left < pad:
        start = 0
    elif right > width - 1 - pad:
        start = width - l
    else:
        start = left - pad
    patch = x[:, top : top + l, start : start + l].reshape(-1)
    index = np.arange(channels * l * l).reshape(channels, l, l)
    w = index[:, row - top : row - top + k, col - start : col - start + k].ravel()
    o = np.setdiff1d(np.arange(channels * l * l), w)
    s_oo_inv = np.linalg.inv(cov[np.ix_(o, o)])
    gain = cov[np.ix_(w, o)] @ s_oo_inv
    cond_mean = mean[w] + gain @ (patch[o] - mean[o])
    cond_cov = cov[np.ix_(w, w)] - gain @ cov[np.ix_(o, w)]
    return cond_mean.reshape(channels, k, k), cond_cov


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["C1", "C3"])
def test_border_shift_equals_the_original_formula(rng, geometry):
    channels, k, l, height, width = geometry  # noqa: E741
    mean, cov, clip = random_patch_gaussian(rng, channels, k, l)
    shift = clip.with_border("shift")
    assert shift.border == "shift" and clip.border == "clip" and "shift" in repr(shift)
    x = rng.normal(2.0, 1.5, size=(channels, height, width))
    means = shift.conditional_means(x, stride=1, dtype=np.float64)
    means_clip = clip.conditional_means(x, stride=1, dtype=np.float64)
    pad = (l - k) // 2
    n_border = 0
    for r in range(height - k + 1):
        for c in range(width - k + 1):
            expected_mean, expected_cov = original_shifted_conditional(mean, cov, k, l, x, r, c)
            np.testing.assert_allclose(means[r, c], expected_mean, rtol=0, atol=1e-8, err_msg=f"{r},{c}")
            _, got_cov = shift.conditional_at(x, r, c)
            np.testing.assert_allclose(got_cov, expected_cov, rtol=0, atol=1e-8, err_msg=f"{r},{c}")
            interior = pad <= r <= height - k - pad and pad <= c <= width - k - pad
            if interior:  # the centred patch fits: both rules are the same conditional
                np.testing.assert_allclose(means[r, c], means_clip[r, c], rtol=0, atol=1e-10)
            else:
                n_border += 1
                assert np.abs(means[r, c] - means_clip[r, c]).max() > 1e-6  # a different conditional
    assert n_border > 0
    # samples: mean + L z with the shifted conditional's Cholesky factor, z drawn in window order
    rows, cols = np.array([0, height - k, 1]), np.array([width - k, 0, 1])
    got = shift.sample_at(x, rows, cols, 3, np.random.default_rng(5), dtype=np.float64)
    z = np.random.default_rng(5).standard_normal((rows.size, 3, channels * k * k))
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        m, s = original_shifted_conditional(mean, cov, k, l, x, r, c)
        expected = m.ravel() + z[i] @ np.linalg.cholesky(s).T
        np.testing.assert_allclose(got[i].reshape(3, -1), expected, rtol=0, atol=1e-8)
    assert shift.precompute(height, width) >= 4
    with pytest.raises(ValueError, match="border must be one of clip, shift, got 'wrap'"):
        clip.with_border("wrap")
