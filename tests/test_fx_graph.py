"""Incremental inference of PyTorch modules (pda_repro.incremental.fx_graph) against full inference.

Tiny hand-set nets in float64 exercise every rule -- strided, dilated, grouped, asymmetric and
functional convolutions; max and average pooling with padding, dilation, ceil_mode,
count_include_pad and divisor_override; constant padding; every activation; per-channel constants;
add/mul/cat merges -- with k×k windows at the four corners, on the edges and inside: equal within
1e-10. torchvision's resnet18 (seeded random weights, float32): probabilities within 1e-5. Models
that cannot be traced, or have a spatial op without a rule, fall back to full inference with a note.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pda_repro.backends.base import paste_windows
from pda_repro.backends.module_backend import ModuleBackend
from pda_repro.backends.module_sources import torchvision_model
from pda_repro.incremental import cost
from pda_repro.incremental.engine import IncrementalEngine
from pda_repro.incremental.fx_graph import fx_graph


def seeded(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and BatchNorm statistic drawn from a Generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


class Chain(nn.Module):
    """Modules: every local and pointwise rule, ceil-mode pools and asymmetric zero padding."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU6(inplace=True),
            nn.Conv2d(6, 6, (3, 5), dilation=2, padding=(2, 4), groups=2),
            nn.SiLU(),
            nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            nn.Hardswish(),
            nn.Conv2d(6, 4, 3, padding="same"),
            nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
            nn.Sigmoid(),
            nn.ZeroPad2d((0, 1, 0, 1)),
            nn.Conv2d(4, 5, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, ceil_mode=True),
            nn.Dropout(0.3),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 7))

    def forward(self, x):
        return self.head(self.body(x))


