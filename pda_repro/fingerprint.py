"""Content hashes that name what a run computed: arrays, fitted samplers, nets.

They are the identity of a window-loop checkpoint (`pda_repro.methods.checkpoint`) and the keys under
which the Ray executors share a sampler or a net (`pda_repro.parallel`); a change here would make old
checkpoints unusable, so the byte layout of each hash is fixed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def array_fingerprint(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def object_fingerprint(obj: object) -> str:
    """Content hash of an object's array and scalar attributes (samplers: fitted parameters)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(obj).__qualname__.encode())
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if isinstance(value, np.ndarray):
            h.update(name.encode() + array_fingerprint(value).encode())
        elif isinstance(value, int | float | str | bool | tuple) or value is None:
            h.update(f"{name}={value!r}".encode())
    return h.hexdigest()


def net_fingerprint(net: Any) -> dict:
    """Identity of a net (a pda_repro Backend) for checkpoints: backend, prototxt hash, weights hash."""
    weights = net.get_weights()
    arrays = [a for name in sorted(weights) for a in weights[name]]
    return {
        "backend": net.name,
        "prototxt": hashlib.blake2b(net.net_param.SerializeToString(), digest_size=16).hexdigest(),
        "weights": array_fingerprint(*arrays) if arrays else "",
    }
