"""The settings of one `pda-repro benchmark run`: filled once by the argparse layer
(pda_repro.bench.cli_commands), read by the runner (pda_repro.bench.runner) and by every experiment through
``BenchContext.settings``; never copied field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pda_repro.bench.results import RESULTS_DIR

__all__ = ["DEVICES", "PROFILES", "RunSettings"]

DEVICES = ("cpu", "cuda")
PROFILES = ("quick", "paper")


@dataclass(frozen=True)
class RunSettings:
    """What a benchmark run measures and how.

    ``model``, ``backend`` and ``experiments`` select the cells (comma lists, see pda_repro.bench.runner);
    ``threads`` is the thread count per library (torch, numpy's and pycaffe's OpenBLAS), 0 leaving the
    libraries' defaults; ``inference`` is how Figure 12's explanations forward a window (auto |
    incremental | full); ``workers``/``cluster`` are the window methods' executor (pda_repro.parallel);
    ``command`` is the command line recorded in every cell's metadata."""

    model: str = "default"
    backend: str = "all"
    experiments: str = "table1,fig12,incremental,approx"
    device: str = "cpu"
    batch: int = 160
    profile: str = "quick"
    weights: str | None = None
    force: bool = False
    results_dir: str | Path = RESULTS_DIR
    seed: int = 0
    threads: int = 0
    inference: str = "auto"
    workers: str = "1"
    cluster: str | None = None
    show_progress: bool = True
    show_inner_progress: bool = False
    command: str | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {self.batch!r}")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights file {self.weights!r} does not exist")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be a whole number >= 0, got {self.threads!r}")

    @property
    def thread_limit(self) -> int | None:
        """The ``threads`` to impose, or None for the libraries' defaults."""
        return self.threads or None
