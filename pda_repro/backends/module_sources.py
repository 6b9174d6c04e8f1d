"""Where a PyTorch model comes from: an nn.Module, an ONNX file, or "torchvision:<arch>".

`module_backend(model, ...)` turns any of them into a ModuleBackend with its preprocessing
(pda_repro.presets). Nothing is downloaded: torchvision weights come from a state_dict file the
user gives; without one the architecture gets seeded random weights (torchvision's initialisers run
under torch.random.fork_rng seeded with `seed`, so the caller's global RNG is left as it was).

ONNX files are converted with onnx2torch. Two things are fixed first: Identity nodes whose input is
an initializer (the legacy exporter de-duplicates equal initializers that way) become copies of
it; and an op or opset onnx2torch has no converter for is a ValueError naming the op and opset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pda_repro.backends.base import BackendError

TORCHVISION_PREFIX = "torchvision:"


def is_module_model(model: Any) -> bool:
    """Whether `model` is for the module backend: an nn.Module, an .onnx path or "torchvision:<arch>"."""
    if isinstance(model, nn.Module):
        return True
    if isinstance(model, str | os.PathLike):
        text = str(model)
        return text.startswith(TORCHVISION_PREFIX) or text.lower().endswith(".onnx")
    return False


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict saved with torch.save (also {"state_dict": ...} / {"model": ...} checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"weights file {str(path)!r} not found")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
        reason = " ".join(str(exc).split())[:160]
        raise BackendError(f"weights file {str(path)!r} is not a torch state_dict ({reason})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackendError(f"weights file {str(path)!r} is not a state_dict (a dict of name -> tensor)")
    return state


def torchvision_model(arch: str, seed: int = 0) -> nn.Module:
    """A torchvision classification architecture with seeded random weights (no download)."""
    import torchvision  # noqa: PLC0415

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        import difflib  # noqa: PLC0415

        close = difflib.get_close_matches(arch, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BackendError(f"unknown torchvision architecture {arch!r}{hint}; known: {', '.join(known)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(arch, weights=None, **extra).eval()


def torchvision_preprocessing(arch: str) -> dict[str, Any] | None:
    """The preprocessing of the architecture's torchvision weights (crop, resize, mean, std), if any."""
    import torchvision  # noqa: PLC0415

    try:
        t = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    except Exception:  # noqa: BLE001 - architectures without published weights
        return None
    from pda_repro import zoo  # noqa: PLC0415

    names = {"class_names": str(zoo.ILSVRC_CLASS_NAMES)} if zoo.ILSVRC_CLASS_NAMES.is_file() else {}
    return {**names, "crop": int(t.crop_size[0]), "resize": int(t.resize_size[0]), "mean": list(t.mean),
            "std": list(t.std), "interpolation": t.interpolation.value, "channel_order": "RGB"}  # fmt: skip