class Branches(nn.Module):
    """Functional forms, a constant per channel, add/mul/cat merges, F.pad with a value."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.b = nn.Conv2d(8, 8, 1)
        self.w = nn.Parameter(torch.zeros(6, 8, 3, 3))
        self.register_buffer("shift", torch.linspace(-1, 1, 8).reshape(8, 1, 1))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([self.a(x), F.max_pool2d(x, 3, 1, 1, dilation=1)], dim=1)
        y = y * 0.5 + self.shift
        z = y + self.b(y)
        z = z * torch.sigmoid(z)
        z = F.pad(z, (1, 0, 2, 1), value=0.25)
        z = F.avg_pool2d(z, 3, 2, padding=1, ceil_mode=True, divisor_override=5)
        z = F.leaky_relu(F.conv2d(z, self.w, None, 2, 1), 0.1)
        z = F.max_pool2d(z, 2, 2, ceil_mode=True)
        return F.linear(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1), self.fc.weight, self.fc.bias)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def both_modes(net: ModuleBackend, k: int, seed: int) -> tuple[np.ndarray, dict[str, tuple]]:
    """(the image, {mode: (probs, logits)}) of a noise image with k×k noise windows at corners(...)."""
    g = np.random.default_rng(seed)
    _, h, w = net.input_shape
    x = g.standard_normal((3, h, w)).astype(np.float32)
    rows, cols = corners(h, w, k)
    patches = (g.standard_normal((rows.size, 3, k, k)) * 2).astype(np.float32)
    out = {}
    for mode in ("full", "incremental"):
        net.inference = mode
        out[mode] = net.forward_windows(x, rows, cols, patches)
    return x, out


def corners(h: int, w: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows at the 4 corners, the middle of each edge, and 3 inside."""
    rows = [0, 0, h - k, h - k, 0, h - k, (h - k) // 2, (h - k) // 2, 1, (h - k) // 3, h - k - 1]
    cols = [0, w - k, 0, w - k, (w - k) // 2, (w - k) // 2, 0, w - k, 2, (w - k) // 2, 1]
    return np.array(rows), np.array(cols)


@pytest.mark.parametrize("net_cls", [Chain, Branches])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_tiny_nets_incremental_equals_full_float64(net_cls, k):
    net = seeded(net_cls(), 7).double()
    g = torch.Generator().manual_seed(11)
    x = torch.randn((1, 3, 29, 23), generator=g, dtype=torch.float64)
    graph = fx_graph(net, x)
    assert graph.note() is None
    kinds = {n.kind for n in graph.nodes}
    assert (
        kinds == {"local", "pointwise", "merge", "dense"}
        if net_cls is Branches
        else {"local", "pointwise", "dense"}
    )
    engine = IncrementalEngine(graph)
    assert engine.switch >= len(graph.nodes) - 6  # the spatial part runs to the global pooling
    rows, cols = corners(29, 23, k)
    patches = torch.randn((rows.size, 3, k, k), generator=g, dtype=torch.float64) * 3
    for batch in (1, 4, None):
        with torch.no_grad():
            out = engine.forward_windows(engine.prepare(x), rows, cols, patches, batch)
            images = torch.from_numpy(paste_windows(x[0].numpy(), rows, cols, patches.numpy()))
            logits = net(images)
        np.testing.assert_allclose(out["logits"].numpy(), logits.numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["prob"].numpy(), torch.softmax(logits, 1).numpy(), rtol=0, atol=1e-10)
        with torch.no_grad():
            base = net(x)
        assert (logits - base).abs().max() > 1e-3  # the windows change the output: the test can fail


def test_average_pool_divisors_and_pad_value_matter():
    """A wrong divisor or padding value shows: the rules reproduce torch's exactly, not roughly."""
    net = seeded(Branches(), 3).double()
    x = torch.randn((1, 3, 29, 23), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    graph = fx_graph(net, x)
    pads = [n for n in graph.nodes if n.type == "pad"]
    pools = [n for n in graph.nodes if n.type == "avg_pool2d"]
    assert pads[0].geometry.pad == (2, 1) and pads[0].geometry.pad_value == 0.25
    assert pads[0].geometry.out_size == (29 + 3, 23 + 1)
    assert pools[0].geometry.bottom_pad(0) >= 1  # ceil_mode overhang reached


def test_resnet18_incremental_equals_full_at_corners_edges_interior():
    net = ModuleBackend(torchvision_model("resnet18", seed=0), (3, 224, 224), seed=0)
    assert net.incremental_note() is None
    x, results = both_modes(net, 10, 5)
    (p_full, l_full), (p_incr, l_incr) = results["full"], results["incremental"]
    assert np.abs(p_full - p_incr).max() < 1e-5
    assert np.abs(l_full - l_incr).max() < 1e-4 * max(1.0, np.abs(l_full).max())
    base = net.forward(x[None])[1]
    assert np.abs(l_full - base).max() > 1e-2  # the windows change the logits
    graph = net._incremental_engine().graph
    assert 2.0 < cost.ideal_ratio(graph, 10, *corners(224, 224, 10)) < 10.0


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # control flow on values: torch.fx cannot trace this
            y = -y
        return self.fc(y.mean((2, 3)))


class Flipper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(torch.flip(x, [-1])).mean((2, 3)))


class Squeeze(nn.Module):
    """Squeeze-and-excitation: a global mean feeding back into the spatial part."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        y = y * torch.sigmoid(F.adaptive_avg_pool2d(y, 1))
        return self.fc(self.conv2(y).mean((2, 3)))


@pytest.mark.parametrize(
    ("cls", "note"),
    [
        (DataDependent, "torch.fx cannot trace DataDependent"),
        (Flipper, "no incremental rule for 'flip' (flip)"),
        (Squeeze, "'conv2' (Conv2d) after the switch to full inference at 'adaptive_avg_pool2d'"),
    ],
)
def test_models_without_rules_fall_back_to_full_and_say_so(cls, note):
    net = ModuleBackend(seeded(cls(), 2), (3, 12, 12))
    assert note in net.incremental_note()
    assert net.resolve_inference("auto") == "full"
    x = np.random.default_rng(0).standard_normal((3, 12, 12)).astype(np.float32)
    rows, cols = np.array([0, 5]), np.array([3, 7])
    patches = np.zeros((2, 3, 4, 4), np.float32)
    probs, _ = net.forward_windows(x, rows, cols, patches)
    expected, _ = net.forward(paste_windows(x, rows, cols, patches))
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="inference='incremental' is not available"):
        net.resolve_inference("incremental")


def test_onnx_graph_rules_incremental_equals_full(tmp_path):
    """A hand-built ONNX graph: asymmetric max-pool pads (onnx2torch: pad + pool in a Sequential),
    Clip, Erf, Div/Add/Mul by constants and of maps, Concat, global pooling, Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pda_repro.backends.module_sources import load_onnx

    g = np.random.default_rng(3)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((g.standard_normal(shape) * 0.4).astype(np.float32), name)

    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Div", ["p1", "two"], ["d1"]),
        helper.make_node("Erf", ["d1"], ["e1"]),
        helper.make_node("Add", ["e1", "shift"], ["a1"]),
        helper.make_node("Mul", ["p1", "a1"], ["m1"]),
        helper.make_node("Conv", ["m1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Concat", ["m1", "c2"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], transB=1),
    ]
    inits = [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 4, 2, 3, 3), init("wf", 5, 8), init("bf", 5),
             numpy_helper.from_array(np.array(-0.5, np.float32), "lo"),
             numpy_helper.from_array(np.array(1.5, np.float32), "hi"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             init("shift", 1, 4, 1, 1)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "rules", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 21, 19])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits,
    )  # fmt: skip
    path = tmp_path / "rules.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    module, shape = load_onnx(path)
    assert shape == (3, 21, 19)
    assert any(isinstance(m, nn.Sequential) for m in module.modules())  # the pad + pool pair
    net = ModuleBackend(module, shape)
    assert net.incremental_note() is None
    for k in (1, 4):
        x, out = both_modes(net, k, k)
        (p_full, l_full), (p_incr, l_incr) = out["full"], out["incremental"]
        np.testing.assert_allclose(l_incr, l_full, rtol=0, atol=1e-5)
        assert np.abs(p_incr - p_full).max() < 1e-6 and np.abs(l_full - net.forward(x[None])[1]).max() > 1e-3


@pytest.mark.parametrize(
    ("arch", "note"),
    [
        ("mobilenet_v2", None),
        ("googlenet", None),
        ("densenet121", None),
        ("squeezenet1_0", None),
        ("efficientnet_b0", "after the switch to full inference at 'features.1.0.block.1.avgpool'"),
        ("shufflenet_v2_x0_5", "after the switch to full inference at 'view'"),  # channel shuffle
    ],
)
def test_torchvision_architectures(arch, note):
    """Which torchvision classifiers run incrementally (equal to full), which fall back and why."""
    net = ModuleBackend(torchvision_model(arch, seed=1), (3, 96, 96))
    if note is not None:
        assert note in net.incremental_note()
        return
    assert net.incremental_note() is None
    _, out = both_modes(net, 10, 4)
    (_, l_full), (_, l_incr) = out["full"], out["incremental"]
    assert np.abs(l_full - l_incr).max() < 1e-4 * max(1.0, float(np.abs(l_full).max()))
