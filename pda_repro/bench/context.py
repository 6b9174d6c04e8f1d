"""What every experiment shares: the run's settings, the models it loads (once), its inputs and samplers,
and how long a forward batch is expected to take (for the ETA).
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro import seeding
from pda_repro.bench.results import ResultStore, machine_metadata, weights_label
from pda_repro.bench.settings import RunSettings
from pda_repro.bench.timing import Progress

PAPER_MODELS = ("alexnet", "vgg16", "googlenet")
ZOO_MODELS = ("alexnet", "vgg16", "googlenet", "mnist")
OPTIONAL_MODELS = ("efficientnet_lite0",)
BACKENDS = ("caffe", "torch")

# Rough seconds per forward batch of 160 (torch, CPU), used only for the ETA before the run has measured
# its own (Table 1 rows of this env replace them).
GUESS_SECONDS_PER_BATCH = {
    "mnist": 0.03,
    "alexnet": 1.5,
    "googlenet": 4.0,
    "vgg16": 40.0,
    "efficientnet_lite0": 4.0,
}

__all__ = [
    "BACKENDS",
    "BenchContext",
    "PAPER_MODELS",
    "ZOO_MODELS",
    "available_models",
    "random_input",
]


def available_models() -> list[str]:
    """The four zoo nets, plus the optional ones (efficientnet_lite0) when the zoo registers them."""
    from pda_repro import zoo

    known = set(zoo.names())
    return [m for m in ZOO_MODELS if m in known] + [m for m in OPTIONAL_MODELS if m in known]


def random_input(shape: tuple[int, ...], spec: Any, rng: np.random.Generator) -> np.ndarray:
    """A seeded float32 batch spread uniformly over the spec's preprocessed pixel range (timing only:
    the speed of a forward pass does not depend on the pixels)."""
    lo, hi = spec.input_range if spec is not None else (-1.0, 1.0)
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


@dataclass
class BenchContext:
    """What the experiments of one `pda-repro benchmark run` share: its settings (read, never copied), the
    result store, the progress line, and the models and samplers loaded once."""

    store: ResultStore
    settings: RunSettings = field(default_factory=RunSettings)
    progress: Progress | None = None
    _backends: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _samplers: dict[tuple[Any, ...], tuple[Any, dict]] = field(default_factory=dict, repr=False)
    _machine: dict[str, Any] | None = field(default=None, repr=False)

    # -- metadata ----------------------------------------------------------------------------------
    def machine(self) -> dict[str, Any]:
        """Machine metadata, computed once per run (load average refreshed per call of ``cell_meta``)."""
        if self._machine is None:
            self._machine = machine_metadata(self.settings.command)
        return self._machine

    def cell_meta(self, **cell_settings: Any) -> dict[str, Any]:
        """Metadata for one cell: the machine's, the run's settings, and the cell's own settings."""
        import datetime as dt
        import os

        meta = dict(self.machine())
        meta["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if hasattr(os, "getloadavg"):
            meta["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
        meta.update(
            {
                "device": self.settings.device,
                "batch": self.settings.batch,
                "profile": self.settings.profile,
                "seed": self.settings.seed,
                "threads_per_library": self.settings.threads or "library defaults",
                **cell_settings,
            }
        )
        return meta

    # -- models ------------------------------------------------------------------------------------
    def spec(self, model: str) -> Any:
        from pda_repro import zoo

        return zoo.get(model)

    def weights_for(self, model: str) -> tuple[str | None, str]:
        """(weights path or None, label) for a model: --weights if given, else the zoo's trained weights
        if it has them, else seeded random fillers."""
        if self.settings.weights is not None:
            return self.settings.weights, weights_label(self.settings.weights)
        spec = self.spec(model)
        path = getattr(spec, "weights", None)
        if path is not None and Path(path).is_file():
            return str(path), weights_label(path)
        return None, f"random (seeded fillers, seed {self.settings.seed})"

    def has_trained_weights(self, model: str) -> bool:
        return self.weights_for(model)[0] is not None

    def backend(self, model: str, backend: str) -> Any:
        """The loaded backend for (model, backend), loaded once and kept until ``release``."""
        key = (model, backend)
        if key not in self._backends:
            from pda_repro.backends import load_backend

            weights, _ = self.weights_for(model)
            self._backends[key] = load_backend(
                model,
                backend=backend,
                device=self.settings.device,
                weights=weights,
                batch=self.settings.batch,
                seed=self.settings.seed,
            )
            if self.settings.threads:
                from pda_repro.bench.timing import limit_threads

                limit_threads(self.settings.threads)  # pycaffe's OpenBLAS is loaded with its backend
        return self._backends[key]

    def sampler(
        self, model: str, window: int, outer: int, image_hw: tuple[int, int] | None = None
    ) -> tuple[Any, float]:
        """(conditional sampler for the model's inputs, seconds its set-up took), built once per run: fitted
        (or read from the sampler's disk cache) and, with ``image_hw``, every clipping case of an image of
        that size factorised in advance — the paper: "these distribution parameters can be computed in
        advance". Without ``image_hw`` cases are factorised on first use."""
        import time

        key = (model, window, outer)
        if key not in self._samplers:
            from pda_repro.bench.inputs import model_sampler

            self._samplers[key] = (
                model_sampler(self.spec(model), model, window, outer, self.settings.seed),
                {},
            )
        sampler, setups = self._samplers[key]
        if image_hw is None:
            return sampler, 0.0
        if image_hw not in setups:
            t0 = time.perf_counter()
            sampler.precompute(*image_hw)
            setups[image_hw] = time.perf_counter() - t0
        return sampler, setups[image_hw]

    def release(self, model: str | None = None, backend: str | None = None) -> None:
        """Drop loaded backends (all, one model's, or one (model, backend)) and, with a whole model, its
        samplers; then collect their memory (a large net at batch 160 holds gigabytes per backend)."""
        for key in [
            k for k in self._backends if model is None or (k[0] == model and backend in (None, k[1]))
        ]:
            del self._backends[key]
        if backend is None:
            for key in [k for k in self._samplers if model is None or k[0] == model]:
                del self._samplers[key]
        gc.collect()
        if self.settings.device == "cuda":
            with contextlib.suppress(Exception):
                import torch

                torch.cuda.empty_cache()

    def rng(self, *stream: int | str) -> np.random.Generator:
        """A Generator seeded from the run's seed and a stream name, so every cell is reproducible on its
        own (a resumed run draws what an uninterrupted one would have)."""
        return seeding.generator(self.settings.seed, *stream)

    # -- ETA ---------------------------------------------------------------------------------------
    def seconds_per_batch(self, model: str, backend: str) -> float:
        """Median forward time of one batch, from this env's Table 1 if measured, else a guess."""
        frame = self.store.read("table1")
        if not frame.empty:
            rows = frame[
                (frame["model"] == model)
                & (frame["backend"] == backend)
                & (frame["device"] == self.settings.device)
                & (frame["batch"] == self.settings.batch)
            ]
            if len(rows):
                return float(rows["median_ms"].iloc[0]) / 1e3
        guess = GUESS_SECONDS_PER_BATCH.get(model, 4.0) * self.settings.batch / 160
        return guess / 30 if self.settings.device == "cuda" else guess