def _fix_identity_initializers(model: Any) -> None:
    """Replace Identity nodes that read an initializer by a copy of it under the Identity's output."""
    from onnx import numpy_helper  # noqa: PLC0415

    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in inits:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), node.output[0])
            model.graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def onnx_input_shape(model: Any) -> tuple[int, int, int] | None:
    """(C, H, W) of the graph's first real input when fixed in the file, else None."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(values) != 4 or any(v is None or v < 1 for v in values[1:]):
        return None
    return tuple(int(v) for v in values[1:])  # type: ignore[return-value]


def load_onnx(path: str | os.PathLike) -> tuple[nn.Module, tuple[int, int, int] | None]:
    """(torch module, (C, H, W) from the file or None) for an ONNX file; ValueError naming what fails."""
    import onnx  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise BackendError(f"ONNX file {str(path)!r} not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - a file that is not ONNX: one line
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise BackendError(f"{str(path)!r} is not a valid ONNX model ({reason})") from None
    if len(model.graph.node) == 0:
        raise BackendError(f"{str(path)!r} is not a valid ONNX model (its graph has no nodes)")
    _fix_identity_initializers(model)
    _check_converters(model, path)
    from onnx2torch import convert  # noqa: PLC0415

    try:
        module = convert(model)
    except Exception as exc:  # noqa: BLE001 - converter failures: one line
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BackendError(f"onnx2torch cannot convert {str(path)!r}: {reason}") from None
    return module, onnx_input_shape(model)


def _check_converters(model: Any, path: Path) -> None:
    """ValueError naming the first op (and its opset) onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter  # noqa: PLC0415

    opsets = {op.domain or "": op.version for op in model.opset_import}
    for node in model.graph.node:
        domain = node.domain or ""
        version = opsets.get(domain, opsets.get("", 0))
        try:
            get_converter(node.op_type, version, domain)
        except NotImplementedError:  # onnx2torch's registry says "no converter" this way
            raise BackendError(
                f"{str(path)!r}: onnx2torch has no converter for op {node.op_type} at opset {version}; "
                "re-export with torch.onnx.export(..., dynamo=False, opset_version=13)"
            ) from None


def module_backend(
    model: Any,
    input_shape: tuple[int, int, int] | None = None,
    output: str = "logits",
    weights: Any = None,
    preprocess: Any = None,
    device: str = "cpu",
    batch: int | None = None,
    seed: int = 0,
) -> Any:
    """A ModuleBackend for an nn.Module, an .onnx path or "torchvision:<arch>", with `model_spec`
    (its preprocessing, pda_repro.presets) and `weights_source` set. weights: a state_dict (dict or
    file) copied in strictly; None: the module's own weights (torchvision: seeded random)."""
    from dataclasses import replace  # noqa: PLC0415

    from pda_repro import presets, zoo  # noqa: PLC0415
    from pda_repro.backends.module_backend import ModuleBackend, check_input_shape  # noqa: PLC0415

    default_pre: Any = "imagenet"
    if isinstance(model, nn.Module):
        module, source, name, file_shape = model, "given module", type(model).__name__, None
    elif str(model).startswith(TORCHVISION_PREFIX):
        arch = str(model)[len(TORCHVISION_PREFIX) :]
        module, source, name, file_shape = torchvision_model(arch, seed), f"random (seed {seed})", arch, None
        default_pre = torchvision_preprocessing(arch) or "imagenet"
    else:
        module, file_shape = load_onnx(model)
        source, name = str(model), Path(model).stem
    spec = presets.preprocessing(preprocess if preprocess is not None else default_pre, name=name)
    if isinstance(model, nn.Module) and input_shape is None:
        raise BackendError("input_shape must be (C, H, W) positive ints, got None (needed for an nn.Module)")
    shape = check_input_shape(input_shape or file_shape or spec.input_shape)
    if file_shape is not None and input_shape is not None and tuple(input_shape) != tuple(file_shape):
        raise BackendError(
            f"input_shape {tuple(input_shape)} differs from the ONNX file's input {file_shape}"
        )
    if tuple(shape)[1:] != tuple(spec.input_shape)[1:] or tuple(shape)[0] != spec.input_shape[0]:
        spec = presets.with_input_shape(spec, tuple(shape))
    net = ModuleBackend(module, shape, output=output, device=device, batch=batch, seed=seed, model_name=name)
    if weights is not None and not (isinstance(weights, str) and weights == "random"):
        if isinstance(weights, dict):
            net.load_state_dict(weights, source="the given state_dict")
            source = "given state_dict"
        else:
            net.load_weights(weights)
            source = str(weights)
    if (
        spec.class_names == zoo.ILSVRC_CLASS_NAMES and net.num_classes != 1000
    ):  # the preset's, not the model's
        spec = replace(spec, class_names=None)
    net.model_spec = spec
    net.weights_source = source
    return net


__all__ = ["is_module_model", "load_onnx", "module_backend", "read_state_dict", "torchvision_model"]
