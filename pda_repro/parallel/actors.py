"""Ray for the window loop: the Ray runtime (embedded, or joined on a cluster), the net recipe, the actors and
`RayExecutor`, which spreads one image's chunks over them (pda_repro.parallel describes the whole).

Each worker is an actor that builds the net (backend, prototxt, weights, batch, device) once, with its
torch and BLAS pools at one thread; it receives (image task, chunk state) and returns the chunk's
per-window probability sums. The driver places them by chunk id, checkpoints each finished chunk as it
arrives, shows one progress bar over all workers (polled from the actors), retries the chunks of a
worker that died on the others (Ray restarts the actor), and on Ctrl-C stops the workers and keeps the
checkpoint. An unreachable cluster address is a `ClusterError` (a ValueError naming the address)
within seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
import uuid
from collections import deque
from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.fingerprint import net_fingerprint
from pda_repro.methods.chunks import ChunkExecutor, ChunkSink, ChunkState, WindowTask, run_chunk

CONNECT_TIMEOUT_S = 10.0  # a cluster address that does not answer TCP within this is unreachable
MAX_CHUNK_RETRIES = 3  # a chunk whose worker died this many times stops the run
SHARED_OBJECTS = 2  # samplers a pool keeps in the object store (the oldest is released)
POLL_ACTORS = 16  # progress questions per poll (round robin): the driver's polling stays bounded
WORKER_RECOVERY_S = 120.0  # a failed worker not back (restarted, net built) within this is dropped


class ClusterError(ValueError):
    """A --cluster address that cannot be reached or joined."""


def local_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_workers(workers: object) -> int | str | ChunkExecutor:
    """workers: an integer >= 1, "auto" or a ChunkExecutor, else ValueError naming the value."""
    if isinstance(workers, ChunkExecutor):
        return workers
    if isinstance(workers, str) and workers == "auto":
        return "auto"
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1 or 'auto', got {workers!r}")
    return int(workers)


def check_cluster(cluster: object) -> str | None:
    if cluster is None:
        return None
    if not isinstance(cluster, str) or not cluster.strip():
        raise ValueError(f"cluster must be a Ray address such as 'host:6379' or 'auto', got {cluster!r}")
    return cluster.strip()


_SESSION: dict[str, Any] = {"target": None, "embedded": False}


def _ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from our runs
    import ray  # noqa: PLC0415 - heavy; only runs that use Ray import it

    return ray


def _split_address(address: str) -> tuple[str, int]:
    text = address.removeprefix("ray://")
    default_port = 10001 if address.startswith("ray://") else 6379
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(default_port))
    host = host.strip("[]") or "127.0.0.1"
    try:
        return host, int(port)
    except ValueError:
        raise ClusterError(f"cluster address {address!r} is not host:port") from None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """ClusterError unless something listens at the address's host:port (quick, before ray.init)."""
    if address == "auto":
        return
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}") from None


def ray_session(cluster: str | None, local_workers: int) -> Any:
    """The `ray` module, initialised: embedded with `local_workers` CPUs, or joined to `cluster`."""
    target = cluster or f"local:{local_workers}"
    if cluster is not None and cluster != "auto" and _split_address(cluster)[0] in ("127.0.0.1", "localhost"):
        # a cluster on this machine's loopback: Ray would rewrite 127.0.0.1 to the node's network
        # address, where a loopback-bound GCS does not listen (read when ray is first imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        if _SESSION["target"] == target or (_SESSION["target"] is None and cluster is None):
            return ray
        shutdown()
    if cluster is not None:
        check_reachable(cluster)
        try:
            ray.init(address=cluster, log_to_driver=False, include_dashboard=False)
        except Exception as exc:  # noqa: BLE001 - every way of failing to join is the same one line
            raise ClusterError(f"cannot join the Ray cluster at {cluster!r}: {_one_line(exc)}") from None
        _SESSION.update(target=target, embedded=False)
    else:
        # Ray runs workers at nice 15 (so that they never starve a busy driver); ours waits, and on a
        # shared machine nice-15 workers lose their cores to every other job: same niceness as us
        os.environ.setdefault("RAY_worker_niceness", str(os.getpriority(os.PRIO_PROCESS, 0)))
        ray.init(
            num_cpus=local_workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level="ERROR",
        )
        _SESSION.update(target=target, embedded=True)
    return ray


