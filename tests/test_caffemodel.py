"""Binary .caffemodel reading/writing (our wire-format walker) against protobuf's own parser and pycaffe."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pda_repro import proto, zoo
from pda_repro.backends import load_backend
from pda_repro.backends.caffemodel import (
    CaffemodelError,
    match_weights,
    read_caffemodel,
    read_caffemodel_layers,
    write_caffemodel,
)
from tests.conftest import require_caffe


def _random_weights(rng, shapes):
    return {
        name: [rng.standard_normal(s).astype(np.float32) for s in blob_shapes]
        for name, blob_shapes in shapes.items()
    }


def test_write_then_read_roundtrip_is_exact(rng, tmp_path):
    weights = _random_weights(
        rng, {"conv1/7x7_s2": [(4, 3, 2, 2), (4,)], "fc": [(5, 16), (5,)], "bn": [(4,), (4,), (1,)]}
    )
    path = tmp_path / "net.caffemodel"
    write_caffemodel(path, weights, net_name="tiny", layer_types={"fc": "InnerProduct"})
    name, layers = read_caffemodel_layers(path)
    assert name == "tiny"
    assert [(layer.name, layer.type) for layer in layers] == [
        ("conv1/7x7_s2", ""),
        ("fc", "InnerProduct"),
        ("bn", ""),
    ]
    back = read_caffemodel(path)
    for layer, blobs in weights.items():
        for ours, theirs in zip(back[layer], blobs, strict=True):
            np.testing.assert_array_equal(ours, theirs)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_protobuf_parses_what_we_write(rng, tmp_path):
    weights = _random_weights(rng, {"a": [(2, 3, 1, 1), (2,)], "b": [(7,)]})
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, weights, net_name="n")
    net = proto.caffe_pb2().NetParameter.FromString(path.read_bytes())
    assert [layer.name for layer in net.layer] == ["a", "b"]
    blob = net.layer[0].blobs[0]
    assert list(blob.shape.dim) == [2, 3, 1, 1]
    np.testing.assert_array_equal(np.array(blob.data, dtype=np.float32).reshape(2, 3, 1, 1), weights["a"][0])


def test_we_parse_what_protobuf_writes_new_and_v1_layouts(rng, tmp_path):
    pb = proto.caffe_pb2()
    net = pb.NetParameter(name="mixed")
    w = rng.standard_normal((3, 4)).astype(np.float32)
    layer = net.layer.add(name="fc", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend(w.shape)
    blob.data.extend(w.ravel().tolist())
    d = rng.standard_normal(3)
    blob = layer.blobs.add()
    blob.shape.dim.append(3)
    blob.double_data.extend(d.tolist())  # double_data (field 8)
    path = tmp_path / "new.caffemodel"
    path.write_bytes(net.SerializeToString())
    got = read_caffemodel(path)
    np.testing.assert_array_equal(got["fc"][0], w)
    np.testing.assert_array_equal(got["fc"][1], d.astype(np.float32))

    v1 = pb.NetParameter(name="old")
    old = v1.layers.add(name="fc6", type=pb.V1LayerParameter.INNER_PRODUCT)
    blob = old.blobs.add(num=1, channels=1, height=3, width=4)  # legacy 4-D dims, as 2014 caffemodels
    blob.data.extend(w.ravel().tolist())
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1.SerializeToString())
    _, layers = read_caffemodel_layers(path)
    assert (layers[0].name, layers[0].type) == ("fc6", "InnerProduct")
    assert layers[0].blobs[0].shape == (1, 1, 3, 4)
    fitted = match_weights(read_caffemodel(path), {"fc6": [(3, 4)]})  # Caffe's legacy shape rule
    np.testing.assert_array_equal(fitted["fc6"][0], w)


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_unpacked_floats_unpacked_dims_and_v0_layers(rng, tmp_path):
    values = rng.standard_normal(6).astype(np.float32)
    unpacked = b"".join(_varint(5 << 3 | 5) + struct.pack("<f", v) for v in values)  # data, one tag each
    dims = _varint(1 << 3 | 0) + _varint(2) + _varint(1 << 3 | 0) + _varint(3)  # BlobShape dims unpacked
    blob = _field(7, dims) + unpacked
    v0 = _field(1, b"conv1") + _field(2, b"conv") + _field(50, blob)  # V0LayerParameter
    data = _field(1, b"ancient") + _field(2, _field(1, v0))  # NetParameter.layers{ layer { ... } }
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(data)
    _, layers = read_caffemodel_layers(path)
    assert (layers[0].name, layers[0].type) == ("conv1", "conv")
    np.testing.assert_array_equal(layers[0].blobs[0], values.reshape(2, 3))


def test_bad_files_are_clear_errors(rng, tmp_path):
    weights = _random_weights(rng, {"fc": [(50, 40), (50,)]})
    good = tmp_path / "good.caffemodel"
    write_caffemodel(good, weights)
    raw = good.read_bytes()
    for cut in (len(raw) - 3, len(raw) // 2, 5):
        truncated = tmp_path / f"cut{cut}.caffemodel"
        truncated.write_bytes(raw[:cut])
        with pytest.raises(CaffemodelError, match="truncated|no layer with weights"):
            read_caffemodel(truncated)
    text = tmp_path / "deploy.caffemodel"
    text.write_text(zoo.get("mnist").prototxt.read_text())
    with pytest.raises(CaffemodelError, match="not a valid caffemodel|no layer with weights"):
        read_caffemodel(text)
    noise = tmp_path / "noise.caffemodel"
    noise.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CaffemodelError):
        read_caffemodel(noise)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffemodelError, match="empty"):
        read_caffemodel(empty)
    with pytest.raises(CaffemodelError, match="not found"):
        read_caffemodel(tmp_path / "absent.caffemodel")


def test_shape_mismatch_names_layer_and_both_shapes(rng):
    with pytest.raises(
        CaffemodelError, match=r"layer 'fc8' blob 0 has shape \(10, 4096\), the net expects \(1000, 4096\)"
    ):
        match_weights(
            {"fc8": [np.zeros((10, 4096), np.float32), np.zeros(10, np.float32)]},
            {"fc8": [(1000, 4096), (1000,)]},
        )
    with pytest.raises(CaffemodelError, match="layer 'fc8' has 1 blobs, the net expects 2"):
        match_weights({"fc8": [np.zeros((1000, 4096), np.float32)]}, {"fc8": [(1000, 4096), (1000,)]})
    with pytest.raises(CaffemodelError, match="no layer name matches"):
        match_weights({"other": [np.zeros(3, np.float32)]}, {"fc8": [(1000, 4096), (1000,)]})


def test_backend_load_weights_rejects_a_caffemodel_of_another_net(tmp_path):
    torch_net = load_backend("mnist", "torch", weights="random")
    wrong = {"ip2": [np.zeros((7, 500), np.float32), np.zeros(7, np.float32)]}
    write_caffemodel(tmp_path / "wrong.caffemodel", wrong)
    with pytest.raises(
        CaffemodelError, match=r"layer 'ip2' blob 0 has shape \(7, 500\), the net expects \(10, 500\)"
    ):
        torch_net.load_weights(tmp_path / "wrong.caffemodel")


@pytest.mark.caffe
def test_pycaffe_reads_ours_and_we_read_pycaffes(tmp_path):
    caffe = require_caffe()
    ours = load_backend("mnist", "torch", weights="random", seed=5)
    path = tmp_path / "ours.caffemodel"
    ours.save_weights(path)
    net = caffe.Net(str(zoo.get("mnist").prototxt), caffe.TEST)
    net.copy_from(str(path))  # shapes checked by our writer's source: the same prototxt
    for name, blobs in ours.get_weights().items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(net.params[name][i].data, blob)
    saved = tmp_path / "pycaffe.caffemodel"
    net.save(str(saved))
    back = read_caffemodel(saved)
    for name, blobs in ours.get_weights().items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(back[name][i], blob)
