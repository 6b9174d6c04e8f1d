"""Executors of the window loop: in-process, Ray actors (the local cores or a cluster), and auto.

The one work unit is a chunk of one image's windows (`pda_repro.methods.chunks.run_chunk`): its
noise comes from its own generator and its batches start at the chunk's first evaluation, so any
executor forwards exactly the batches of the serial run and the maps are bitwise the same.

    InProcessExecutor()                 the chunks one after another in this process (the serial case)
    RayExecutor(workers=2)              Ray started embedded on this machine, 2 single-threaded actors
    RayExecutor(cluster="host:6379")    a running Ray cluster (`ray start --head`), joined by address
    AutoExecutor()                      in-process for short runs; all local cores when the run is
                                        long enough to pay for starting Ray (RAY_BREAK_EVEN_S)
    make_executor(workers, cluster, device)   what explain(workers=, cluster=) and the CLI use

Each Ray worker is an actor that builds the net (backend, prototxt, weights, batch, device) once,
with its torch and BLAS pools at one thread; it receives (image task, chunk state) and returns the
chunk's per-window probability sums. The driver places them by chunk id, checkpoints each finished
chunk as it arrives (`Checkpoint`), shows one progress bar over all workers (polled from the actors),
retries the chunks of a worker that died on the others (Ray restarts the actor), and on Ctrl-C stops
the workers and keeps the checkpoint. An unreachable cluster address is a `ClusterError` (a
ValueError naming the address) within seconds.
"""

from __future__ import annotations

import time
from typing import Any

from pda_repro.backends.base import Backend
from pda_repro.methods.chunks import ChunkExecutor, ChunkSink, ChunkState, WindowTask, run_chunk
from pda_repro.parallel.actors import (
    POLL_ACTORS,
    ClusterError,
    RayExecutor,
    build_net,
    check_cluster,
    check_reachable,
    check_workers,
    local_cores,
    net_recipe,
    ray_session,
    shutdown,
)
from pda_repro.parallel.images import explain_each, explain_many

__all__ = [
    "DEFAULTS",
    "POLL_ACTORS",
    "RAY_BREAK_EVEN_S",
    "AutoExecutor",
    "ClusterError",
    "InProcessExecutor",
    "RayExecutor",
    "build_net",
    "check_cluster",
    "check_reachable",
    "check_workers",
    "explain_each",
    "explain_many",
    "make_executor",
    "net_recipe",
    "ray_session",
    "set_defaults",
    "shutdown",
]

# Seconds of serial work below which `auto` stays in-process: a parallel run with speed-up s and
# start-up t wins once T/s + t < T. `make bench-parallel` measures t and s against one process with
# one and with two threads (results/<env>/parallel.json, "break_even"); the threshold sits between the
# two break-evens measured there.
RAY_BREAK_EVEN_S = 30.0
PROBE_SECONDS = 1.0  # auto: in-process work timed before deciding


# What explain(workers=None, cluster=None) uses: set by the harness (`make benchmark WORKERS= CLUSTER=`)
# and the qualitative compute (--workers/--cluster) so that their long cells take the same path.
DEFAULTS: dict[str, Any] = {"workers": 1, "cluster": None}


def set_defaults(workers: object = 1, cluster: object = None) -> None:
    """explain()'s workers/cluster when a call passes none (checked here, ValueError naming them)."""
    DEFAULTS.update(workers=check_workers(workers), cluster=check_cluster(cluster))


# --------------------------------------------------------------------------------------------------
# In-process
# --------------------------------------------------------------------------------------------------
class InProcessExecutor(ChunkExecutor):
    """The serial case: chunks in order in this process, progress after every batch."""

    name = "in-process"
    workers = 1

    def run(self, net: Backend, task: WindowTask, states: list[ChunkState], sink: ChunkSink) -> None:
        for state in states:
            run_chunk(net, task, state, on_batch=lambda s, n: sink.advance(n, s))
            sink.finished(state)


# --------------------------------------------------------------------------------------------------
# Auto: in-process unless the run is long enough for the local cores to pay for Ray
# --------------------------------------------------------------------------------------------------
class _HandOff(Exception):
    pass


class AutoExecutor(ChunkExecutor):
    """Times the first PROBE_SECONDS of the run in-process; if the remaining serial work is over
    `break_even_s` and there are at least two chunks left, the rest (the started chunk included, from
    where it stopped) goes to Ray actors on every local core; else the run stays in-process."""

    def __init__(
        self, device: str = "cpu", break_even_s: float = RAY_BREAK_EVEN_S, workers: int | None = None
    ):
        self.device = str(device)
        self.break_even_s = float(break_even_s)
        self.cores = workers or local_cores()
        self.name, self.workers = "in-process", 1
        self.estimate_s: float | None = None  # the serial estimate the decision was made on

    def run(self, net: Backend, task: WindowTask, states: list[ChunkState], sink: ChunkSink) -> None:
        self.name, self.workers = "in-process", 1
        if self.cores < 2 or len(states) < 2 or self.device.startswith("cuda"):
            InProcessExecutor().run(net, task, states, sink)
            return
        first = states[0]
        start, started = first.done, time.perf_counter()
        first_sums = first.sums.copy()  # a hand-off redoes the probed batches on a worker
        remaining = sum(task.chunk_evaluations(s.chunk) - s.done for s in states)
        decision: list[bool] = []  # [True]: hand the rest to Ray

        def probe(state: ChunkState, n: int) -> None:
            sink.advance(n, state)
            complete = state.done >= task.chunk_evaluations(state.chunk)
            if decision or (time.perf_counter() - started < PROBE_SECONDS and not complete):
                return
            per_eval = state.forward / max(1, state.done - start)
            per_eval += state.sampling / task.chunk_evaluations(state.chunk)
            self.estimate_s = per_eval * (remaining - (state.done - start))
            decision.append(self.estimate_s > self.break_even_s)
            if decision[0] and not complete:
                raise _HandOff

        rest = states[1:]
        try:
            run_chunk(net, task, first, on_batch=probe)
            sink.finished(first)
        except _HandOff:
            # the workers redo the probed batches: every batch of the map is then computed with the
            # workers' thread count, so the map equals a workers-only run bitwise
            states[0] = ChunkState(
                first.chunk,
                start,
                first_sums,
                first.forward_calls,
                first.images,
                first.sampling,
                first.forward,
            )  # the probe's work stays counted (and timed)
            sink.advance(start - first.done, states[0])
            rest = states
        if not (decision and decision[0]):
            InProcessExecutor().run(net, task, rest, sink)
            return
        ray_executor = RayExecutor(workers=self.cores, device=self.device)
        self.name, self.workers = ray_executor.name, ray_executor.workers
        ray_executor.run(net, task, rest, sink)


def make_executor(workers: object = 1, cluster: object = None, device: str = "cpu") -> ChunkExecutor:
    """The executor for explain(workers=, cluster=): 1 -> in-process; N -> N Ray actors on this
    machine; "auto" -> AutoExecutor; a cluster address -> N (or, with "auto", all of the cluster's
    CPUs / GPUs) actors there, joined now so that a bad address fails before any work."""
    if isinstance(workers, ChunkExecutor):  # an executor made by the caller (reused, inspected)
        return workers
    workers = check_workers(workers)
    cluster = check_cluster(cluster)
    if cluster is not None:
        executor = RayExecutor(workers=None if workers == "auto" else workers, cluster=cluster, device=device)
        executor.connect()
        return executor
    if workers == "auto":
        return AutoExecutor(device=device)
    if workers == 1:
        return InProcessExecutor()
    return RayExecutor(workers=workers, device=device)
