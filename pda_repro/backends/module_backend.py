"""A PyTorch nn.Module (your own, torchvision's, or an ONNX file converted by onnx2torch) as a Backend.

The module is copied (the caller's stays as it was), put in float32 and eval mode, and its in-place activations
switched off (the incremental engine keeps activations, which in-place ops would overwrite). Its
output is (N, K) class scores: `output="logits"` (the default; probabilities = softmax) or
`output="probabilities"` (logits = log p, so softmax(logits) = p again).

Blob names: "input", "logits", "prob", and every submodule by its name in `named_modules()` (e.g.
"layer4", "layer4.1.conv2"): the output of its forward -- of its last call when forward calls it
more than once. `net_param` lists them in the order their last call finishes (so Grad-CAM's
default feature map, the last 4-D map before the first Linear, is e.g. ResNet's "layer4").

Weights: get_weights() groups the state_dict by owning module ("layer1.0.bn1" -> [weight, bias,
running_mean, running_var, num_batches_tracked]); load_state_dict / load_weights take a state_dict
(dict or file) and name any key that does not fit.

Incremental inference traces the module with torch.fx (pda_repro.incremental.fx_graph) onto the
same engine as the Caffe nets; where tracing fails or a layer has no rule, windows are re-run in
full and `incremental_note()` says why in one line.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pda_repro.backends.base import BackendError
from pda_repro.backends.torch_backend import TorchBackend
from pda_repro.incremental.engine import IncrementalEngine
from pda_repro.incremental.fx_graph import fx_graph, safe_log

OUTPUTS = ("logits", "probabilities")
ROLES = ("input", "logits", "prob")
CAFFE_TYPES = {
    nn.Conv2d: "Convolution", nn.Linear: "InnerProduct", nn.MaxPool2d: "Pooling", nn.AvgPool2d: "Pooling",
    nn.AdaptiveAvgPool2d: "Pooling", nn.AdaptiveMaxPool2d: "Pooling", nn.ReLU: "ReLU", nn.Dropout: "Dropout",
    nn.BatchNorm2d: "BatchNorm", nn.Flatten: "Flatten", nn.Softmax: "Softmax",
}  # fmt: skip


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def check_input_shape(value: Any) -> tuple[int, int, int]:
    """(C, H, W) as ints, or BackendError naming the value."""
    shape = tuple(value) if isinstance(value, Sequence) else ()
    if len(shape) != 3 or not all(isinstance(v, int | np.integer) and v > 0 for v in shape):
        raise BackendError(f"input_shape must be (C, H, W) positive ints, got {value!r}")
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def _caffe_type(module: nn.Module) -> str:
    for cls, name in CAFFE_TYPES.items():
        if isinstance(module, cls):
            return name
    return type(module).__name__


class _ByName(dict):
    """Modules by name; the engine's nodes for functions and methods have no module (no weights)."""

    def __missing__(self, key: str) -> nn.Module:
        return nn.Module()


