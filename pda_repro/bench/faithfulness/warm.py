"""Computing the faithfulness maps and evaluations from several processes: every map and metric evaluation a
plan's cells need, each task claimed with a lock file (`pda-repro benchmark warm --model M`, one per core);
the cells then only read them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pda_repro.bench.context import BenchContext
from pda_repro.bench.faithfulness import maps, plans
from pda_repro.bench.faithfulness.maps import PlanState, evaluation, plan_state
from pda_repro.bench.faithfulness.plans import CONTROLS, MapRun

__all__ = ["warm", "warm_tasks"]

SECONDS_PER_WINDOW_FORWARD = (
    0.024  # only orders the work (cheap first); the measured costs are in the maps' meta
)
CHEAP_TASK = (
    10.0  # tasks estimated below this many seconds (maps read or made by one pass, their metrics) go first
)


def _map_cost(st: PlanState, run: MapRun, i: int) -> float:
    """A rough CPU-seconds figure for run's map on image i (0 when it is read, not computed)."""
    name, x = st.images[i]
    if run.method in CONTROLS or (run.reuse is not None and st._reuse_path(run, name).is_file()):
        return 0.0
    if st.map_path(run, name, st.classes[i]).is_file():
        return 0.0  # made before (by this plan or another process)
    if run.stride is None or run.method == "simplified":
        return 0.5
    from pda_repro.grid import WindowGrid

    n = WindowGrid(x.shape[1], x.shape[2], st.plan.window, run.stride).n_windows
    return n * (st.plan.samples if run.method in ("pda", "epda_sampled") else 1) * SECONDS_PER_WINDOW_FORWARD


def warm_tasks(st: PlanState) -> list[tuple[float, str, str, int]]:
    """Every map and every metric evaluation the three cells need: the cheap ones (< CHEAP_TASK), then those of
    plan.warm_first in its order, then the others cheapest first: (cost, kind, run, image); an evaluation comes
    after its map."""
    plan, tasks = st.plan, {}
    needed = {(k, i) for _, a, b in plan.pairs for k in (a, b) for i in st.wanted(plan.run(k))}
    needed |= {(k, i) for k, n in plan.randomise for i in st.wanted(plan.run(k))[:n]}
    for key in plan.evaluate:
        for i in st.wanted(plan.run(key)):
            needed.add((key, i))
            cost = _map_cost(st, plan.run(key), i)
            tasks[("eval", key, i)] = cost + 5.0
    for key, i in needed:
        tasks[("map", key, i)] = _map_cost(st, plan.run(key), i)

    def rank(key: str, i: int, cost: float) -> int:
        if cost < CHEAP_TASK:
            return -1
        for r, (k, n) in enumerate(plan.warm_first):
            if k == key and (n is None or i < n):
                return r
        return len(plan.warm_first)

    order = sorted((rank(key, i, c), c, kind, key, i) for (kind, key, i), c in tasks.items())
    return [(c, kind, key, i) for _, c, kind, key, i in order]


def _claim(lock: Path) -> bool:
    """Create `lock` holding our pid; a lock whose process is gone is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
                return False
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def warm(
    ctx: BenchContext,
    model: str,
    backend: str = "torch",
    say: Callable[[str], None] = print,
    stop_after: float | None = None,
) -> int:
    """Compute every map and metric evaluation of `model`'s plan ahead of its cells, claiming each task with a
    lock file so that several processes (one thread each) share the work; a killed process's map resumes
    from its checkpoint. No new task starts `stop_after` seconds (wall clock) after the call. Returns the
    number of tasks this process ran. The cells then read the maps and evaluations."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    plan = plans.plan_for(model, ctx.settings.profile)
    if plan is None:
        raise ValueError(f"no faithfulness plan for {model!r}")
    st = plan_state(ctx, plan, backend)
    locks = maps.faithfulness_cache() / plan.model / "locks"
    ran, pending = 0, warm_tasks(st)
    while pending:
        left = []
        for n, task in enumerate(pending):
            if deadline is not None and time.monotonic() >= deadline:
                say(f"stopped after {stop_after:g} s: {len(pending) - n + len(left)} tasks left")
                return ran
            cost, kind, key, i = task
            run, (name, _) = plan.run(key), st.images[i]
            if (
                kind == "eval"
                and run.method not in CONTROLS
                and not (
                    (run.reuse is not None and st._reuse_path(run, name).is_file())
                    or st.map_path(run, name, st.classes[i]).is_file()
                )
            ):
                left.append(task)  # its map is not there yet
                continue
            lock = locks / f"{kind}-{key}-{name}.lock"
            if not _claim(lock):
                left.append(task)
                continue
            if kind == "map" and cost > 0 and st.map_path(run, name, st.classes[i]).is_file():
                lock.unlink(missing_ok=True)  # another process made it meanwhile: the cells read it
                continue
            try:
                t0 = time.process_time()
                if kind == "map":
                    st.get(key, i)
                else:
                    evaluation(st, key, i)
                say(f"{kind} {key} {name}: {time.process_time() - t0:.1f} s CPU (estimate {cost:.0f})")
                ran += 1
            finally:
                lock.unlink(missing_ok=True)
        if len(left) == len(pending):
            time.sleep(10)  # everything left is held by another process or waits for a map
        pending = left
    return ran
