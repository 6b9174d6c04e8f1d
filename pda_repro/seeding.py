"""One way to derive independent random streams from a run's seed and names.

A stream is named by integers and strings; a string becomes the first 8 bytes of its SHA-256 (so two
names never share a stream by a common prefix), an integer stays itself. `generator(seed, *names)` is
numpy's Generator on the SeedSequence of those words: the same names give the same draws on every run,
whatever else was drawn before.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stream_words(*names: int | str) -> list[int]:
    """The SeedSequence words of a stream's names."""
    words = []
    for name in names:
        if isinstance(name, str):
            words.append(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
        else:
            words.append(int(name))
    return words


def generator(seed: int, *names: int | str) -> np.random.Generator:
    """A Generator for the stream `names` of the run seeded with `seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *stream_words(*names)]))