def shutdown() -> None:
    """Stop the actors and leave (or, when embedded, stop) Ray."""
    for pool in list(_POOLS.values()):
        pool.kill()
    _POOLS.clear()
    if "ray" in sys.modules:
        ray = _ray()
        if ray.is_initialized():
            ray.shutdown()
    _SESSION.update(target=None, embedded=False)


atexit.register(shutdown)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def net_recipe(net: Backend) -> dict:
    """What a worker needs to build the same net: backend, prototxt, weights, batch, device; nets the
    backend registry cannot rebuild travel pickled."""
    from pda_repro.backends import BACKENDS  # noqa: PLC0415

    device = "cuda" if str(net.device).startswith("cuda") else str(net.device)  # Ray picks the GPU
    rebuildable = net.name in BACKENDS and type(net) is BACKENDS[net.name]()
    if not rebuildable:
        return {"kind": "pickled", "net": net}
    spec = net.model_spec
    return {
        "kind": "backend",
        "backend": net.name,
        "net_param": net.net_param.SerializeToString(),
        "device": device,
        "batch": int(net.batch),
        "batch_given": bool(getattr(net, "batch_given", True)),  # decides the incremental split
        "weights": net.get_weights(),
        "model": getattr(spec, "name", None),
    }


def build_net(recipe: dict) -> Backend:
    if recipe["kind"] == "pickled":
        return recipe["net"]
    from pda_repro import proto, zoo  # noqa: PLC0415
    from pda_repro.backends import BACKENDS  # noqa: PLC0415

    net_param = proto.caffe_pb2().NetParameter.FromString(recipe["net_param"])
    net = BACKENDS[recipe["backend"]]()(
        net_param, device=recipe["device"], batch=recipe["batch"], weights=recipe["weights"]
    )
    net.batch_given = recipe["batch_given"]
    if recipe.get("model") in zoo.names():
        net.model_spec = zoo.get(recipe["model"])
    return net


def limit_threads(threads: int) -> None:
    """torch's and the BLAS libraries' thread pools at `threads` (the worker's share of a machine)."""
    import torch  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op use
        torch.set_num_interop_threads(threads)
    threadpool_limits(threads)


