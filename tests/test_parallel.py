"""Parallel and distributed runs on Ray (pda_repro.parallel): the maps equal the serial run's bitwise.

Everything runs on loopback: Ray embedded in this process (2 workers), a real 2-node cluster
(ray.cluster_utils.Cluster, one CPU per node, on 127.0.0.1) joined by the CLI with --cluster, a worker
killed by its pid, a driver killed with SIGKILL and rerun, Ctrl-C, and an address nobody listens at.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from pda_repro import fingerprint, parallel
from pda_repro.explain import explain, load_model
from pda_repro.methods import chunks, windows
from pda_repro.paths import REPO_ROOT
from pda_repro.sampling import PatchGaussian

pytest.importorskip("ray")

CLI = [sys.executable, "-m", "pda_repro.cli"]
MNIST_PDA = dict(method="pda", window=4, outer=8, samples=10, batch=4, classes=[7], rng=5, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    """One embedded Ray for the module; stopped at its end. The serial references run on one torch
    thread like the workers (the result does not depend on it; on a loaded 2-core machine two
    threads can be many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    yield
    parallel.shutdown()
    torch.set_num_threads(threads)


def mnist_setup():
    """The MNIST net, a real test digit (a 7) and a Gaussian fitted on 64 other test digits."""
    from pda_repro.data import mnist as mnist_data

    net = load_model("mnist")
    images, _ = mnist_data("test")
    spec = net.model_spec
    digits = (images[:65, None].astype(np.float32) - np.float32(spec.mean[0])) * np.float32(spec.scale)
    gauss = PatchGaussian.fit(digits[1:], 4, 8, n_patches=3000, rng=np.random.default_rng(1))
    return net, np.ascontiguousarray(digits[0]), gauss


@pytest.fixture(scope="module")
def mnist():
    return mnist_setup()


@pytest.fixture(scope="module")
def mnist_serial(mnist):
    net, x, gauss = mnist
    return explain(net, x, sampler=gauss, **MNIST_PDA)


def _alive(pids: list[int], seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def test_two_local_workers_equal_serial_pda_mnist(mnist, mnist_serial):
    net, x, gauss = mnist
    res = explain(net, x, sampler=gauss, workers=2, **MNIST_PDA)
    assert res.params["executor"] == "ray" and res.params["workers"] == 2
    assert res.params["windows_total"] == 625 and res.params["chunk_windows"] == 256  # 3 chunks
    np.testing.assert_array_equal(res.maps, mnist_serial.maps)
    assert res.params["images_forwarded"] == mnist_serial.params["images_forwarded"] == 1 + 6250


def test_two_local_workers_equal_serial_efficient_pda_lite0(monkeypatch):
    """Lite0 at stride 16 has 196 windows: chunks of 48 windows (CHUNK_DRAWS on the driver; the
    workers get the chunk size with the task) make 5 work units for the 2 workers."""
    monkeypatch.setattr(windows, "CHUNK_DRAWS", 48)
    net = load_model("efficientnet_lite0")
    rng = np.random.default_rng(2)
    photos = rng.uniform(-2, 2, (4, *net.input_shape)).astype(np.float32)
    gauss = PatchGaussian.fit(photos, 10, 18, n_patches=3000, rng=np.random.default_rng(1))
    args = dict(method="epda", window=10, outer=18, stride=16, sampler=gauss, classes=[1, 2], progress=False)
    serial = explain(net, photos[0], **args)
    res = explain(net, photos[0], workers=2, **args)
    assert res.params["executor"] == "ray" and res.params["chunk_windows"] == 48
    assert res.params["inference"] == serial.params["inference"]
    np.testing.assert_array_equal(res.maps, serial.maps)


def test_a_killed_worker_is_replaced_and_the_map_is_identical(mnist, mnist_serial):
    net, x, gauss = mnist
    executor = parallel.RayExecutor(workers=2)
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if not killed and 0 < done < total // 3:  # both workers are inside their first chunk
            killed.append(executor.worker_pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    res = explain(net, x, sampler=gauss, workers=executor, callback=kill_one, **MNIST_PDA)
    assert killed and executor.retried >= 1
    for pid in executor.worker_pids():  # the workers run at the driver's niceness (Ray's own: 15)
        assert psutil.Process(pid).nice() == os.getpriority(os.PRIO_PROCESS, 0)
    assert killed[0] not in executor.worker_pids()  # Ray restarted the actor in a new process
    np.testing.assert_array_equal(res.maps, mnist_serial.maps)


def test_ctrl_c_stops_the_workers_and_keeps_the_checkpoint(tmp_path, mnist, mnist_serial):
    net, x, gauss = mnist
    ckpt = tmp_path / "run.ckpt.npz"
    executor = parallel.RayExecutor(workers=2)
    pids: list[int] = []

    def ctrl_c(done: int, total: int) -> None:
        if not pids:
            pids.extend(executor.worker_pids())
        if ckpt.exists():  # the first finished chunk is in the checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain(net, x, sampler=gauss, workers=executor, checkpoint=ckpt, callback=ctrl_c, **MNIST_PDA)
    assert ckpt.exists()
    assert _alive(pids) == []  # the workers were stopped
    with np.load(ckpt) as f:
        assert f["chunks"].size >= 1 and int(f["cursor"]) >= 2560
    resumed = explain(net, x, sampler=gauss, workers=2, checkpoint=ckpt, **MNIST_PDA)
    assert resumed.params["resumed_evaluations"] >= 2560
    np.testing.assert_array_equal(resumed.maps, mnist_serial.maps)
    assert not ckpt.exists()


KILLED_DRIVER = """
import os, signal, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from tests.test_parallel import MNIST_PDA, mnist_setup
from pda_repro.explain import explain

ckpt = Path(sys.argv[1])
net, x, gauss = mnist_setup()

def die(done, total):
    if ckpt.exists():  # a chunk is saved: crash with no cleanup, workers still running
        os.kill(os.getpid(), signal.SIGKILL)

explain(net, x, sampler=gauss, workers=2, checkpoint=ckpt, callback=die, **MNIST_PDA)
"""


def test_driver_sigkill_then_rerun_resumes_to_the_same_map(tmp_path, mnist, mnist_serial):
    net, x, gauss = mnist
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(KILLED_DRIVER.format(repo=str(REPO_ROOT))))
    ckpt = tmp_path / "run.ckpt.npz"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt)], capture_output=True, text=True, timeout=150, env=env
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert ckpt.exists()
    resumed = explain(net, x, sampler=gauss, workers=2, checkpoint=ckpt, **MNIST_PDA)
    assert resumed.params["resumed_evaluations"] >= 2560
    np.testing.assert_array_equal(resumed.maps, mnist_serial.maps)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_cluster_address_exit_2_one_line_nothing_written(tmp_path, mnist_png):
    out = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "explain", str(mnist_png), "--model", "mnist", "--window", "4", "--outer", "8",
         "--cluster", f"127.0.0.1:{_free_port()}", "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray cluster at '127.0.0.1:" in lines[0], proc.stderr
    assert not out.exists()
    with pytest.raises(ValueError, match="workers must be"):
        parallel.make_executor(0)
    with pytest.raises(parallel.ClusterError, match="not host:port"):
        parallel.check_reachable("127.0.0.1:http")


