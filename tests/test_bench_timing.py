"""Timing statistics, warm-up/sync, peak memory and the progress/ETA line of the benchmark runner."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest

from pda_repro.bench.timing import Progress, format_seconds, limit_threads, summarise, time_calls


def test_summarise_matches_hand_computation():
    s = summarise([4.0, 1.0, 3.0, 2.0, 10.0])
    # sorted 1 2 3 4 10: median 3; linear quartiles at positions 1 and 3 -> 2 and 4
    assert (s.median, s.q1, s.q3, s.spread) == (3.0, 2.0, 4.0, 2.0)
    assert (s.minimum, s.maximum, s.mean, s.repeats) == (1.0, 10.0, 4.0, 5)
    assert s.std == pytest.approx(np.sqrt(((np.array([4, 1, 3, 2, 10]) - 4.0) ** 2).sum() / 4))
    ms = s.as_ms()
    assert ms["median_ms"] == 3000.0 and ms["iqr_ms"] == 2000.0 and ms["repeats"] == 5


def test_summarise_rejects_bad_timings():
    with pytest.raises(ValueError, match="at least one"):
        summarise([])
    with pytest.raises(ValueError, match="finite"):
        summarise([1.0, float("nan")])


def test_time_calls_warms_up_untimed_and_times_each_call():
    ticks = itertools.count(0.0, 0.5)  # every clock read advances 0.5 s
    calls = []
    stats = time_calls(lambda: calls.append(1), repeats=5, warmup=2, clock=lambda: next(ticks))
    assert len(calls) == 7  # 2 warm-up + 5 timed
    assert stats.repeats == 5 and stats.times == (0.5,) * 5


def test_time_calls_validates():
    with pytest.raises(ValueError, match="repeats"):
        time_calls(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_calls(lambda: None, warmup=-1)


PEAK_MEMORY_PROBE = """
import json, numpy as np
from pda_repro.bench.timing import PeakMemory
with PeakMemory("cpu") as mem:
    block = np.ones(40_000_000)  # 305 MiB, touched
    del block
print(json.dumps({"before": mem.rss_before_mib, "peak": mem.peak_rss_mib, **mem.as_columns()}))
"""


def test_peak_memory_sees_a_temporary_allocation():
    # In a fresh process: inside a long pytest run the allocator may reuse pages already resident.
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_PROBE], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["peak"] - got["before"] > 250
    assert got["cuda_peak_mib"] is None and got["memory_method"]


def test_format_seconds():
    assert format_seconds(5.3) == "5.3s"
    assert format_seconds(125) == "2m05s"
    assert format_seconds(3 * 3600 + 120) == "3h02m"
    assert format_seconds(None) == "?"


def test_progress_eta_scales_estimates_by_observed_speed():
    now = [0.0]
    out = io.StringIO()
    p = Progress(total_cells=3, estimates=[10.0, 10.0, 20.0], stream=out, clock=lambda: now[0])
    assert p.eta() == 40.0
    with p.cell("first"):
        now[0] += 5.0  # twice as fast as estimated
    assert p.eta() == pytest.approx(15.0)  # (10 + 20) * 0.5
    p.skip("second")  # already in results: no time, removed from the ETA
    assert p.eta() == pytest.approx(10.0)
    text = out.getvalue()
    assert "[1/3] first" in text and "skipped" in text and "ETA" in text


def test_limit_threads_sets_torch_and_openblas():
    import torch

    before = torch.get_num_threads()
    try:
        done = limit_threads(1)
        assert torch.get_num_threads() == 1 and done["torch"] == 1
        assert any("openblas" in name for name in done), done  # numpy's OpenBLAS is loaded here
        assert all(v == 1 for name, v in done.items() if "openblas" in name), done  # read back after setting
        assert limit_threads(None) == {"requested": None, "torch": 1}  # None: leave as is
    finally:
        limit_threads(before)