class ChunkWorker:
    """A Ray actor: one net, built once; chunks of the current task, one at a time."""

    def __init__(self, threads: int = 1, niceness: int | None = None) -> None:
        limit_threads(threads)
        if niceness is not None and os.getpriority(os.PRIO_PROCESS, 0) > niceness:
            with contextlib.suppress(OSError):  # lowering needs privileges; then Ray's niceness stays
                os.setpriority(os.PRIO_PROCESS, 0, niceness)  # the driver's (a cluster's default is 15)
        self.net: Backend | None = None  # built by setup(), or by the first run() after a restart
        self.task_id: str | None = None
        self.task: WindowTask | None = None
        self.state: ChunkState | None = None
        self.shared_key: str | None = None  # the shared object (sampler, options) fetched last
        self.shared_value: Any = None
        self.image_progress: tuple[int, int, int] | None = None  # (-1 - image, done, total) of explain()

    def setup(self, recipe_ref: list) -> int:
        """Build the net (once); returns the process id."""
        import ray  # noqa: PLC0415

        if self.net is None:
            self.net = build_net(ray.get(recipe_ref[0]))
        return os.getpid()

    def pid(self) -> int:
        return os.getpid()

    def memory(self) -> int:
        """Resident bytes of this worker process."""
        import psutil  # noqa: PLC0415

        return int(psutil.Process().memory_info().rss)

    def run(
        self,
        recipe_ref: list,
        task_id: str,
        task_ref: list,
        shared_key: str,
        shared_ref: list,
        state: ChunkState,
        inference: str,
    ) -> ChunkState:
        """One chunk of the task `task_id`; the task travels without its imputation (the sampler,
        tens of MiB), which the worker fetches once per content key (`_Pool.share`)."""
        import ray  # noqa: PLC0415

        self.setup(recipe_ref)
        if task_id != self.task_id:
            imputation = self._shared(shared_key, shared_ref)
            self.task = dataclasses.replace(ray.get(task_ref[0]), imputation=imputation)
            self.task_id = task_id
        self.net.inference = inference
        state.sums = np.array(state.sums, dtype=np.float64)  # Ray hands arguments over read-only
        self.state = state
        try:
            return run_chunk(self.net, self.task, state)
        finally:
            self.state = None

    def _shared(self, key: str, ref: list) -> Any:
        """The object put once per pool under `key` (the last one fetched stays here)."""
        import ray  # noqa: PLC0415

        if key != self.shared_key:
            self.shared_value, self.shared_key = ray.get(ref[0]), key
        return self.shared_value

    def progress(self) -> tuple[int, int] | None:
        """(chunk, evaluations done) of the chunk running now, or (-1 - image, done) of a whole image."""
        state = self.state
        if state is None:
            return self.image_progress
        return (state.chunk, state.done)

    def explain(
        self, recipe_ref: list, shared_key: str, shared_ref: list, job: int, image: np.ndarray, options: dict
    ) -> tuple[Any, int]:
        """One whole image in this process on one thread (the unit of `explain_each`): explain() with
        the shared options (sampler, method settings; fetched once per key) updated by the image's own
        (classes, seed, checkpoint). Returns (result, evaluations in all)."""
        from pda_repro.explain import explain  # noqa: PLC0415

        self.setup(recipe_ref)
        total = [0]

        def report(done: int, all_: int) -> None:
            total[0] = all_
            self.image_progress = (-1 - job, done, all_)

        self.image_progress = (-1 - job, 0, 0)
        try:
            kwargs = {**self._shared(shared_key, shared_ref), **options}
            result = explain(self.net, image, **kwargs, workers=1, progress=False, callback=report)
        finally:
            self.image_progress = None
        return result, total[0]


