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


def test_shift_images_by_hand():
    img = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    imgs = np.repeat(img, 4, axis=0)
    out = train_mnist.shift_images(imgs, np.array([[0, 0], [1, 0], [0, -1], [-1, 2]]))
    assert out[0].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert out[1].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]  # down by one
    assert out[2].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]  # left by one
    assert out[3].tolist() == [[0, 0, 4], [0, 0, 7], [0, 0, 0]]  # up one, right two
    with pytest.raises(ValueError, match="shape"):
        train_mnist.shift_images(imgs, np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match="not smaller"):
        train_mnist.shift_images(imgs, np.full((4, 2), 3))


def test_epoch_data_is_seeded_permuted_and_shifted(rng):
    images = np.zeros((50, 28, 28), dtype=np.uint8)
    images[:, 10:18, 10:18] = 200  # a square, so every shift is visible
    labels = np.arange(50, dtype=np.uint8) % 10
    x1, y1 = train_mnist.epoch_data(images, labels, np.random.default_rng(7))
    x2, y2 = train_mnist.epoch_data(images, labels, np.random.default_rng(7))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (50, 1, 28, 28) and x1.dtype == np.float32 and y1.shape == (50, 1, 1, 1)
    assert sorted(y1.ravel().tolist()) == sorted(labels.tolist())  # a permutation
    assert not np.array_equal(y1.ravel(), labels)
    # every digit keeps its mass (the square stays inside), positions spread over -2..2
    np.testing.assert_allclose(x1.sum(axis=(1, 2, 3)), 64 * 200 / 256)
    rows = [np.flatnonzero(x1[i, 0].any(axis=1))[0] - 10 for i in range(50)]
    assert set(rows) == {-2, -1, 0, 1, 2}


@pytest.mark.caffe
@pytest.mark.slow
def test_training_is_reproducible_and_resumable(caffe, tmp_path):
    """A run stopped at a snapshot and resumed (its first part a second run from scratch) gives exactly
    the weights of an uninterrupted run with the same seed."""
    from pda_repro.backends.caffemodel import read_caffemodel

    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        train_mnist.SOLVER_PROTOTXT.read_text()
        .replace("snapshot: 3000", "snapshot: 10")
        .replace("test_interval: 600", "test_interval: 10")
    )

    def run(name: str, max_iter: int, resume: bool = False, run_dir: str | None = None) -> dict:
        return train_mnist.train(
            solver_prototxt=solver,
            run_dir=tmp_path / (run_dir or name),
            out_caffemodel=tmp_path / f"{name}.caffemodel",
            out_log=tmp_path / f"{name}.log",
            max_iter=max_iter,
            resume=resume,
            progress=False,
        )

    a = run("a", 20)
    run("c", 15)  # from scratch; snapshot at iteration 10
    c = run("c2", 20, resume=True, run_dir="c")
    assert "# resumed from iteration 10" in (tmp_path / "c2.log").read_text()
    wa, wc = read_caffemodel(tmp_path / "a.caffemodel"), read_caffemodel(tmp_path / "c2.caffemodel")
    assert set(wa) == set(wc) == {"conv1", "conv2", "ip1", "ip2"}
    for layer, blobs in wa.items():
        for x, y in zip(blobs, wc[layer], strict=True):
            np.testing.assert_array_equal(x, y)
    assert a["accuracy"] == c["accuracy"] > 0.5  # 20 SGD steps already beat chance