@pytest.fixture(scope="module")
def mnist_png(tmp_path_factory) -> Path:
    from PIL import Image

    from pda_repro.data import mnist as mnist_data

    images, _ = mnist_data("test")
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(images[0]).save(path)
    return path


def test_two_node_loopback_cluster_through_the_cli(tmp_path, mnist_png):
    """A real Ray cluster of two 1-CPU nodes on 127.0.0.1; `--cluster ADDRESS` equals `--workers 1`."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        base = [*CLI, "explain", str(mnist_png), "--model", "mnist", "--method", "pda", "--window", "4",
                "--outer", "8", "--samples", "10", "--no-progress", "--sampler-cache", str(tmp_path / "cache")]  # fmt: skip
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
        env.pop("RAY_ADDRESS", None)
        runs = {}
        for name, extra in (("serial", ["--workers", "1"]), ("cluster", ["--cluster", cluster.address])):
            proc = subprocess.run(
                [*base, *extra, "--out", str(tmp_path / name)], capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env=env
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[name] = tmp_path / name
        summary = json.loads((runs["cluster"] / "digit.json").read_text())
        params = summary.get("params", summary)
        assert params.get("executor") == "ray" and params.get("workers") == 2, params
        with np.load(runs["serial"] / "digit.npz") as a, np.load(runs["cluster"] / "digit.npz") as b:
            np.testing.assert_array_equal(a["maps"], b["maps"])
    finally:
        cluster.shutdown()


def test_auto_hands_long_runs_to_ray_and_keeps_short_ones_in_process(mnist, mnist_serial, monkeypatch):
    """auto: the first PROBE_SECONDS are timed in-process; over the break-even the rest goes to the
    local cores: a chunk the probe stopped in is redone there (its batches counted twice), a chunk the
    probe finished is kept. Either way the map equals the serial one bitwise."""
    net, x, gauss = mnist
    short = parallel.AutoExecutor(break_even_s=1e9, workers=2)
    res = explain(net, x, sampler=gauss, workers=short, **MNIST_PDA)
    assert res.params["executor"] == "in-process" and short.estimate_s is not None
    np.testing.assert_array_equal(res.maps, mnist_serial.maps)
    every = 1 + 625 * 10  # the unmarginalised image and S samples for each of the 25x25 windows
    # the probe decides after its first batch (machine speed cannot finish the chunk first)
    monkeypatch.setattr(parallel, "PROBE_SECONDS", 0.0)
    res = explain(
        net, x, sampler=gauss, workers=parallel.AutoExecutor(break_even_s=0.0, workers=2), **MNIST_PDA
    )
    assert res.params["executor"] == "ray" and res.params["workers"] == 2
    assert res.params["images_forwarded"] > every  # the probed batches were redone (and counted)
    np.testing.assert_array_equal(res.maps, mnist_serial.maps)
    # the probe finishes the first chunk before it decides: that chunk is kept, nothing is redone
    monkeypatch.setattr(parallel, "PROBE_SECONDS", 1e9)
    res = explain(
        net, x, sampler=gauss, workers=parallel.AutoExecutor(break_even_s=0.0, workers=2), **MNIST_PDA
    )
    assert res.params["executor"] == "ray" and res.params["images_forwarded"] == every
    np.testing.assert_array_equal(res.maps, mnist_serial.maps)


@pytest.mark.parametrize("batch", [None, 3])
def test_a_worker_rebuilds_the_same_net(batch):
    """What a worker builds from net_recipe computes like the driver's net: weights, batch and the
    batch the incremental path splits by (a different split changes float rounding)."""
    net = load_model("mnist", batch=batch)
    copy = parallel.build_net(parallel.net_recipe(net))
    assert fingerprint.net_fingerprint(copy) == fingerprint.net_fingerprint(net)
    assert copy.batch == net.batch
    for mode in ("full", "incremental"):
        assert copy.window_batch(mode) == net.window_batch(mode)


def test_explain_many_whole_images_equal_serial(mnist):
    """Whole images as the work units (many images on many workers): each result equals the
    in-process explain() of that image bitwise, in the order of the images."""
    from pda_repro.data import mnist as mnist_data

    net, _, gauss = mnist
    images, _ = mnist_data("test")
    spec = net.model_spec
    digits = (images[100:103, None].astype(np.float32) - np.float32(spec.mean[0])) * np.float32(spec.scale)
    args = dict(method="pda", window=4, outer=8, samples=4, stride=2, sampler=gauss, classes=[3], rng=9)
    many = parallel.explain_many(net, list(digits), workers=2, progress=False, **args)
    for digit, res in zip(digits, many, strict=True):
        np.testing.assert_array_equal(res.maps, explain(net, digit, progress=False, **args).maps)
    with pytest.raises(ValueError, match="int seed"):
        parallel.explain_many(net, list(digits), **{**args, "rng": np.random.default_rng(0)})


def _digit_pngs(folder: Path, first: int, count: int) -> list[Path]:
    from PIL import Image

    from pda_repro.data import mnist as mnist_data

    images, _ = mnist_data("test")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + count):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    return paths


CLI_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
CLI_ENV.pop("RAY_ADDRESS", None)


def _cli_pda(paths: list[Path], out: Path, cache: Path, *extra: str, samples: int = 10) -> list[str]:
    return [*CLI, "explain", *map(str, paths), "--model", "mnist", "--method", "pda", "--window", "4",
            "--outer", "8", "--samples", str(samples), "--class", "3", "--no-progress",
            "--sampler-cache", str(cache), "--out", str(out), *extra]  # fmt: skip


def test_cli_several_images_whole_images_on_the_workers_equal_serial(tmp_path):
    """3 images on 2 workers: two as whole-image units (one per worker), the third with its windows
    spread over both; every map equals the one-worker run's bitwise."""
    paths = _digit_pngs(tmp_path / "in", 10, 3)
    runs = {}
    for name, workers in (("serial", "1"), ("two", "2")):
        cmd = _cli_pda(paths, tmp_path / name, tmp_path / "cache", "--workers", workers)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=CLI_ENV)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count(" -> ") == 3, proc.stdout
        runs[name] = tmp_path / name
    executors = []
    for path in paths:
        params = json.loads((runs["two"] / f"{path.stem}.json").read_text())["params"]
        executors.append((params["executor"], params["workers"]))
        with (
            np.load(runs["serial"] / f"{path.stem}.npz") as a,
            np.load(runs["two"] / f"{path.stem}.npz") as b,
        ):
            np.testing.assert_array_equal(a["maps"], b["maps"])
    assert sorted(executors) == [("ray", 2), ("ray-images", 2), ("ray-images", 2)], executors
    assert not (runs["two"] / ".checkpoints").exists()  # every checkpoint removed with its results


