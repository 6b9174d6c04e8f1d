"""Checkpoints of the window loop, and the driver's side of one run (sums, progress, resume).

`Checkpoint` saves the finished and unfinished chunks of a run atomically (pda_repro.io) and refuses
to resume a run with other arguments; `LoopRun` is what executors report to on the driver: it places
each finished chunk's sums, drives the progress bar and callback, and saves the checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pda_repro.io import atomic_savez
from pda_repro.methods.base import ProgressCallback
from pda_repro.methods.chunks import ChunkSink, ChunkState, WindowTask


@dataclass
class CheckpointState:
    """What a checkpoint holds: finished chunks with their windows' sums, unfinished ones with the
    evaluations done and the sums so far, and the timings of the runs that wrote it."""

    finished: dict[int, np.ndarray]
    partial: dict[int, tuple[int, np.ndarray]]
    timings: dict
    evaluations: int


@dataclass
class Checkpoint:
    """Atomic save/resume of the loop's finished and unfinished chunks.

    A run with `checkpoint=path` writes {identity, finished chunk ids + their windows' sums,
    unfinished chunks (evaluations done + sums so far), evaluations done ("cursor"), timings} to
    `path` (atomically: pda_repro.io.atomic_writer) whenever a chunk finishes, and,
    for the chunk running in this process, every `every_batches` batches or `every_seconds` seconds,
    whichever comes first. A rerun whose identity (method, parameters, image, net, weights, sampler,
    classes, root seed, windows) equals the saved one resumes -- with any number of workers; any
    difference is a ValueError naming the fields. The file is removed when the run completes (unless
    `remove_when_done` is False: then the caller removes it after writing its results).
    """

    path: Path
    identity: dict
    every_batches: int = 50
    every_seconds: float = 30.0
    remove_when_done: bool = True  # False: the caller removes it once its results are safely written

    def load(self) -> CheckpointState | None:
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                saved = json.loads(str(f["identity"]))
                cursor = int(f["cursor"])
                chunks = np.array(f["chunks"], dtype=np.int64)
                sizes = np.array(f["chunk_sizes"], dtype=np.int64)
                sums = np.array(f["sums"], dtype=np.float64)
                partial = np.array(f["partial"], dtype=np.int64).reshape(-1, 3)  # chunk, done, size
                partial_sums = np.array(f["partial_sums"], dtype=np.float64)
                timings = json.loads(str(f["timings"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise ValueError(f"checkpoint {self.path} is not a readable PDA checkpoint: {exc}") from exc
        mine = json.loads(json.dumps(self.identity))  # normalise tuples -> lists like the saved copy
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {mine.get(k)!r}" for k in diff[:6])
            raise ValueError(
                f"checkpoint {self.path} was written by a run with other arguments ({details}); "
                "rerun with the same arguments to resume, or delete the file / pass another path"
            )
        if sums.shape[0] != sizes.sum() or partial_sums.shape[0] != partial[:, 2].sum():
            raise ValueError(f"checkpoint {self.path} is inconsistent (chunk sizes and sums disagree)")
        blocks = np.split(sums, np.cumsum(sizes)[:-1]) if chunks.size else []
        finished = dict(zip(chunks.tolist(), blocks, strict=True))
        parts = np.split(partial_sums, np.cumsum(partial[:, 2])[:-1]) if partial.size else []
        unfinished = {int(ci): (int(done), s) for (ci, done, _), s in zip(partial, parts, strict=True)}
        return CheckpointState(finished, unfinished, timings, cursor)

    def save(
        self,
        finished: dict[int, np.ndarray],
        partial: list[ChunkState],
        evaluations: int,
        timings: dict,
        n_classes: int,
    ) -> None:
        ids = sorted(finished)
        empty = np.zeros((0, n_classes), dtype=np.float64)
        arrays = {
            "identity": np.array(json.dumps(self.identity)),
            "cursor": np.array(evaluations, dtype=np.int64),
            "chunks": np.array(ids, dtype=np.int64),
            "chunk_sizes": np.array([finished[i].shape[0] for i in ids], dtype=np.int64),
            "sums": np.concatenate([finished[i] for i in ids]) if ids else empty,
            "partial": np.array([(s.chunk, s.done, s.sums.shape[0]) for s in partial], dtype=np.int64),
            "partial_sums": np.concatenate([s.sums for s in partial]) if partial else empty,
            "timings": np.array(json.dumps(timings)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_savez(self.path, **arrays)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class LoopRun(ChunkSink):
    """The driver's side of one run: per-window sums, progress bar, callback and checkpoint."""

    def __init__(
        self,
        task: WindowTask,
        checkpoint: Checkpoint | None,
        progress: bool,
        callback: ProgressCallback | None,
        description: str,
    ) -> None:
        self.task, self.checkpoint, self.callback = task, checkpoint, callback
        self.sums = np.zeros((task.n_windows, task.classes.size), dtype=np.float64)
        self.finished_sums: dict[int, np.ndarray] = {}
        self.partial: dict[int, ChunkState] = {}  # unfinished chunks from the checkpoint
        self.live: ChunkState | None = None  # the chunk running in this process
        self.base_timings = {"sampling": 0.0, "forward": 0.0, "other": 0.0}
        self.done_evaluations = 0
        if checkpoint is not None:
            saved = checkpoint.load()
            if saved is not None:
                self._restore(saved)
        self.resumed = self.done_evaluations
        self.forward_calls = self.images = 0
        self.sampling = self.forward = 0.0  # this run's finished chunks
        self.started = self.last_save = time.perf_counter()
        self.batches_since_save = 0
        # one bar on the driver, in windows (an evaluation is 1/S of a window), over all workers
        self.bar = tqdm(
            total=task.n_windows,
            initial=self.done_evaluations // task.evaluations_per_window,
            unit="window",
            desc=description,
            disable=not progress,
            leave=False,
            smoothing=0.1,
        )

    def _restore(self, saved: CheckpointState) -> None:
        task, path = self.task, self.checkpoint.path if self.checkpoint else None
        n_cls = task.classes.size
        for ci, sums in saved.finished.items():
            if not 0 <= ci < task.n_chunks or sums.shape != (task.chunk_size(ci), n_cls):
                raise ValueError(
                    f"checkpoint {path} holds chunk {ci} with sums {sums.shape}; this run has "
                    f"{task.n_chunks} chunks of up to ({task.chunk_windows}, {n_cls})"
                )
            self.sums[task.chunk_slice(ci)] = sums
            self.finished_sums[ci] = sums
        for ci, (done, sums) in saved.partial.items():
            if (
                not 0 <= ci < task.n_chunks
                or ci in saved.finished
                or sums.shape != (task.chunk_size(ci), n_cls)
                or not 0 <= done <= task.chunk_evaluations(ci)
            ):
                raise ValueError(
                    f"checkpoint {path} holds unfinished chunk {ci} at evaluation {done} with sums "
                    f"{sums.shape}; this run has {task.n_chunks} chunks of up to ({task.chunk_windows}, {n_cls})"
                )
            self.partial[ci] = ChunkState(ci, done, sums)
        self.done_evaluations = sum(task.chunk_evaluations(ci) for ci in self.finished_sums) + sum(
            s.done for s in self.partial.values()
        )
        self.base_timings.update({k: float(v) for k, v in saved.timings.items() if k in self.base_timings})

    def pending(self) -> list[ChunkState]:
        """The chunks still to do, in chunk order (unfinished ones continue where they stopped)."""
        return [
            self.partial.get(ci) or ChunkState.fresh(self.task, ci)
            for ci in range(self.task.n_chunks)
            if ci not in self.finished_sums
        ]

    # -- ChunkSink ---------------------------------------------------------------------------------
    def advance(self, n: int, state: ChunkState | None = None) -> None:
        self.done_evaluations += n
        self.bar.update(self.done_evaluations // self.task.evaluations_per_window - self.bar.n)
        if state is not None:
            self.live = state
            self.batches_since_save += 1
            if self.checkpoint is not None and self.done_evaluations < self.task.total_evaluations:
                now = time.perf_counter()
                if (
                    self.batches_since_save >= self.checkpoint.every_batches
                    or now - self.last_save >= self.checkpoint.every_seconds
                ):
                    self.save()
        if self.callback is not None:
            self.callback(self.done_evaluations, self.task.total_evaluations)

    def finished(self, state: ChunkState) -> None:
        if state.done != self.task.chunk_evaluations(state.chunk):  # pragma: no cover - executor bug
            raise RuntimeError(f"chunk {state.chunk} reported finished at evaluation {state.done}")
        self.sums[self.task.chunk_slice(state.chunk)] = state.sums
        self.finished_sums[state.chunk] = state.sums
        self.partial.pop(state.chunk, None)
        if self.live is not None and self.live.chunk == state.chunk:
            self.live = None
        self.forward_calls += state.forward_calls
        self.images += state.images
        self.sampling += state.sampling
        self.forward += state.forward
        if self.checkpoint is not None and (
            len(self.finished_sums) < self.task.n_chunks or not self.checkpoint.remove_when_done
        ):  # the last chunk too when the caller removes the file: then a kill before its results
            self.save()  # are written loses nothing

    # -- checkpoint --------------------------------------------------------------------------------
    def timings(self) -> dict:
        live = self.live if self.live is not None else ChunkState(-1, 0, np.zeros((0, 0)))
        sampling, forward = self.sampling + live.sampling, self.forward + live.forward
        elapsed = time.perf_counter() - self.started
        return {
            "sampling": self.base_timings["sampling"] + sampling,
            "forward": self.base_timings["forward"] + forward,
            "other": self.base_timings["other"] + max(0.0, elapsed - sampling - forward),
        }

    def save(self) -> None:
        partial = dict(self.partial)
        if self.live is not None and not self.live.committing and self.live.done > 0:
            partial[self.live.chunk] = self.live
        self.checkpoint.save(
            self.finished_sums,
            [partial[ci] for ci in sorted(partial)],
            self.done_evaluations,
            self.timings(),
            self.task.classes.size,
        )
        self.last_save, self.batches_since_save = time.perf_counter(), 0

    def interrupted(self) -> None:
        """Ctrl-C: keep what is done. If the interrupt hit the few statements between a batch's
        accumulation and its count, that chunk's progress is left at the last periodic checkpoint."""
        if self.checkpoint is None or self.done_evaluations <= self.resumed:
            return
        if self.live is not None and self.live.committing:
            self.live = None
        self.save()