class ModuleBackend(TorchBackend):
    """One nn.Module on one device (see the module docstring). `module` is the nn.Module; `model` is
    this object itself, so TorchBackend's forward, blobs and gradients run it through `run`."""

    name = "torch-module"

    def __init__(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        output: str = "logits",
        device: str = "cpu",
        batch: int | None = None,
        seed: int = 0,
        model_name: str | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise BackendError(f"model must be a torch.nn.Module, got {type(module).__name__}")
        if output not in OUTPUTS:
            raise BackendError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        shape = check_input_shape(input_shape)
        self._set_device_and_batch(device, batch, cuda_index=True)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("device 'cuda' requested but torch sees no CUDA device")
        if self.device.startswith("cuda"):  # TF32 changes the 4th digit, as in TorchBackend
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self.input_shape = shape
        self.output = output
        self.module = copy.deepcopy(module).to(self.device).float().eval()  # float32, as every backend
        self.model = self  # TorchBackend's methods call self.model.run / self.model.resolve
        for m in self.module.modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False
        self.seed = int(seed)
        self.model_name = model_name or type(module).__name__
        self.input_blob, self.logits_blob, self.prob_blob = ROLES
        self.fixed_batch = False
        self.num_classes = self._probe()
        self._modules = {n: m for n, m in self.module.named_modules() if n}
        self.by_name = _ByName(self._modules)  # TorchBackend.default_window_batch: the tail's weights
        self.net_param = self._describe()

    # -- construction ----------------------------------------------------------------------------
    def _probe_input(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn((n, *self.input_shape), generator=g).to(self.device)

    def _probe(self) -> int:
        """K from a forward pass on seeded noise; checks the output and batch independence."""
        x = self._probe_input(2)
        shape_text = "(" + ", ".join(map(str, self.input_shape)) + ")"
        with torch.no_grad():
            try:
                one = self.module(x[:1])
            except Exception as exc:  # noqa: BLE001 - any failure names the input shape
                raise BackendError(
                    f"input_shape {shape_text} does not run through {self.model_name}: {_one_line(exc)}"
                ) from None
            self._check_scores(one, 1)
            try:
                two = self.module(x)
                self._check_scores(two, 2)
                scale = max(1.0, float(one.abs().max()))  # float32 rounding differs with the batch
                same = float((two[:1] - one).abs().max()) <= 1e-4 * scale
            except (RuntimeError, BackendError):
                same = False
        if not same:  # e.g. an ONNX file exported with batch size 1 fixed
            self.fixed_batch, self.batch = True, 1
        return int(one.shape[1])

    def _check_scores(self, scores: Any, n: int) -> None:
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != n:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise BackendError(f"the model's output must be (N, K) class scores for N={n} images, got {got}")
        if not scores.is_floating_point():
            raise BackendError(f"the model's output must be floating point, got {scores.dtype}")
        if self.output == "probabilities":
            sums = scores.double().sum(1)
            if bool((scores < 0).any()) or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                raise BackendError(
                    f"output='probabilities' but the model's outputs on a test input sum to "
                    f"{float(sums[0]):.4g} (min {float(scores.min()):.3g}); pass output='logits'"
                )

    def _describe(self) -> Any:
        """A NetParameter listing the blobs: input, every called module (by last call), logits, prob."""
        from pda_repro.proto import caffe_pb2  # noqa: PLC0415

        finished: dict[str, None] = {}

        def hook(name: str):
            def record(*_: Any) -> None:  # returns None: the module's output stays as it is
                finished.pop(name, None)
                finished[name] = None

            return record

        hooks = [m.register_forward_hook(hook(n)) for n, m in self._modules.items()]
        try:
            with torch.no_grad():
                self.module(self._probe_input(1))
        finally:
            for h in hooks:
                h.remove()
        net = caffe_pb2().NetParameter(name=self.model_name)
        net.layer.add(name="input", type="Input", top=["input"])
        for name in finished:
            net.layer.add(name=name, type=_caffe_type(self._modules[name]), top=[name])
        net.layer.add(name="logits", type="Output", top=["logits"])
        net.layer.add(name="prob", type="Softmax", bottom=["logits"], top=["prob"])
        return net

    def __getstate__(self) -> dict:
        """Pickled without the engine and stored activations (rebuilt on first use); net_param as bytes."""
        drop = ("_engine", "_engine_note", "_base_state", "model", "net_param")
        state = {k: v for k, v in self.__dict__.items() if k not in drop}
        state["net_param_bytes"] = self.net_param.SerializeToString()
        return state

    def __setstate__(self, state: dict) -> None:
        from pda_repro.proto import caffe_pb2  # noqa: PLC0415

        state = dict(state)
        self.__dict__.update(state)
        self.net_param = caffe_pb2().NetParameter.FromString(state["net_param_bytes"])
        self.model = self

    # -- running (TorchBackend's forward, blobs and gradients call self.model.run / resolve) --------
    def _roles(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, logits) of the module's output."""
        if self.output == "logits":
            return torch.softmax(scores, dim=1), scores
        return scores, safe_log(scores)

    def resolve(self, name: str) -> str:
        """`name` if it is a blob of this net (see the module docstring), else BackendError."""
        if name not in ROLES and name not in self._modules:
            known = ", ".join(list(self._modules)[:12])
            raise BackendError(
                f"unknown blob {name!r}; blobs: input, logits, prob, or a module: {known}, ..."
            )
        return name

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The named blobs of the forward pass of x (hooks on the modules asked for)."""
        captured: dict[str, Any] = {"input": x}
        hooks = []
        for name in dict.fromkeys(names):
            if self.resolve(name) not in ROLES:
                hooks.append(self._modules[name].register_forward_hook(
                    lambda m, i, o, name=name: captured.__setitem__(name, o)))  # fmt: skip
        try:
            scores = self.module(x)
        finally:
            for h in hooks:
                h.remove()
        captured["prob"], captured["logits"] = self._roles(scores)
        for name in names:
            if not isinstance(captured.get(name), torch.Tensor):
                why = "is not called by forward" if name not in captured else "does not return one tensor"
                raise BackendError(f"module {name!r} {why}")
        return captured

    # -- incremental inference ---------------------------------------------------------------------
    def _incremental_engine(self) -> IncrementalEngine | None:
        if not hasattr(self, "_engine"):
            self._engine, self._engine_note = None, None
            if self.fixed_batch:
                self._engine_note = (
                    "the model runs one image at a time (its output changes with the batch size)"
                )
                return None
            try:
                graph = fx_graph(self.module, self._probe_input(1), self.output)
            except Exception as exc:  # noqa: BLE001 - untraceable: one line, full inference
                self._engine_note = (
                    f"torch.fx cannot trace {self.model_name} ({_one_line(exc)}); re-run in full"
                )
                return None
            self._engine_note = graph.note()
            self._engine = None if self._engine_note else IncrementalEngine(graph)
        return self._engine

    def incremental_note(self) -> str | None:
        self._incremental_engine()
        return self._engine_note

    # -- weights -----------------------------------------------------------------------------------
    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key in self.module.state_dict():
            groups.setdefault(key.rpartition(".")[0], []).append(key)
        return groups

    def get_weights(self) -> dict[str, list[np.ndarray]]:
        state = self.module.state_dict()
        return {
            m: [state[k].detach().cpu().numpy().copy() for k in keys] for m, keys in self._groups().items()
        }

    def set_weights(self, weights: Mapping[str, Sequence[np.ndarray]]) -> None:
        groups, state = self._groups(), {}
        for name, arrays in weights.items():
            if name not in groups:
                raise BackendError(f"weights for {name!r}: the model has no such module with weights")
            if len(arrays) != len(groups[name]):
                raise BackendError(
                    f"weights for {name!r}: {len(arrays)} arrays, the module has {len(groups[name])}"
                )
            state.update(
                {k: torch.as_tensor(np.asarray(a)) for k, a in zip(groups[name], arrays, strict=True)}
            )
        self.load_state_dict(state, strict=False)

    def load_state_dict(
        self, state: Mapping[str, Any], strict: bool = True, source: str = "state_dict"
    ) -> None:
        """Copy a state_dict into the model; BackendError naming the keys that are missing (strict),
        unexpected, of another shape or not finite."""
        own = self.module.state_dict()
        unexpected = [k for k in state if k not in own]
        missing = [k for k in own if k not in state] if strict else []
        wrong = [
            f"{k} {tuple(torch.as_tensor(v).shape)} vs {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and tuple(torch.as_tensor(v).shape) != tuple(own[k].shape)
        ]
        problems = [(what, keys) for what, keys in (("unexpected keys", unexpected), ("missing keys", missing),
                    ("shapes that do not fit (given vs model)", wrong)) if keys]  # fmt: skip
        if problems:
            text = "; ".join(
                f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" for what, keys in problems
            )
            raise BackendError(f"{source} does not fit {self.model_name}: {text}")
        bad = [k for k, v in state.items() if torch.is_floating_point(torch.as_tensor(v))
               and not bool(torch.isfinite(torch.as_tensor(v)).all())]  # fmt: skip
        if bad:
            raise BackendError(f"{source}: NaN/Inf values in {', '.join(bad[:5])}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(torch.as_tensor(v))
        self._base_state = None

    def load_weights(self, path: str | os.PathLike) -> None:
        """Read a state_dict file (torch.save of model.state_dict()) and copy it in, strictly."""
        from pda_repro.backends.module_sources import read_state_dict  # noqa: PLC0415

        self.load_state_dict(read_state_dict(path), source=f"weights file {str(path)!r}")

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the state_dict with torch.save (atomically)."""
        from pda_repro.io import atomic_writer  # noqa: PLC0415

        with atomic_writer(Path(path)) as fh:
            torch.save(self.module.state_dict(), fh)
