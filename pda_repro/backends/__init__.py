"""Backends by name ("torch", "caffe") and `load_backend`, the one way to get a runnable zoo net."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.backends.base import CPU_BATCH, PAPER_BATCH, Backend, BackendError, Output, default_batch


def _torch_backend() -> type[Backend]:
    from pda_repro.backends.torch_backend import TorchBackend  # noqa: PLC0415

    return TorchBackend


def _caffe_backend() -> type[Backend]:
    from pda_repro.backends.caffe_backend import CaffeBackend  # noqa: PLC0415

    return CaffeBackend


# name -> a function returning the Backend class (imported lazily: torch and pycaffe are heavy).
BACKENDS: dict[str, Callable[[], type[Backend]]] = {"torch": _torch_backend, "caffe": _caffe_backend}

WeightsArg = str | os.PathLike | dict[str, list[np.ndarray]] | None


def resolve_model(model: Any) -> tuple[Any, Path, Any]:
    """(ModelSpec or None, prototxt path, parsed NetParameter) for a zoo name, a ModelSpec or a path."""
    from pda_repro import proto, zoo  # noqa: PLC0415

    spec = None
    if isinstance(model, zoo.ModelSpec):
        spec = model
    elif isinstance(model, str) and model in zoo.names():
        spec = zoo.get(model)
    if spec is not None:
        spec.require_prototxt()
        path = spec.prototxt
    else:
        path = Path(model)
        if not path.is_file():
            if isinstance(model, str) and not model.endswith(".prototxt") and os.sep not in model:
                zoo.get(model)  # raises KeyError with the zoo's suggestion
            raise BackendError(
                f"model {str(model)!r} is neither a zoo name ({', '.join(zoo.names())}) nor a prototxt file "
                "(PyTorch models: an nn.Module, a .onnx file or torchvision:<arch>)"
            )
    return spec, path, proto.read_prototxt(path)


def load_backend(
    model: Any,
    backend: str = "torch",
    device: str = "cpu",
    weights: WeightsArg | str = None,
    batch: int | None = None,
    seed: int = 0,
    **module_options: Any,
) -> Backend:
    """A runnable net: `model` is a zoo name (see pda_repro.zoo), a ModelSpec or a prototxt path --
    or a PyTorch model: an nn.Module, a .onnx file or "torchvision:<arch>" (then `weights` is a
    state_dict or its file, and `module_options` are input_shape, output and preprocess of
    pda_repro.backends.module_sources.module_backend; backend "torch").

    weights: a .caffemodel path (official Model Zoo files load unchanged), a dict layer -> blobs,
    "random" for seeded filler weights, or None: the zoo's trained weights if the file exists, else
    seeded random weights from the prototxt's fillers (numpy Generator seeded with `seed`, so every
    backend gets the same random net). The result has `model_spec` (the ModelSpec or None) and
    `weights_source` (a path or "random (seed N)"). batch: images per framework call (None:
    default_batch(device))."""
    from pda_repro.backends.caffemodel import read_caffemodel  # noqa: PLC0415
    from pda_repro.backends.module_sources import is_module_model, module_backend  # noqa: PLC0415

    if is_module_model(model):
        if backend not in ("torch", "torch-module"):
            raise BackendError(f"PyTorch and ONNX models run on the torch backend, not {backend!r}")
        return module_backend(model, weights=weights, device=device, batch=batch, seed=seed, **module_options)
    if module_options:
        raise BackendError(
            f"{', '.join(sorted(module_options))}: only for PyTorch/ONNX models, not {model!r}"
        )
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    spec, _, net = resolve_model(model)
    if weights is None and spec is not None and spec.default_weights is not None:
        weights = spec.default_weights
    if weights is None or (isinstance(weights, str) and weights == "random"):
        arrays, source = None, f"random (seed {seed})"
    elif isinstance(weights, dict):
        arrays, source = weights, "given arrays"
    else:
        arrays, source = read_caffemodel(weights), str(weights)
    runner = BACKENDS[backend]()(net, device=device, batch=batch, weights=arrays, seed=seed)
    runner.model_spec = spec
    runner.weights_source = source
    return runner


__all__ = [
    "BACKENDS",
    "CPU_BATCH",
    "PAPER_BATCH",
    "Backend",
    "BackendError",
    "Output",
    "default_batch",
    "load_backend",
    "resolve_model",
]
