"""A benchmark run is a list of cells; each cell is measured, then written to results/ on its own.

`run_cells` skips cells already in results (unless ``force``), reports progress with an ETA, writes each
cell as it completes (so an interrupted run resumes where it stopped) and frees a model's backends once
no later cell needs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pda_repro.bench.context import BenchContext
from pda_repro.bench.timing import Progress

__all__ = ["Cell", "CellSkipped", "net_or_skip", "run_cells"]


class CellSkipped(Exception):
    """Raised by a cell's ``run`` when it cannot run in this environment (reason in the message); the
    run goes on with the next cell and reports it at the end."""


def net_or_skip(ctx: BenchContext, model: str, backend: str) -> Any:
    """ctx.backend(model, backend), or CellSkipped when that backend cannot run here (no pycaffe, or
    pycaffe built CPU_ONLY asked for cuda): the run goes on with the other cells."""
    from pda_repro.backends.base import BackendError

    try:
        return ctx.backend(model, backend)
    except (ImportError, BackendError, NotImplementedError) as exc:
        raise CellSkipped(f"{backend} backend unavailable on {ctx.settings.device}: {exc}") from exc


@dataclass
class Cell:
    """One (experiment, model, backend, device, setting) measurement."""

    experiment: str
    key: dict[str, Any]
    label: str
    estimate_seconds: float
    run: Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]]
    model: str
    description: str = ""
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class RunReport:
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def run_cells(ctx: BenchContext, cells: Sequence[Cell], show_progress: bool = True) -> RunReport:
    """Measure every cell not yet in ``ctx.store`` (all of them with ``ctx.settings.force``) and write each one."""
    report = RunReport()
    progress = Progress(
        total_cells=len(cells), estimates=[c.estimate_seconds for c in cells], enabled=show_progress
    )
    ctx.progress = progress
    start = time.monotonic()
    for i, cell in enumerate(cells):
        if not ctx.settings.force and ctx.store.has_cell(cell.experiment, cell.key):
            progress.skip(cell.label)
            report.skipped_existing.append(cell.label)
        else:
            try:
                with progress.cell(cell.label):
                    rows, extra = cell.run()
            except CellSkipped as why:
                progress.say(f"    {cell.label}: not run: {why}")
                report.not_run.append((cell.label, str(why)))
            else:
                meta = ctx.cell_meta(**extra)
                ctx.store.write_cell(cell.experiment, cell.key, rows, meta, cell.description, cell.columns)
                report.written.append(cell.label)
        later = cells[i + 1 :]
        backend = cell.key.get("backend")
        if all(c.model != cell.model for c in later):
            ctx.release(cell.model)
        elif backend is not None and all(
            c.model != cell.model or c.key.get("backend") != backend for c in later
        ):
            ctx.release(cell.model, backend)
    report.seconds = time.monotonic() - start
    return report
