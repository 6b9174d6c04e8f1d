"""Ctrl-C (KeyboardInterrupt) during a long run keeps the work done so far in the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from pda_repro.explain import explain
from pda_repro.sampling import PatchGaussian
from tests.reference.methods_ref import TINY, NumpyChainBackend, parse_prototxt, random_spd, random_weights

ARGS = dict(method="pda", window=3, outer=5, samples=6, batch=10, train_size=1000, progress=False)


def test_ctrl_c_saves_a_checkpoint_that_resumes_to_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(11)
    net = NumpyChainBackend(
        TINY / "linear.prototxt", random_weights(parse_prototxt(TINY / "linear.prototxt"), rng)
    )
    x = rng.standard_normal((2, 9, 9)).astype(np.float32)
    gauss = PatchGaussian(rng.standard_normal(50) * 0.3, random_spd(50, rng), 3, 5, 2)
    ckpt = tmp_path / "run.ckpt.npz"

    def ctrl_c(done: int, total: int) -> None:
        if done >= 70:
            raise KeyboardInterrupt

    # Periodic saving effectively off: whatever is in the checkpoint was written by the Ctrl-C handler.
    with pytest.raises(KeyboardInterrupt):
        explain(
            net,
            x,
            sampler=gauss,
            rng=np.random.default_rng(5),
            checkpoint=ckpt,
            callback=ctrl_c,
            checkpoint_batches=10**9,
            checkpoint_seconds=1e9,
            **ARGS,
        )
    assert ckpt.exists()
    resumed = explain(net, x, sampler=gauss, rng=np.random.default_rng(5), checkpoint=ckpt, **ARGS)
    assert resumed.params["resumed_evaluations"] == 70
    fresh = explain(net, x, sampler=gauss, rng=np.random.default_rng(5), **ARGS)
    np.testing.assert_array_equal(resumed.maps, fresh.maps)
