"""Timing primitives shared by the experiments: warm-up, repeated timed calls with device sync, robust
statistics (median and spread), peak memory, and a progress line with an ETA.

Peak memory on CPU is the process's resident-set high-water mark (Linux ``VmHWM``), reset before the
measured block by writing 5 to ``/proc/self/clear_refs``; where that is not possible a 5 ms polling thread
over psutil's RSS stands in (method recorded). On CUDA it is ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = [
    "PeakMemory",
    "Progress",
    "TimingStats",
    "format_seconds",
    "summarise",
    "synchronize",
    "time_calls",
]


def synchronize(device: str) -> None:
    """Wait for queued GPU work (a no-op on CPU), so a timer measures finished work."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


@dataclass(frozen=True)
class TimingStats:
    """Robust summary of repeated timings, in seconds."""

    repeats: int
    median: float
    mean: float
    minimum: float
    maximum: float
    q1: float
    q3: float
    std: float
    times: tuple[float, ...] = field(repr=False)

    @property
    def spread(self) -> float:
        """Interquartile range (q3 - q1), the spread reported beside the median."""
        return self.q3 - self.q1

    def as_ms(self) -> dict[str, float]:
        """Columns for a CSV row, in milliseconds."""
        return {
            "median_ms": self.median * 1e3,
            "iqr_ms": self.spread * 1e3,
            "min_ms": self.minimum * 1e3,
            "max_ms": self.maximum * 1e3,
            "mean_ms": self.mean * 1e3,
            "std_ms": self.std * 1e3,
            "repeats": self.repeats,
        }


def summarise(times: list[float] | tuple[float, ...]) -> TimingStats:
    """Median, quartiles (linear interpolation), extremes, mean and standard deviation of ``times``."""
    if len(times) == 0:
        raise ValueError("summarise needs at least one timing")
    arr = np.asarray(times, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"timings must be finite and >= 0, got {list(times)}")
    q1, med, q3 = np.quantile(arr, [0.25, 0.5, 0.75])
    return TimingStats(
        repeats=len(arr),
        median=float(med),
        mean=float(arr.mean()),
        minimum=float(arr.min()),
        maximum=float(arr.max()),
        q1=float(q1),
        q3=float(q3),
        std=float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        times=tuple(float(t) for t in arr),
    )


def time_calls(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> TimingStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed between device syncs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        fn()
        synchronize(device)
        times.append(clock() - start)
    return summarise(times)


# --- threads --------------------------------------------------------------------------------------------


def limit_threads(n: int | None) -> dict[str, Any]:
    """Use ``n`` threads in torch (intra-op, OpenMP/MKL) and in every BLAS loaded in this process
    (numpy's, scipy's, and the OpenBLAS pycaffe links; threadpoolctl), at run time; ``None`` or 0
    leaves the libraries' defaults. Returns what was set, for the metadata. Call again after loading
    pycaffe (its OpenBLAS is loaded then).

    Why: where other processes compete for the cores, multi-threaded pools oversubscribe them and
    timings stop meaning anything."""
    import torch
    from threadpoolctl import ThreadpoolController

    done: dict[str, Any] = {"requested": n}
    if not n:
        done["torch"] = torch.get_num_threads()
        return done
    torch.set_num_threads(int(n))
    done["torch"] = torch.get_num_threads()
    blas = ThreadpoolController().select(user_api="blas")
    blas.limit(limits=int(n))  # kept: the limiter is not used as a context
    for lib in blas.info():
        done[Path(lib["filepath"]).name] = int(lib["num_threads"])
    return done


# --- peak memory -------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager measuring the peak memory of the block it wraps.

    After exit: ``rss_before_mib``, ``peak_rss_mib`` (process high-water inside the block), ``method`` and,
    on CUDA, ``cuda_peak_mib``."""

    def __init__(self, device: str = "cpu", poll_seconds: float = 0.005) -> None:
        self.device = device
        self.poll_seconds = poll_seconds
        self.rss_before_mib: float | None = None
        self.peak_rss_mib: float | None = None
        self.cuda_peak_mib: float | None = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled = 0

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._polled = max(self._polled, self._rss())
            self._stop.wait(self.poll_seconds)

    def __enter__(self) -> PeakMemory:
        self.rss_before_mib = self._rss() / 2**20
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if _reset_hwm() and _status_kib("VmHWM") is not None:
            self.method = "VmHWM after clear_refs"
        else:
            self.method = "psutil RSS polled every 5 ms"
            self._polled = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_rss_mib = max(self._polled, self._rss()) / 2**20
        else:
            self.peak_rss_mib = (_status_kib("VmHWM") or 0) / 1024
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2**20

    def as_columns(self) -> dict[str, Any]:
        return {
            "rss_before_mib": round(self.rss_before_mib or 0.0, 1),
            "peak_rss_mib": round(self.peak_rss_mib or 0.0, 1),
            "cuda_peak_mib": None if self.cuda_peak_mib is None else round(self.cuda_peak_mib, 1),
            "memory_method": self.method,
        }


# --- progress ----------------------------------------------------------------------------------------


def format_seconds(seconds: float | None) -> str:
    """'1h02m', '3m05s', '12.3s' — short and readable."""
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Progress:
    """One line per experiment cell: which experiment, how far, and an ETA.

    The ETA is the sum of the remaining cells' estimated seconds, each estimate scaled by how the cells so
    far compared with theirs (estimates come from the cell plan; see ``bench.plan``)."""

    total_cells: int
    estimates: list[float] = field(default_factory=list)
    enabled: bool = True
    stream: TextIO = sys.stderr
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    _started: float = field(default=0.0, init=False)
    _spent: float = field(default=0.0, init=False)
    _estimated_done: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def eta(self) -> float | None:
        remaining = self.estimates[self.done :] if self.estimates else []
        if not remaining:
            if self.done == 0:
                return None
            return (self._spent / self.done) * (self.total_cells - self.done)
        scale = self._spent / self._estimated_done if self._estimated_done > 0 else 1.0
        return scale * float(sum(remaining))

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def cell(self, label: str) -> Iterator[None]:
        """Wrap one cell's work: prints its start (with ETA) and its end (with its duration)."""
        self.say(f"[{self.done + 1}/{self.total_cells}] {label} ... (ETA all: {format_seconds(self.eta())})")
        start = self.clock()
        yield
        spent = self.clock() - start
        self.finish(spent, label)

    def finish(self, spent: float, label: str, skipped: bool = False) -> None:
        if not skipped:
            self._spent += spent
            if self.estimates and self.done < len(self.estimates):
                self._estimated_done += self.estimates[self.done]
        self.done += 1
        what = (
            "skipped (already in results; --force redoes it)"
            if skipped
            else f"done in {format_seconds(spent)}"
        )
        elapsed = self.clock() - self._started
        self.say(f"    {label}: {what}; elapsed {format_seconds(elapsed)}, ETA {format_seconds(self.eta())}")

    def skip(self, label: str) -> None:
        """A cell already in results: counted, not timed, removed from the ETA."""
        if self.estimates and self.done < len(self.estimates):
            self.estimates[self.done] = 0.0
        self.finish(0.0, label, skipped=True)
