"""EfficientNet-Lite0 -> Caffe: the conversion's building blocks against float64 brute force, and the
converted net against the original PyTorch model on real photos (pycaffe and our torch backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from pda_repro import data
from pda_repro.convert import efficientnet as conv

MODELS = Path(__file__).resolve().parent.parent / "models"
PROTOTXT = MODELS / conv.PROTOTXT_NAME
CAFFEMODEL = MODELS / conv.CAFFEMODEL_NAME

# photo -> ImageNet class index the original model ranks first (checked by eye: these are right)
EXPECTED_TOP1 = {
    "coffee": 967,  # espresso
    "orange": 950,  # orange
    "squirrel_cls": 335,  # fox squirrel
    "baboon": 372,  # baboon
    "chicky_512": 154,  # Pekinese
    "messi5": 805,  # soccer ball
}
EXPECTED_TOP5 = {"chelsea": 281, "butterfly": 323}  # tabby cat; monarch (the photo is a swallowtail)


def _conv_bruteforce(x: np.ndarray, w: np.ndarray, stride: int, pads: tuple[int, int, int, int], groups: int):
    """float64 convolution by explicit loops: x (C,H,W), w (O, C/groups, k, k), pads (left, right, top, bottom)."""
    left, right, top, bottom = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (top, bottom), (left, right)))
    out_c, in_per_group, kh, kw = w.shape
    oh = (xp.shape[1] - kh) // stride + 1
    ow = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((out_c, oh, ow))
    per_group_out = out_c // groups
    for o in range(out_c):
        g = o // per_group_out
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    g * in_per_group : (g + 1) * in_per_group,
                    i * stride : i * stride + kh,
                    j * stride : j * stride + kw,
                ]
                y[o, i, j] = (patch * w[o]).sum()
    return y


@pytest.mark.parametrize(
    "size, k, groups",
    [(8, 3, 1), (9, 3, 1), (10, 5, 3), (11, 5, 3), (12, 3, 3)],
)
def test_tf_same_padding_as_grown_kernel(rng, size, k, groups):
    """TF 'SAME' stride-2 padding (one more after than before) equals the zero-grown kernel with Caffe's
    symmetric padding, against a brute-force float64 convolution."""
    c = 3
    x = rng.standard_normal((c, size, size))
    w = rng.standard_normal((6 if groups == 1 else c, c // groups, k, k))
    out = -(-size // 2)
    total = max((out - 1) * 2 + k - size, 0)
    tf_pads = (total // 2, total - total // 2, total // 2, total - total // 2)
    expected = _conv_bruteforce(x, w, 2, tf_pads, groups)
    grown, pad = conv.same_padding_as_caffe(w, tf_pads)
    assert grown.shape[-1] == k + (tf_pads[1] - tf_pads[0])
    got = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(grown), stride=2, padding=pad, groups=groups)[
        0
    ]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)


def test_same_padding_rejects_unsupported():
    w = np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match="unsupported padding"):
        conv.same_padding_as_caffe(w, (1, 0, 1, 0))
    with pytest.raises(ValueError, match="unsupported padding"):
        conv.same_padding_as_caffe(w, (0, 1, 1, 2))


def test_fold_batchnorm_matches_conv_then_bn(torch_gen):
    """conv (no bias) -> BatchNorm (eval) equals the folded conv, against float64 arithmetic."""
    bn = torch.nn.BatchNorm2d(4, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4, generator=torch_gen, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(4, generator=torch_gen, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(4, generator=torch_gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(4, generator=torch_gen, dtype=torch.float64) + 0.1)
    w = torch.randn(4, 2, 3, 3, generator=torch_gen, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 6, generator=torch_gen, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(F.conv2d(x, w, padding=1))
        # hand formula for one output pixel, to read by eye
        s0 = bn.weight[0] / torch.sqrt(bn.running_var[0] + 1e-3)
        by_hand = (F.conv2d(x, w[:1], padding=1)[0, 0, 2, 3] - bn.running_mean[0]) * s0 + bn.bias[0]
    assert abs(float(by_hand - expected[0, 0, 2, 3])) < 1e-12
    wf, bf = conv.fold_batchnorm(w.numpy(), bn)
    got = F.conv2d(
        x, torch.from_numpy(wf.astype(np.float64)), torch.from_numpy(bf.astype(np.float64)), padding=1
    )
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)  # float32 weights


def test_reference_preprocess_crop_geometry(rng):
    img = rng.integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
    x = conv.reference_preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    # 224/256 of the 256-pixel shorter side = 224: a pure centre crop at rows 16.., columns 48..
    expected = (img[16:240, 48:272].astype(np.float32) - 127.0) / 128.0
    np.testing.assert_array_equal(x, expected.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="uint8 RGB"):
        conv.reference_preprocess(img.astype(np.float32))


# --- the converted net --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original():
    torch.set_num_threads(2)
    return conv.load_original()


@pytest.fixture(scope="module")
def photos_batch():
    photos = data.photo_paths()
    names = list(photos)
    x = np.stack([conv.reference_preprocess(data.load_photo(photos[n])) for n in names])
    return names, x


@pytest.fixture(scope="module")
def original_probs(original, photos_batch):
    _, x = photos_batch
    with torch.no_grad():
        return original(torch.from_numpy(x)).double().softmax(1).numpy()


def test_committed_files_are_the_conversion(original):
    """models/efficientnet_lite0.* are exactly what the converter writes today."""
    from pda_repro.backends.caffemodel import read_caffemodel

    net, weights = conv.convert(original)
    assert PROTOTXT.read_text() == conv._prototxt_text(net)
    stored = read_caffemodel(CAFFEMODEL)
    assert list(stored) == list(weights)
    for name, blobs in weights.items():
        assert len(stored[name]) == len(blobs)
        for a, b in zip(stored[name], blobs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert CAFFEMODEL.stat().st_size < 20e6


def test_prototxt_structure():
    pb = conv._caffe_pb2()
    net = text_format.Parse(PROTOTXT.read_text(), pb.NetParameter())
    assert net.force_backward
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 224, 224]
    types = [layer.type for layer in net.layer]
    assert types.count("Convolution") == 1 + 15 + 16 + 16 + 1  # stem, 15 expands, 16 dw, 16 project, head
    assert types.count("ReLU6") == 1 + 15 + 16 + 1
    assert types.count("Eltwise") == 9  # blocks with stride 1 and equal in/out channels
    assert "BatchNorm" not in types and "Dropout" not in types
    assert (
        net.layer[-1].type == "Softmax" and net.layer[-1].top[0] == "prob" and net.layer[-1].bottom[0] == "fc"
    )
    dw = [layer for layer in net.layer if layer.name.endswith("_dw")]
    assert all(layer.convolution_param.group == layer.convolution_param.num_output for layer in dw)
    grown = [
        layer.name
        for layer in net.layer
        if layer.type == "Convolution" and layer.convolution_param.kernel_size[0] in (4, 6)
    ]
    assert grown == ["conv_stem", "block1_dw", "block3_dw", "block5_dw", "block11_dw"]
    pool = next(layer for layer in net.layer if layer.type == "Pooling")
    assert pool.pooling_param.global_pooling and pool.pooling_param.pool == pb.PoolingParameter.AVE


def test_original_model_on_real_photos(photos_batch, original_probs):
    names, _ = photos_batch
    top5 = np.argsort(-original_probs, axis=1)[:, :5]
    for photo, cls in EXPECTED_TOP1.items():
        assert top5[names.index(photo), 0] == cls, (photo, top5[names.index(photo)])
    for photo, cls in EXPECTED_TOP5.items():
        assert cls in top5[names.index(photo)], (photo, top5[names.index(photo)])


def _assert_agree(probs: np.ndarray, reference: np.ndarray) -> None:
    assert probs.shape == reference.shape
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-4)
    top_ref = np.argsort(-reference, axis=1)[:, :5]
    top = np.argsort(-probs, axis=1)[:, :5]
    for i in range(len(reference)):
        if not np.array_equal(top[i], top_ref[i]):
            # only a near tie may reorder the top 5
            gaps = np.abs(np.diff(reference[i, top_ref[i]]))
            assert gaps.min() < 1e-5, (i, top[i], top_ref[i])


@pytest.mark.caffe
def test_pycaffe_matches_original(caffe, photos_batch, original_probs):
    _, x = photos_batch
    net = caffe.Net(str(PROTOTXT), str(CAFFEMODEL), caffe.TEST)
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    probs = net.forward()["prob"].astype(np.float64).copy()
    _assert_agree(probs, original_probs)


def test_torch_backend_matches_original(photos_batch, original_probs):
    from pda_repro.backends import load_backend

    _, x = photos_batch
    backend = load_backend(str(PROTOTXT), backend="torch", weights=str(CAFFEMODEL), batch=32)
    probs, logits = backend.forward(np.ascontiguousarray(x, dtype=np.float32))
    assert logits.shape == (len(x), 1000)
    _assert_agree(probs.astype(np.float64), original_probs)
