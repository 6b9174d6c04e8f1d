"""The one seeding helper (pda_repro.seeding) and the one paths module (pda_repro.paths)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pda_repro import paths, seeding


def test_a_stream_is_its_names_and_names_sharing_a_prefix_differ():
    a = seeding.generator(3, "efficientnet_lite0", 1).standard_normal(4)
    np.testing.assert_array_equal(a, seeding.generator(3, "efficientnet_lite0", 1).standard_normal(4))
    # the first 8 bytes alike ("efficien"): different streams (an 8-byte truncation would merge them)
    assert not np.array_equal(a, seeding.generator(3, "efficientnet_lite1", 1).standard_normal(4))
    assert not np.array_equal(a, seeding.generator(4, "efficientnet_lite0", 1).standard_normal(4))
    assert not np.array_equal(a, seeding.generator(3, "efficientnet_lite0", 2).standard_normal(4))
    word = int.from_bytes(hashlib.sha256(b"fig12").digest()[:8], "little")
    assert seeding.stream_words("fig12", 7) == [word, 7]
    expected = np.random.default_rng(np.random.SeedSequence([5, word, 7])).random(3)
    np.testing.assert_array_equal(seeding.generator(5, "fig12", 7).random(3), expected)


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PDA_REPRO_CACHE", str(tmp_path / "c"))
    assert paths.cache_dir("samplers") == tmp_path / "c" / "samplers"
    from pda_repro import data, sampling

    assert data.mnist_dir() == tmp_path / "c" / "mnist"
    gauss = sampling.PatchGaussian.fit_cached(
        np.random.default_rng(0).standard_normal((2, 1, 8, 8)),
        1,
        3,
        channels=1,
        tag="t",
        source="s",
        n_patches=40,
    )
    assert [p.parent for p in (tmp_path / "c").rglob("*.npz")] == [
        tmp_path / "c" / "samplers"
    ] and gauss.k == 1
    monkeypatch.delenv("PDA_REPRO_CACHE")
    assert paths.cache_dir() == Path.home() / ".cache" / "pda-repro"
    assert (paths.REPO_ROOT / "pyproject.toml").is_file()