class _Pool:
    """Actors holding one net."""

    def __init__(self, ray: Any, net: Backend, workers: int, device: str, threads: int) -> None:
        self.ray = ray
        options: dict[str, Any] = {
            "num_cpus": threads,
            "max_restarts": -1,  # a killed worker comes back (constructor re-run) ...
            "max_task_retries": 0,  # ... and the driver, not Ray, re-queues its chunk
            "max_concurrency": 2,  # progress() answers while run() works
        }
        if str(device).startswith("cuda"):
            options["num_gpus"] = 1
        # the recipe travels with every call (a reference; fetched only by a worker without a net):
        # a restarted actor rebuilds its net from it, and no constructor argument lives in the store
        self.recipe_ref = ray.put(net_recipe(net))
        actor = ray.remote(ChunkWorker)
        self.started = time.perf_counter()
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        self.actors = [actor.options(**options).remote(threads, niceness) for _ in range(workers)]
        self.pids = ray.get([a.setup.remote([self.recipe_ref]) for a in self.actors])  # nets built
        self.ready_seconds = time.perf_counter() - self.started
        self.shared: dict[str, Any] = {}  # content key -> object reference (put once per pool)
        self.shared_bytes = 0  # what share() put into the object store

    def share(self, key: str, value: Any) -> Any:
        """A reference to `value`, put into Ray's object store once per content key: every task and
        image of this pool that uses the same sampler sends it once, and each worker fetches it once."""
        ref = self.shared.get(key)
        if ref is None:
            while len(self.shared) >= SHARED_OBJECTS:
                self.shared.pop(next(iter(self.shared)))
            ref = self.shared[key] = self.ray.put(value)
            self.shared_bytes += _nbytes(value)
        return ref

    def kill(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
        self.actors = []


_POOLS: dict[tuple, _Pool] = {}


def _retryable_errors(ray: Any) -> tuple[type[BaseException], ...]:
    names = ("RayActorError", "ActorUnavailableError", "WorkerCrashedError", "ObjectLostError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


class RayExecutor(ChunkExecutor):
    """Chunks spread over Ray actors: `workers` of them (None: every CPU of the cluster, or its GPUs
    with device cuda) on embedded Ray, or on the cluster at `cluster`."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        cluster: str | None = None,
        device: str = "cpu",
        threads: int = 1,
        poll_seconds: float = 0.5,
    ) -> None:
        self.cluster = check_cluster(cluster)
        self.requested = None if workers is None else check_workers(workers)
        self.device = str(device)
        self.threads = int(threads)
        self.poll_seconds = float(poll_seconds)
        self.workers = int(self.requested) if isinstance(self.requested, int) else local_cores()
        self.pool: _Pool | None = None
        self.startup_seconds = 0.0  # this executor's Ray start + actor start (0 when reused)
        self.retried = 0  # chunks re-run because their worker died
        self._poll_turn = 0  # which slice of the busy workers the next progress poll asks

    def connect(self) -> Any:
        """Start or join Ray now (a bad cluster address fails here, before any work)."""
        t0 = time.perf_counter()
        ray = ray_session(self.cluster, self.workers)
        if self.cluster is not None and not isinstance(self.requested, int):
            resources = ray.cluster_resources()
            key = "GPU" if self.device.startswith("cuda") else "CPU"
            self.workers = max(1, int(resources.get(key, 1) // (1 if key == "GPU" else self.threads)))
        self.startup_seconds += time.perf_counter() - t0
        return ray

    def _pool(self, net: Backend) -> _Pool:
        ray = self.connect()
        key = (_SESSION["target"], net_fingerprint(net)["weights"], net.net_param.SerializeToString(),
               net.name, int(net.batch), self.device, self.workers, self.threads)  # fmt: skip
        pool = _POOLS.get(key)
        if pool is None or not pool.actors:
            for old in _POOLS.values():  # one net's actors at a time: bounded memory
                old.kill()
            _POOLS.clear()
            t0 = time.perf_counter()
            pool = _POOLS[key] = _Pool(ray, net, self.workers, self.device, self.threads)
            self.startup_seconds += time.perf_counter() - t0
        self.pool = pool
        return pool

    def worker_pids(self) -> list[int]:
        """Process ids of the workers (after a restart: the restarted ones)."""
        if self.pool is None:
            return []
        ray = self.pool.ray
        return ray.get([a.pid.remote() for a in self.pool.actors], timeout=60)

    def worker_memory(self) -> list[int]:
        if self.pool is None:
            return []
        return self.pool.ray.get([a.memory.remote() for a in self.pool.actors], timeout=60)

    def run(self, net: Backend, task: WindowTask, states: list[ChunkState], sink: ChunkSink) -> None:
        if not states:
            return
        pool = self._pool(net)
        ray = pool.ray
        retryable = _retryable_errors(ray)
        shared_key = "imputation:" + json.dumps(task.imputation.fingerprint(), sort_keys=True)
        shared_ref = pool.share(shared_key, task.imputation)
        task_id, task_ref = uuid.uuid4().hex, ray.put(dataclasses.replace(task, imputation=None))
        inference = net.inference
        queue = deque(states)
        reported = {s.chunk: s.done for s in states}  # evaluations of each chunk shown on the bar
        inflight: dict[Any, tuple[int, ChunkState]] = {}  # run() calls
        probes: dict[Any, int] = {}  # setup() calls to workers coming back from a failure
        idle = list(range(len(pool.actors)))
        down: dict[int, float] = {}  # worker -> when it failed
        retries: dict[int, int] = {}
        last_poll = time.perf_counter()
        try:
            while queue or inflight:
                while queue and idle:
                    w, state = idle.pop(0), queue.popleft()
                    ref = pool.actors[w].run.remote(
                        [pool.recipe_ref], task_id, [task_ref], shared_key, [shared_ref], state, inference
                    )
                    inflight[ref] = (w, state)
                for w, since in list(down.items()):  # ask restarted workers whether they are back
                    if w not in probes.values():
                        if time.perf_counter() - since > WORKER_RECOVERY_S:
                            del down[w]  # gone for good (e.g. its node left the cluster)
                        else:
                            probes[pool.actors[w].setup.remote([pool.recipe_ref])] = w
                if not inflight and not probes:
                    raise RuntimeError(
                        "every Ray worker failed and none came back; no worker is left to run chunks"
                    )
                ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    if ref in probes:
                        w = probes.pop(ref)
                        try:
                            ray.get(ref)
                        except retryable:
                            time.sleep(min(self.poll_seconds, 0.2))  # still restarting: ask again
                            continue
                        del down[w]
                        idle.append(w)
                        continue
                    w, state = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except retryable as exc:
                        # the worker died: undo its progress on the bar and give the chunk to another
                        sink.advance(state.done - reported[state.chunk])
                        reported[state.chunk] = state.done
                        retries[state.chunk] = retries.get(state.chunk, 0) + 1
                        if retries[state.chunk] > MAX_CHUNK_RETRIES:
                            raise RuntimeError(
                                f"chunk {state.chunk}: {MAX_CHUNK_RETRIES + 1} workers died running it "
                                f"(last: {_one_line(exc)})"
                            ) from None
                        queue.appendleft(state)
                        self.retried += 1
                        down[w] = time.perf_counter()  # Ray restarts the actor; it gets work once back
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        raise exc.as_instanceof_cause() from None
                    sink.advance(result.done - reported[result.chunk])
                    reported[result.chunk] = result.done
                    sink.finished(result)
                    idle.append(w)
                now = time.perf_counter()
                if inflight and now - last_poll >= self.poll_seconds:
                    last_poll = now
                    self._poll_progress(ray, pool, inflight, reported, sink)
        except BaseException:
            # Ctrl-C or a failure: stop the workers now; what is finished is in the sink's checkpoint
            pool.kill()
            _POOLS.clear()
            if _SESSION["embedded"]:
                shutdown()
            raise

    def _poll_progress(self, ray: Any, pool: _Pool, inflight: dict, reported: dict, sink: ChunkSink) -> None:
        busy = sorted({w for w, _ in inflight.values()})
        self._poll_turn += 1
        if len(busy) > POLL_ACTORS:  # a different slice each time; finished chunks report anyway
            start = (self._poll_turn * POLL_ACTORS) % len(busy)
            busy = (busy + busy)[start : start + POLL_ACTORS]
        refs = [pool.actors[w].progress.remote() for w in busy]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.poll_seconds)
        for ref in ready:
            try:
                answer = ray.get(ref)
            except Exception:  # noqa: BLE001 - a dying worker answers nothing; its run() will fail
                continue
            if answer is not None and len(answer) == 2:
                chunk, done = answer
                if chunk in reported and done > reported[chunk]:
                    sink.advance(done - reported[chunk])
                    reported[chunk] = done


def _wait_until_back(ray: Any, pool: _Pool, w: int, retryable: tuple) -> bool:
    """Wait until Ray has restarted worker w and its net is built again (False: not within
    WORKER_RECOVERY_S)."""
    deadline = time.monotonic() + WORKER_RECOVERY_S
    while time.monotonic() < deadline:
        try:
            ray.get(pool.actors[w].setup.remote([pool.recipe_ref]), timeout=WORKER_RECOVERY_S)
            return True
        except retryable:
            time.sleep(0.2)
    return False


def _nbytes(value: Any) -> int:
    """Bytes of the arrays in `value` (an object's attributes, a dict's values), roughly what Ray sends."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if hasattr(value, "__dict__"):
        return sum(_nbytes(v) for v in vars(value).values())
    return 0
