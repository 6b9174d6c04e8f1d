"""Throughput of the window loop on Ray workers against one process, and what starting Ray costs.

For each model (efficient PDA, window 10, outer 18, stride 1, the CPU default batch, the top class):
the same evenly spread subset of windows, split into `--chunks` work units, is explained by

    1proc_2threads   one process, torch on 2 threads, in-process executor (incremental inference)
    1proc_1thread    the same on one thread (what each worker runs; bitwise the workers' maps)
    ray_2workers     2 Ray actors with one thread each (Ray already started: start-up measured apart)
    before           (--before-model only) full re-inference, one process with 2 threads: the default
                     `pda-repro explain photo.jpg` before incremental inference and parallel runs

interleaved over `--rounds` rounds so that a change of the machine's load hits every configuration
alike; seconds are the median round. Ray's start-up (embedded `ray.init`, then the
actors with their nets built), the workers' and Ray's own resident memory, the bytes a chunk sends
back, and per-chunk compute time are measured in the same run. The maps of the configurations are
compared (bitwise where the threads agree).

    pda-repro benchmark parallel [--models efficientnet_lite0,vgg16] [--rounds 2]

Writes results/<env>/parallel.csv (one row per model and configuration) and parallel.json (settings,
machine, start-up, memory, bytes, load) atomically.
"""

from __future__ import annotations

import os
import pickle
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.results import (
    RESULTS_DIR,
    atomic_write_csv,
    atomic_write_json,
    env_name,
    machine_metadata,
)
from pda_repro.paths import REPO_ROOT

__all__ = ["DEFAULT_MODELS", "WINDOWS", "driver_costs", "machine_scaling", "projection", "run"]

DEFAULT_MODELS = ("efficientnet_lite0", "vgg16")
# windows per model: enough that each worker's fixed cost per image (the task, the image's stored
# activations for incremental inference) is a small part of its run, few enough to keep the run short
WINDOWS = {"efficientnet_lite0": 1024, "vgg16": 384, "alexnet": 2048, "googlenet": 1024, "mnist": 8192}
FULL_WINDOWS = 46_225  # a 224×224 image, window 10, stride 1 (for the extrapolated full-image times)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _ray_system_rss() -> int:
    """Resident bytes of Ray's own processes (GCS, raylet, agents, monitors; not the workers)."""
    import psutil

    marks = ("gcs_server", "raylet", "dashboard", "runtime_env", "log_monitor", "monitor.py")
    total = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in marks) and "ray::" not in cmd:
                total += p.memory_info().rss
        except (psutil.Error, OSError):
            continue
    return total


def _conv_work(iterations: int, threads: int) -> float:
    """Seconds of `iterations` 3×3 convolutions (64→64 channels, 56×56, batch 4·threads) on `threads`."""
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(4 * threads, 64, 56, 56, generator=torch.Generator().manual_seed(0))
    w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.conv2d(x, w, padding=1)  # warm-up
    t0 = time.perf_counter()
    for _ in range(iterations):
        torch.nn.functional.conv2d(x, w, padding=1)
    return time.perf_counter() - t0


