"""The committed MNIST LeNet (trained with Caffe's solver) and the training pipeline."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from pda_repro import data
from pda_repro.train import mnist as train_mnist

TARGET = 0.992  # the paper's test accuracy


@pytest.fixture(scope="module")
def test_digits():
    images, labels = data.mnist("test")
    return train_mnist.scaled_images(images), labels


def test_scaled_images_exact():
    images = np.array([[[0, 1, 128, 255]]], dtype=np.uint8)
    x = train_mnist.scaled_images(images)
    assert x.shape == (1, 1, 1, 4) and x.dtype == np.float32
    assert x.ravel().tolist() == [0.0, 1 / 256, 0.5, 255 / 256]
    with pytest.raises(ValueError, match="uint8"):
        train_mnist.scaled_images(images.astype(np.float32))


def test_learning_rate_policies_by_hand():
    p = SimpleNamespace(base_lr=0.01, lr_policy="inv", gamma=1e-4, power=0.75)
    assert train_mnist._learning_rate(p, 0) == pytest.approx(0.01)
    assert train_mnist._learning_rate(p, 10000) == pytest.approx(0.01 * 2**-0.75)
    p = SimpleNamespace(base_lr=0.01, lr_policy="multistep", gamma=0.1, stepvalue=[100, 200])
    assert [train_mnist._learning_rate(p, i) for i in (99, 100, 250)] == pytest.approx([0.01, 0.001, 0.0001])


def test_committed_log_reports_the_target_accuracy():
    text = train_mnist.TRAIN_LOG.read_text()
    final = re.search(r"final test accuracy .*: (0\.\d+) \((\d+)/10000\)", text)
    assert final, "no final accuracy line in models/mnist_train.log"
    assert float(final.group(1)) >= TARGET
    assert "random_seed" in text


@pytest.mark.caffe
def test_committed_caffemodel_in_pycaffe(caffe, test_digits):
    accuracy, net = train_mnist.evaluate(caffe, train_mnist.CAFFEMODEL)
    assert accuracy >= TARGET, accuracy
    # the log states exactly this number
    final = re.search(r"\((\d+)/10000\)", train_mnist.TRAIN_LOG.read_text())
    assert int(final.group(1)) == round(accuracy * 10000)
    assert set(net.params) == {"conv1", "conv2", "ip1", "ip2"}


def test_committed_caffemodel_in_torch_backend(test_digits):
    from pda_repro.backends import load_backend

    x, labels = test_digits
    backend = load_backend("mnist", backend="torch", weights=str(train_mnist.CAFFEMODEL), batch=1000)
    probs, logits = backend.forward(x)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    assert accuracy >= TARGET, accuracy
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.caffe
def test_training_is_reproducible(caffe, tmp_path):
    """Two short runs from scratch with the solver's seed give identical weights (and they learn)."""
    outputs = []
    for run in ("a", "b"):
        summary = train_mnist.train(
            run_dir=tmp_path / run,
            out_caffemodel=tmp_path / f"{run}.caffemodel",
            out_log=tmp_path / f"{run}.log",
            max_iter=30,
            progress=False,
        )
        outputs.append(summary)
        assert (tmp_path / f"{run}.log").read_text().count("\n30\t") == 1
    from pda_repro.backends.caffemodel import read_caffemodel

    a, b = (read_caffemodel(tmp_path / f"{run}.caffemodel") for run in ("a", "b"))
    assert set(a) == {"conv1", "conv2", "ip1", "ip2"}
    for name in a:
        for wa, wb in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(wa, wb)
    assert outputs[0]["accuracy"] == outputs[1]["accuracy"] > 0.5  # 30 SGD steps already beat chance