def test_cli_whole_images_driver_sigkill_then_rerun_resumes(tmp_path):
    """Whole-image units write their checkpoints in --out: the driver killed with SIGKILL once a
    checkpoint exists, the same command again resumes from it and the maps equal the serial run's."""
    paths = _digit_pngs(tmp_path / "in", 20, 2)
    cache = tmp_path / "cache"
    serial = subprocess.run(_cli_pda(paths, tmp_path / "serial", cache, "--workers", "1", samples=60),
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=CLI_ENV)  # fmt: skip
    assert serial.returncode == 0, serial.stderr[-3000:]
    out = tmp_path / "two"
    cmd = _cli_pda(paths, out, cache, "--workers", "2", "--checkpoint-seconds", "0.5", samples=60)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=CLI_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".checkpoints/*.npz")):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before a checkpoint was written"
    proc.kill()
    proc.communicate(timeout=60)
    assert list(out.glob(".checkpoints/*.npz")) and not list(out.glob("*.json"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=CLI_ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = []
    for path in paths:
        resumed.append(json.loads((out / f"{path.stem}.json").read_text())["params"]["resumed_evaluations"])
        with np.load(tmp_path / "serial" / f"{path.stem}.npz") as a, np.load(out / f"{path.stem}.npz") as b:
            np.testing.assert_array_equal(a["maps"], b["maps"])
    assert max(resumed) > 0, resumed


def test_the_sampler_goes_to_the_object_store_once(mnist, mnist_serial):
    """Two runs with one sampler on one pool: the sampler is put once (the tasks travel without it),
    and both maps equal the serial one."""
    import pickle

    net, x, gauss = mnist
    executor = parallel.RayExecutor(workers=2)
    res = explain(net, x, sampler=gauss, workers=executor, **MNIST_PDA)
    pool = executor.pool
    keys, sent = set(pool.shared), pool.shared_bytes
    mine = [k for k in keys if k.startswith("imputation:") and fingerprint.object_fingerprint(gauss) in k]
    assert len(mine) == 1, keys
    res2 = explain(net, x, sampler=gauss, workers=executor, **MNIST_PDA)
    assert executor.pool is pool and set(pool.shared) == keys and pool.shared_bytes == sent  # not again
    for r in (res, res2):
        np.testing.assert_array_equal(r.maps, mnist_serial.maps)
    sampler_bytes = parallel.actors._nbytes(gauss)
    task = chunks.WindowTask(x, 4, np.arange(625), np.arange(625), None, np.array([7]), 4, 0, 256)
    assert len(pickle.dumps(task)) < sampler_bytes / 2  # what each task sends without its sampler


def test_the_parallel_readme_block_is_built_from_the_data(tmp_path):
    """The README's numbers come from parallel.csv/.json: ratios computed from the seconds there, the
    target verdict from them, the block between the markers replaced and the rest kept."""
    from pda_repro.bench.parallel_report import PARALLEL_BLOCK, update_parallel_readme
    from pda_repro.bench.results import atomic_write_csv, atomic_write_json

    env = tmp_path / "results" / "cpu-test"
    common = dict(method="epda", k=10, l=18, S=1, stride=1, batch=16, backend="torch", device="cpu",
                  windows=100, chunk_windows=10, rounds=2, load_1min_at_rounds="1.0 1.1")  # fmt: skip
    rows = [
        dict(model="m", config="1proc_2threads", inference="incremental", executor="in-process", workers=1,
             threads_per_process=2, seconds_median=10.0, full_image_s_extrapolated=1000.0, **common),
        dict(model="m", config="1proc_1thread", inference="incremental", executor="in-process", workers=1,
             threads_per_process=1, seconds_median=16.0, full_image_s_extrapolated=1600.0, **common),
        dict(model="m", config="ray_2workers", inference="incremental", executor="ray", workers=2,
             threads_per_process=1, seconds_median=5.0, full_image_s_extrapolated=520.0, **common),
        dict(model="m", config="before", inference="full", executor="in-process", workers=1,
             threads_per_process=2, seconds_median=40.0, full_image_s_extrapolated=2080.0, **{**common, "batch": 4}),
    ]  # fmt: skip
    atomic_write_csv(env / "parallel.csv", rows)
    atomic_write_json(env / "parallel.json", {"machine_scaling": {"throughput_vs_1proc_1thread": {
        "2procs_1thread": 1.9, "1proc_2threads": 1.5}}})  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{PARALLEL_BLOCK[0]}\nold\n{PARALLEL_BLOCK[1]}\noutro\n")
    assert update_parallel_readme(readme, tmp_path / "results") == readme
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert (
        "| m | 100 windows, stride 1, batch 16, 2 rounds | 10.0 s | 16.0 s | 5.0 s | 2.00× | 3.20× |" in text
    )
    assert "m 2.00× — met." in text  # 10 s / 5 s against the 1.6× target
    assert "1.27×" in text  # 1.9 / 1.5: what workers can gain over threads on that machine
    assert (
        "stride 1, whole image" in text and "2080 s; now 520 s" in text and "4.00× (target 3×, met)" in text
    )
    assert update_parallel_readme(tmp_path / "plain.md", tmp_path / "results") is None
