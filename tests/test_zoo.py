"""The zoo's prototxts (our builders) against the Model Zoo deploy layouts, and the zoo registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from pda_repro import netspec, proto, zoo
from pda_repro.backends import load_backend

# Published parameter counts of the Model Zoo nets (bvlc_alexnet, VGG_ILSVRC_16_layers, bvlc_googlenet)
# and of Caffe's LeNet (20*25+20 + 50*20*25+50 + 800*500+500 + 500*10+10).
PARAMETERS = {"alexnet": 60_965_224, "vgg16": 138_357_544, "googlenet": 6_998_552, "mnist": 431_080}


def _net(name: str):
    return proto.deploy_net(proto.read_prototxt(zoo.get(name).prototxt))


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_count_from_shape_inference(name):
    assert proto.count_parameters(proto.read_prototxt(zoo.get(name).prototxt)) == PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_committed_prototxt_is_what_the_builder_writes(name, tmp_path):
    (written,) = netspec.write_models(tmp_path, [name])
    assert written.read_text() == zoo.get(name).prototxt.read_text(), (
        f"models/{name}.prototxt is stale: run `pda-repro prototxts`"
    )


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_deploy_conventions(name):
    net = _net(name)
    assert net.force_backward
    last = net.layer[-1]
    assert (last.name, last.type, list(last.top)) == ("prob", "Softmax", ["prob"])
    io = proto.net_io(net)
    assert io.prob_blob == "prob"
    assert (
        io.logits_blob
        == {"alexnet": "fc8", "vgg16": "fc8", "googlenet": "loss3/classifier", "mnist": "ip2"}[name]
    )
    assert io.input_shape == zoo.get(name).input_shape
    assert io.num_classes == zoo.get(name).num_classes
    for layer in net.layer:  # every learnable layer has fillers, so random init is meaningful
        if layer.type == "Convolution":
            assert layer.convolution_param.HasField("weight_filler"), layer.name
        if layer.type == "InnerProduct":
            assert layer.inner_product_param.HasField("weight_filler"), layer.name


def test_alexnet_layout():
    net = _net("alexnet")
    names = [layer.name for layer in net.layer]
    assert names == [
        "data", "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3",
        "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7",
        "fc8", "prob",
    ]  # fmt: skip
    by_name = {layer.name: layer for layer in net.layer}
    assert [by_name[n].convolution_param.group for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [
        1,
        2,
        1,
        2,
        2,
    ]
    for norm in ("norm1", "norm2"):
        p = by_name[norm].lrn_param
        assert (p.local_size, pytest.approx(p.alpha), p.beta, p.k) == (5, 1e-4, 0.75, 1.0)
    for pool in ("pool1", "pool2", "pool5"):
        p = by_name[pool].pooling_param
        assert (p.pool, p.kernel_size, p.stride) == (p.MAX, 3, 2)
    shapes = proto.infer_shapes(net, batch=1).blobs
    expected = {"conv1": (1, 96, 55, 55), "pool1": (1, 96, 27, 27), "conv2": (1, 256, 27, 27),
                "pool2": (1, 256, 13, 13), "conv5": (1, 256, 13, 13), "pool5": (1, 256, 6, 6),
                "fc6": (1, 4096), "fc7": (1, 4096), "fc8": (1, 1000), "prob": (1, 1000)}  # fmt: skip
    assert {k: shapes[k] for k in expected} == expected


def test_vgg16_layout():
    net = _net("vgg16")
    names = [layer.name for layer in net.layer]
    convs = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    assert [n for n in names if n.startswith("conv")] == convs
    assert names[-8:] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8", "prob"]
    assert [n for n in names if n.startswith("pool")] == ["pool1", "pool2", "pool3", "pool4", "pool5"]
    shapes = proto.infer_shapes(net, batch=1).blobs
    assert shapes["pool5"] == (1, 512, 7, 7)
    assert shapes["conv1_1"] == (1, 64, 224, 224)
    params = proto.infer_shapes(net).params
    assert params["fc6"] == [(4096, 25088), (4096,)]


def test_googlenet_layout():
    net = _net("googlenet")
    names = [layer.name for layer in net.layer]
    assert names[:12] == [
        "data", "conv1/7x7_s2", "conv1/relu_7x7", "pool1/3x3_s2", "pool1/norm1", "conv2/3x3_reduce",
        "conv2/relu_3x3_reduce", "conv2/3x3", "conv2/relu_3x3", "conv2/norm2", "pool2/3x3_s2", "inception_3a/1x1",
    ]  # fmt: skip
    assert names[-5:] == [
        "inception_5b/output",
        "pool5/7x7_s1",
        "pool5/drop_7x7_s1",
        "loss3/classifier",
        "prob",
    ]
    for module in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        for part in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool", "pool_proj", "output"):
            assert f"inception_{module}/{part}" in names
    assert not any(n.startswith(("loss1", "loss2")) for n in names)  # no auxiliary classifiers
    assert {"pool3/3x3_s2", "pool4/3x3_s2"} <= set(names)
    shapes = proto.infer_shapes(net, batch=1).blobs
    expected = {"pool1/3x3_s2": (1, 64, 56, 56), "pool2/3x3_s2": (1, 192, 28, 28),
                "inception_3a/output": (1, 256, 28, 28), "inception_3b/output": (1, 480, 28, 28),
                "pool3/3x3_s2": (1, 480, 14, 14), "inception_4e/output": (1, 832, 14, 14),
                "pool4/3x3_s2": (1, 832, 7, 7), "inception_5b/output": (1, 1024, 7, 7),
                "pool5/7x7_s1": (1, 1024, 1, 1), "loss3/classifier": (1, 1000)}  # fmt: skip
    assert {k: shapes[k] for k in expected} == expected


def test_mnist_layout():
    net = _net("mnist")
    assert [(layer.name, layer.type) for layer in net.layer] == [
        ("data", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("conv2", "Convolution"),
        ("pool2", "Pooling"), ("ip1", "InnerProduct"), ("relu1", "ReLU"), ("ip2", "InnerProduct"), ("prob", "Softmax"),
    ]  # fmt: skip
    params = proto.infer_shapes(net).params
    assert params["conv1"] == [(20, 1, 5, 5), (20,)]
    assert params["ip1"] == [(500, 800), (500,)]
    assert params["ip2"] == [(10, 500), (10,)]


def test_registry_entries():
    assert {"alexnet", "vgg16", "googlenet", "mnist", "efficientnet_lite0"} <= set(zoo.names())
    alexnet = zoo.get("alexnet")
    assert (alexnet.channel_order, alexnet.mean, alexnet.resize, alexnet.input_shape) == (
        "BGR",
        (104.0, 117.0, 123.0),
        256,
        (3, 227, 227),
    )
    assert zoo.get("vgg16").input_shape == zoo.get("googlenet").input_shape == (3, 224, 224)
    mnist = zoo.get("mnist")
    assert (mnist.channel_order, mnist.scale, mnist.train_size, mnist.num_classes) == (
        "GRAY",
        0.00390625,
        60_000,
        10,
    )
    eff = zoo.get("efficientnet_lite0")
    assert (eff.channel_order, eff.mean, eff.scale, eff.interpolation) == (
        "RGB",
        (127.0,) * 3,
        1 / 128,
        "bicubic",
    )
    lines = alexnet.class_names.read_text().splitlines()
    assert len(lines) == 1000 and lines[0].startswith("tench")


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match="did you mean 'alexnet'"):
        zoo.get("alexnett")


def test_model_table_counts_from_prototxt():
    rows = {row.name: row for row in zoo.model_table()}
    for name, count in PARAMETERS.items():
        assert rows[name].parameters == count
    assert rows["alexnet"].input_shape == "3×227×227"
    assert rows["mnist"].input_shape == "1×28×28"


def test_missing_converted_model_is_a_clear_error(tmp_path: Path):
    spec = zoo.ModelSpec(
        name="converted_later", prototxt=tmp_path / "absent.prototxt", input_shape=(3, 8, 8),
        channel_order="RGB", mean=(0.0, 0.0, 0.0), extra={"how_to_get": "run the converter"},
    )  # fmt: skip
    assert not spec.available
    with pytest.raises(FileNotFoundError, match="absent.prototxt does not exist; run the converter"):
        load_backend(spec)