def machine_scaling(rounds: int, iterations: int = 40) -> dict[str, Any]:
    """What two cores give for CNN work, whatever runs it: the same convolutions in one
    single-threaded process, in two at once, and in one process with two threads (twice the batch),
    interleaved over `rounds`. Throughput relative to the lone single-threaded process: 2.0 would be
    two full cores; the ratio of the two-process and two-thread figures bounds what workers can gain
    over threads here."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    seconds: dict[str, list[float]] = {"1proc_1thread": [], "2procs_1thread": [], "1proc_2threads": []}
    loads = []
    with ctx.Pool(2) as pool:
        pool.starmap(_conv_work, [(1, 1), (1, 1)])  # start both processes (torch imported)
        for _ in range(rounds):
            loads.append(_load())
            seconds["1proc_1thread"].append(pool.apply(_conv_work, (iterations, 1)))
            t0 = time.perf_counter()
            pool.starmap(_conv_work, [(iterations, 1), (iterations, 1)])
            seconds["2procs_1thread"].append(time.perf_counter() - t0)
            seconds["1proc_2threads"].append(pool.apply(_conv_work, (iterations, 2)))
    one = statistics.median(seconds["1proc_1thread"])
    return {
        "what": "3x3 convolutions 64->64 channels at 56x56 (torch), batch 4 per thread",
        "iterations": iterations,
        "rounds": rounds,
        "seconds": seconds,
        "throughput_vs_1proc_1thread": {
            "2procs_1thread": 2 * one / statistics.median(seconds["2procs_1thread"]),
            "1proc_2threads": 2 * one / statistics.median(seconds["1proc_2threads"]),
        },
        "load_1min_at_rounds": loads,
    }


class _OneEvaluation:
    evaluations_per_window = 1
    draws_per_window = 1


def driver_costs(rounds: int = 200) -> dict[str, Any]:
    """The driver's share of one chunk, measured here: a Ray round trip of a default-size chunk
    result (2560 windows, 1 class) and placing it + saving the checkpoint of a full image."""
    import tempfile

    from pda_repro import parallel
    from pda_repro.methods.checkpoint import Checkpoint, LoopRun
    from pda_repro.methods.chunks import ChunkState, WindowTask

    ray = parallel.ray_session(None, 1)

    @ray.remote(num_cpus=1)
    def echo(state):
        return state

    chunk = ChunkState(0, 2560, np.zeros((2560, 1)))
    ray.get(echo.remote(chunk))  # warm-up: the worker process
    t0 = time.perf_counter()
    for _ in range(rounds):
        ray.get(echo.remote(chunk))
    round_trip = (time.perf_counter() - t0) / rounds
    task = WindowTask(
        x=np.zeros((3, 224, 224), np.float32), window=10, rows=np.zeros(FULL_WINDOWS, np.int64),
        cols=np.zeros(FULL_WINDOWS, np.int64), imputation=_OneEvaluation(), classes=np.zeros(1, np.int64),
        batch=4, root_seed=0, chunk_windows=2560,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpoint(Path(tmp) / "c.npz", {"format": 2})
        run = LoopRun(task, ckpt, progress=False, callback=None, description="")
        t0 = time.perf_counter()
        for ci in range(task.n_chunks):
            state = ChunkState(ci, task.chunk_evaluations(ci), np.zeros((task.chunk_size(ci), 1)))
            run.advance(state.done)
            run.finished(state)
        place_and_save = (time.perf_counter() - t0) / task.n_chunks
        run.bar.close()
    parallel.shutdown()
    return {
        "ray_round_trip_s_per_chunk": round_trip,
        "place_and_checkpoint_s_per_chunk": place_and_save,
        "chunks_per_image_default": task.n_chunks,
        "bytes_per_chunk_result_1_class": len(pickle.dumps(chunk, protocol=5)),
    }


def projection(meta: dict[str, Any]) -> dict[str, Any]:
    """Expected speed-up on 8, 64, 512 workers from the measured per-chunk compute and driver costs
    (a model, not a measurement): each worker finishes a chunk in t_c; the driver spends d per chunk
    (round trip + place + checkpoint) and asks up to POLL_ACTORS workers for their progress twice
    a second (one round trip each); the driver saturates at t_c / d workers. Per image at most `chunks_per_image`
    workers are busy: beyond that the units are chunks of many images (whole images)."""
    from pda_repro import parallel

    drv = meta["driver"]
    out = {}
    for model, info in meta["chunks"].items():
        t_c = info["compute_s_per_window"] * 2560  # a default chunk: 2560 windows of efficient PDA
        rows = []
        for w in (8, 64, 512):
            d = drv["ray_round_trip_s_per_chunk"] + drv["place_and_checkpoint_s_per_chunk"]
            polling = 2 * min(w, parallel.POLL_ACTORS) * drv["ray_round_trip_s_per_chunk"]  # s per s
            driver_capacity = max(0.0, 1.0 - polling) / d  # chunks per second the driver can take
            speedup = min(float(w), driver_capacity * t_c)
            rows.append(
                {
                    "workers": w,
                    "expected_speedup": speedup,
                    "limited_by": "workers" if speedup >= w - 1e-9 else "driver (accumulation + polling)",
                    "one_image_speedup": min(speedup, float(drv["chunks_per_image_default"])),
                    "result_traffic_bytes_per_s": speedup / t_c * drv["bytes_per_chunk_result_1_class"],
                }
            )
        saturation = t_c / (drv["ray_round_trip_s_per_chunk"] + drv["place_and_checkpoint_s_per_chunk"])
        out[model] = {"chunk_compute_s": t_c, "driver_saturates_at_workers": saturation, "rows": rows}
    return out


def full_image_rows(
    net: Any, x: np.ndarray, gauss: Any, top: int, stride: int, executor: Any, startup: dict[str, Any]
) -> tuple[list[dict], dict]:
    """Every window of the image at `stride` (default chunks), once in one process with 2 threads and
    once on the Ray workers: the per-image costs spread as in a real run. Start-up is excluded (the
    actors are ready) and stated in the JSON."""
    import torch

    from pda_repro.explain import explain

    base = dict(
        method="epda", window=10, outer=18, stride=stride, sampler=gauss, classes=[top], progress=False
    )
    out, seconds, maps = [], {}, {}
    for name, threads, workers in (
        ("full_image_1proc_2threads", 2, 1),
        ("full_image_ray_2workers", 1, executor),
    ):
        torch.set_num_threads(threads)
        load = _load()
        t0 = time.perf_counter()
        res = explain(net, x, workers=workers, inference="incremental", **base)
        seconds[name] = time.perf_counter() - t0
        maps[name] = res.maps
        n = int(res.params["windows_total"])
        out.append(
            {
                "model": net.model_spec.name, "config": name, "method": "epda", "k": 10, "l": 18, "S": 1,
                "stride": stride, "batch": res.params["batch"], "backend": res.params["backend"],
                "inference": res.params["inference"], "executor": res.params["executor"],
                "workers": res.params["workers"], "threads_per_process": threads, "device": "cpu",
                "windows": n, "chunk_windows": res.params.get("chunk_windows"), "rounds": 1,
                "seconds_median": seconds[name], "seconds_rounds": f"{seconds[name]:.2f}",
                "windows_per_s": n / seconds[name],
                "throughput_vs_1proc_2threads": seconds["full_image_1proc_2threads"] / seconds[name],
                "full_image_s_extrapolated": seconds[name] / n * FULL_WINDOWS,
                "maps_equal_1proc_1thread": None, "max_abs_map_diff_1proc_1thread": None,
                "load_1min_at_rounds": f"{load:.2f}",
                "weights": str(net.weights_source).replace(f"{REPO_ROOT}/", ""),
            }
        )  # fmt: skip
        print(
            f"{net.model_spec.name:18s} {name:26s} {seconds[name]:8.1f} s ({n} windows, load {load})",
            flush=True,
        )
    diff = float(np.abs(maps["full_image_ray_2workers"] - maps["full_image_1proc_2threads"]).max())
    info = {"model": net.model_spec.name, "stride": stride, "windows": out[0]["windows"],
            "max_abs_map_diff_workers_vs_2threads": diff, "startup_excluded_s": startup["total_s"]}  # fmt: skip
    return out, info


def run(
    models: Sequence[str] = DEFAULT_MODELS,
    rounds: int = 2,
    chunks: int = 8,
    workers: int = 2,
    before_model: str = "efficientnet_lite0",
    windows_per_model: int | None = None,
    seed: int = 0,
    full_image: Sequence[str] = ("efficientnet_lite0", "vgg16"),
    full_image_stride: int = 2,
    scaling_rounds: int = 3,
    merge: bool = False,
    projection_only: bool = False,
    results_dir: str | Path = RESULTS_DIR,
) -> Path:
    """Measure the configurations of every model and write parallel.csv/.json (returns the JSON path).
    `merge` keeps the rows of models not run now; `projection_only` only re-measures the driver's costs and
    the projection of an existing parallel.json."""
    models = list(models)
    import torch

    from pda_repro import parallel, zoo
    from pda_repro.backends import load_backend
    from pda_repro.bench.context import random_input
    from pda_repro.bench.inputs import is_mnist_like
    from pda_repro.explain import explain
    from pda_repro.methods import windows
    from pda_repro.methods.chunks import ChunkState
    from pda_repro.sampling import PatchGaussian

    photo_models = [m for m in zoo.names() if not is_mnist_like(zoo.get(m))]
    unknown = [m for m in models if m not in photo_models]
    if unknown:  # the sampler is fitted on the photos' l×l patches: a 28×28 digit net has too few
        raise ValueError(
            f"no parallel benchmark for model(s) {unknown}; choose from {', '.join(photo_models)}"
        )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out_dir = Path(results_dir) / env_name("cpu")
    if projection_only:
        import json

        meta = json.loads((out_dir / "parallel.json").read_text())
        meta["driver"] = driver_costs()
        meta["projection"] = projection(meta)
        atomic_write_json(out_dir / "parallel.json", meta)
        print(json.dumps(meta["projection"], indent=1))
        return out_dir / "parallel.json"
    rng = np.random.default_rng(seed)
    rows, startup, memory, chunk_info = [], {}, {}, {}
    load_start = _load()
    scaling = machine_scaling(scaling_rounds)
    print(
        f"machine scaling (conv, vs 1 process 1 thread): {scaling['throughput_vs_1proc_1thread']}", flush=True
    )
    default_chunk_draws = windows.CHUNK_DRAWS
    full_image_info: dict = {}
    for model in models:
        net = load_backend(model, device="cpu", seed=seed)
        spec = net.model_spec
        x = random_input(net.input_shape, spec, rng)
        fit = random_input((3, *net.input_shape), spec, rng)
        gauss = PatchGaussian.fit(fit, 10, 18, n_patches=2000, rng=np.random.default_rng(seed))
        probs, _ = net.forward(x[None])
        top = int(np.argmax(probs[0]))
        n_windows = windows_per_model or WINDOWS.get(model, 128)
        chunk_windows = max(1, n_windows // chunks)
        windows.CHUNK_DRAWS = chunk_windows  # efficient PDA draws 1 patch per window
        base = dict(method="epda", window=10, outer=18, stride=1, sampler=gauss, classes=[top],
                    window_subset=n_windows, progress=False)  # fmt: skip

        # Ray start-up: embedded ray.init, then the actors (net built in each)
        parallel.shutdown()
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        parallel.ray_session(None, workers)
        t_init = time.perf_counter() - t0
        executor = parallel.RayExecutor(workers=workers)
        t1 = time.perf_counter()
        executor._pool(net)
        t_actors = time.perf_counter() - t1
        startup[model] = {"ray_init_s": t_init, "actors_ready_s": t_actors, "total_s": t_init + t_actors}
        memory[model] = {
            "worker_rss_bytes": executor.worker_memory(),
            "ray_system_rss_bytes": _ray_system_rss(),
            "object_store_bytes_for_the_net": len(pickle.dumps(parallel.net_recipe(net), protocol=5)),
        }

        configs = {
            "1proc_2threads": dict(threads=2, workers=1, inference="incremental"),
            "1proc_1thread": dict(threads=1, workers=1, inference="incremental"),
            "ray_2workers": dict(threads=1, workers=executor, inference="incremental"),
        }
        if model == before_model:
            configs["before"] = dict(threads=2, workers=1, inference="full")
        # warm-up of the in-process path (first-call dispatch, allocations)
        explain(net, x, **{**base, "window_subset": 4})
        seconds: dict[str, list[float]] = {c: [] for c in configs}
        loads: dict[str, list[float]] = {c: [] for c in configs}
        results: dict[str, object] = {}
        for _ in range(rounds):
            for name, cfg in configs.items():
                torch.set_num_threads(cfg["threads"])
                loads[name].append(_load())
                t0 = time.perf_counter()
                res = explain(net, x, workers=cfg["workers"], inference=cfg["inference"], **base)
                seconds[name].append(time.perf_counter() - t0)
                results[name] = res
        ray_res = results["ray_2workers"]
        worker_seconds = ray_res.timings["forward"] + ray_res.timings["sampling"]
        n_chunks = -(-n_windows // chunk_windows)
        state = ChunkState(0, chunk_windows, np.zeros((chunk_windows, 1)))
        chunk_info[model] = {
            "chunks": n_chunks,
            "chunk_windows": chunk_windows,
            "compute_s_per_chunk": worker_seconds / n_chunks,
            "compute_s_per_window": worker_seconds / n_windows,
            "bytes_back_per_chunk_1_class": len(pickle.dumps(state, protocol=5)),
            "bytes_back_per_window_per_class": 8,
            # sent once per image to each worker: the image and the window corners; the sampler goes
            # once per worker and sampler content (parallel.actors._Pool.share)
            "bytes_task_per_image": len(pickle.dumps(x, protocol=5)) + 16 * FULL_WINDOWS,
            "bytes_sampler_once_per_worker": len(pickle.dumps(gauss, protocol=5)),
        }
        ref = statistics.median(seconds["1proc_2threads"])
        one = results["1proc_1thread"]
        for name, cfg in configs.items():
            med = statistics.median(seconds[name])
            res = results[name]
            rows.append(
                {
                    "model": model,
                    "config": name,
                    "method": "epda",
                    "k": 10,
                    "l": 18,
                    "S": 1,
                    "stride": 1,
                    "batch": res.params["batch"],
                    "backend": res.params["backend"],
                    "inference": res.params["inference"],
                    "executor": res.params["executor"],
                    "workers": res.params["workers"],
                    "threads_per_process": cfg["threads"],
                    "device": "cpu",
                    "windows": n_windows,
                    "chunk_windows": chunk_windows,
                    "rounds": rounds,
                    "seconds_median": med,
                    "seconds_rounds": " ".join(f"{s:.2f}" for s in seconds[name]),
                    "windows_per_s": n_windows / med,
                    "throughput_vs_1proc_2threads": ref / med,
                    "full_image_s_extrapolated": med / n_windows * FULL_WINDOWS
                    + (startup[model]["total_s"] if name == "ray_2workers" else 0.0),
                    "maps_equal_1proc_1thread": bool(np.array_equal(res.maps, one.maps)),
                    "max_abs_map_diff_1proc_1thread": float(np.abs(res.maps - one.maps).max()),
                    "load_1min_at_rounds": " ".join(f"{v:.2f}" for v in loads[name]),
                    "weights": str(net.weights_source).replace(f"{REPO_ROOT}/", ""),
                }
            )
            print(
                f"{model:18s} {name:15s} {med:8.2f} s ({n_windows / med:6.2f} windows/s, "
                f"{ref / med:.2f}× 1 process/2 threads; load {loads[name]})",
                flush=True,
            )
        if model in full_image:
            windows.CHUNK_DRAWS = default_chunk_draws
            full_rows, full_image_info[model] = full_image_rows(
                net, x, gauss, top, full_image_stride, executor, startup[model]
            )
            rows += full_rows
        parallel.shutdown()
    ratios = {r["model"]: r["throughput_vs_1proc_2threads"] for r in rows if r["config"] == "ray_2workers"}
    speedup = statistics.median(ratios.values()) if ratios else 1.0
    by = {(r["model"], r["config"]): r["seconds_median"] for r in rows}
    ratios_1 = [by[(m, "1proc_1thread")] / by[(m, "ray_2workers")] for m in models]
    speedup_1 = statistics.median(ratios_1) if ratios_1 else 1.0
    first = startup[models[0]]["total_s"] if models else 0.0
    previous: dict = {}
    if merge and (out_dir / "parallel.csv").is_file():
        import json

        import pandas as pd

        kept = pd.read_csv(out_dir / "parallel.csv")
        rows = kept[~kept["model"].isin(models)].to_dict("records") + rows
        previous = json.loads((out_dir / "parallel.json").read_text())
        for name, table in (("startup", startup), ("memory", memory), ("chunks", chunk_info),
                            ("full_image", full_image_info)):  # fmt: skip
            table.update(
                {m: v for m, v in previous.get(name, {}).items() if m not in models and m not in table}
            )
    atomic_write_csv(out_dir / "parallel.csv", rows)
    meta = {
        "what": "window-loop throughput: Ray workers vs one process; Ray start-up and memory "
        "(pda-repro benchmark parallel)",
        "settings": {
            "models": models,
            "rounds": rounds,
            "chunks": chunks,
            "workers": workers,
            "windows": {m: windows_per_model or WINDOWS.get(m, 128) for m in models},
            "method": "epda k=10 l=18 stride 1, top class, CPU default batch",
            "seed": seed,
        },
        "startup": startup,
        "memory": memory,
        "chunks": chunk_info,
        "break_even": {
            "median_speedup_2workers": speedup,
            "startup_s": first,
            "serial_seconds_where_ray_pays": first * speedup / (speedup - 1) if speedup > 1 else None,
            "median_speedup_2workers_vs_1thread": speedup_1,
            "serial_seconds_where_ray_pays_vs_1thread": first * speedup_1 / (speedup_1 - 1)
            if speedup_1 > 1
            else None,
            "auto_threshold_s": parallel.RAY_BREAK_EVEN_S,
        },
        "load_1min_start": load_start,
        "load_1min_end": _load(),
        "machine": machine_metadata(),
    }
    if previous:
        meta["kept_from_previous_run"] = {
            "models": sorted({r["model"] for r in rows} - set(models)),
            "settings": previous.get("settings"),
            "machine_scaling": previous.get("machine_scaling"),
        }
    meta["machine_scaling"] = scaling
    meta["full_image"] = full_image_info
    meta["driver"] = driver_costs()
    meta["projection"] = projection(meta)
    atomic_write_json(out_dir / "parallel.json", meta)
    print(f"wrote {out_dir / 'parallel.csv'}", flush=True)
    return out_dir / "parallel.json"
