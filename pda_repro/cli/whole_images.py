"""Several images on Ray workers: each worker explains whole images on one thread while at least as many
images are left as there are workers (the maps equal the in-process run's: one thread per worker, the
same batches); results are written as they arrive."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pda_repro.cli.errors import Interrupted
from pda_repro.cli.outputs import ImageJob, RunState, plan_image, write_result
from pda_repro.methods import METHODS

if TYPE_CHECKING:
    from pda_repro.cli.explain_run import ImageRun


def image_workers(state: RunState, run: ImageRun, images_left: int) -> int:
    """Ray workers that could take whole images (0: this run explains images one after another)."""
    a = state.args
    if images_left < 2 or not METHODS[a.method].checkpointable:
        return 0
    if a.cluster is not None:
        from pda_repro.parallel import RayExecutor  # noqa: PLC0415

        executor = RayExecutor(
            workers=None if a.workers == "auto" else a.workers, cluster=a.cluster, device=a.device
        )
        executor.connect()  # auto: the cluster's CPUs (GPUs with --device cuda)
        return executor.workers
    if isinstance(a.workers, int):
        return a.workers if a.workers >= 2 else 0
    # auto: the last computed image decides (it went to Ray when it was long enough to pay for it)
    if run.executor is None or run.executor[0] != "ray":
        return 0
    return run.executor[1] if run.executor[1] >= 2 else 0


def explain_whole_images(
    state: RunState, run: ImageRun, batch: list[tuple[int, Path, str]], workers: int
) -> None:
    """Explain `batch` with each Ray worker taking whole images; results are written as they arrive."""
    from pda_repro.parallel import explain_each  # noqa: PLC0415

    a = state.args
    jobs: list[tuple[int, Path, ImageJob]] = []
    for i, path, stem in batch:
        planned: list[ImageJob] = []
        run.report(i, path, lambda p=path, s=stem, into=planned: _planned(state, p, s, into))
        if planned:
            jobs.append((i, path, planned[0]))
    if not jobs:
        return
    drop = {"progress", "workers", "cluster", "rng", "classes", "checkpoint", "keep_checkpoint"}
    first = jobs[0][2].kwargs
    shared = {k: v for k, v in first.items() if k not in drop and not k.startswith("checkpoint_")}
    per_image = []
    for _, _, job in jobs:
        own = {"classes": job.kwargs["classes"], "rng": int(a.seed)}
        if job.checkpoint is not None and a.cluster is None:  # the workers share this file system
            own.update(
                checkpoint=str(job.checkpoint.resolve()),
                keep_checkpoint=True,
                **{k: v for k, v in job.kwargs.items() if k.startswith("checkpoint_")},
            )
        per_image.append(own)
    results = explain_each(
        state.net,
        [job.img.x for _, _, job in jobs],
        shared,
        per_image,
        workers=workers,
        cluster=a.cluster,
        progress=not a.no_progress,
        description=f"{len(jobs)} images on {workers} workers",
        return_errors=True,
    )
    try:
        for k, result in results:
            i, path, job = jobs[k]
            if isinstance(result, BaseException):
                run.report(i, path, lambda exc=result: _raise(exc))
            else:
                # recorded like the chunked runs' executor/workers: whole images on `workers` actors
                result.params.update(executor="ray-images", workers=int(workers))
                run.report(i, path, lambda j=job, r=result: write_result(state, j, r))
    except KeyboardInterrupt:
        saved = state.out / ".checkpoints"
        raise Interrupted(saved if saved.is_dir() else None) from None


def _planned(state: RunState, path: Path, stem: str, into: list) -> dict[str, Any]:
    """plan_image for the whole-image phase: a job goes into `into`, an up-to-date image reports."""
    job = plan_image(state, path, stem)
    if isinstance(job, dict):
        return job
    into.append(job)
    return {"skipped": None}


def _raise(exc: BaseException) -> dict[str, Any]:
    raise exc
