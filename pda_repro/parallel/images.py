"""Whole images as the work units: `explain_each` and `explain_many` on the Ray actors of
pda_repro.parallel.actors (each image computed in-process on one thread by a worker)."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pda_repro.backends.base import Backend
from pda_repro.fingerprint import array_fingerprint, object_fingerprint
from pda_repro.parallel.actors import (
    _POOLS,
    MAX_CHUNK_RETRIES,
    POLL_ACTORS,
    RayExecutor,
    _one_line,
    _retryable_errors,
    _wait_until_back,
)


def _options_key(options: dict) -> str:
    """Content key of explain() options: the sampler by its fitted parameters, the rest by value."""

    def describe(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.ndarray):
            return array_fingerprint(value)
        if isinstance(value, list | tuple):
            return [describe(v) for v in value]
        return f"{type(value).__qualname__}:{object_fingerprint(value)}"

    return "options:" + json.dumps({k: describe(v) for k, v in sorted(options.items())}, sort_keys=True)


def explain_each(
    net: Backend,
    images: Sequence[np.ndarray],
    shared: dict[str, Any],
    per_image: Sequence[dict[str, Any]] | None = None,
    *,
    workers: int | None = None,
    cluster: str | None = None,
    progress: bool = True,
    description: str = "images",
    return_errors: bool = False,
) -> Iterator[tuple[int, Any]]:
    """Whole images as the work units: (index, explain(net, images[i], **shared, **per_image[i])) in
    the order they finish, each computed in-process on one thread by a Ray worker (None: one per local
    core, or the cluster's CPUs/GPUs), so each equals a one-thread in-process explain() of its image.

    `shared` (sampler, method settings) goes into the object store once per pool and content;
    per_image[i] holds what differs (classes, rng as an int seed, a checkpoint path the worker writes
    and resumes from, keep_checkpoint). One progress bar over all workers: evaluations done, rate, ETA.
    A worker that dies has its image rerun on another (from its checkpoint, where the worker can read
    it); Ctrl-C or an error stops the workers (the checkpoints stay). return_errors: an image whose
    explain() raised yields (index, the exception) and the others go on."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    per_image = list(per_image) if per_image is not None else [{} for _ in images]
    if len(per_image) != len(images):
        raise ValueError(f"per_image has {len(per_image)} entries for {len(images)} images")
    for options in (shared, *per_image):
        if isinstance(options.get("rng"), np.random.Generator):
            raise ValueError(
                "whole-image runs need rng as an int seed or None (a generator cannot be shared)"
            )
        if "callback" in options:
            raise ValueError("whole-image runs take no callback (progress comes from the workers)")
    executor = RayExecutor(workers=workers, cluster=cluster, device=net.device)
    pool = executor._pool(net)
    ray = pool.ray
    retryable = _retryable_errors(ray)
    shared_key = _options_key(shared)
    shared_ref = pool.share(shared_key, shared)
    queue, inflight, idle = deque(range(len(images))), {}, list(range(len(pool.actors)))
    retries: dict[int, int] = {}
    reported: dict[int, int] = {}  # image -> evaluations shown on the bar
    per_total: list[int] = []  # evaluations of one image (the images share a shape and settings)
    bar = tqdm(
        total=None, unit="eval", desc=description, disable=not progress, leave=False, dynamic_ncols=True
    )

    def show(image: int, done: int, total: int) -> None:
        if total and not per_total:
            per_total.append(total)
            bar.total = total * len(images)
            bar.refresh()
        if done > reported.get(image, 0):
            bar.update(done - reported.get(image, 0))
            reported[image] = done

    last_poll = time.perf_counter()
    try:
        while queue or inflight:
            while queue and idle:
                w, i = idle.pop(0), queue.popleft()
                ref = pool.actors[w].explain.remote(
                    [pool.recipe_ref], shared_key, [shared_ref], i, images[i], per_image[i]
                )
                inflight[ref] = (w, i)
            if not inflight:
                raise RuntimeError("every Ray worker failed and none came back; no worker is left")
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=executor.poll_seconds)
            for ref in ready:
                w, i = inflight.pop(ref)
                try:
                    result, total = ray.get(ref)
                except retryable as exc:
                    retries[i] = retries.get(i, 0) + 1
                    if retries[i] > MAX_CHUNK_RETRIES:
                        raise RuntimeError(
                            f"image {i}: {retries[i]} workers died explaining it ({_one_line(exc)})"
                        ) from None
                    bar.update(-reported.pop(i, 0))  # it starts again (from its checkpoint, if any)
                    queue.appendleft(i)
                    if not _wait_until_back(ray, pool, w, retryable):
                        continue  # gone for good: the others go on
                except ray.exceptions.RayTaskError as exc:
                    if not return_errors:
                        raise exc.as_instanceof_cause() from None
                    idle.append(w)
                    cause = getattr(exc, "cause", None)  # the exception explain() raised on the worker
                    yield i, cause if isinstance(cause, BaseException) else exc.as_instanceof_cause()
                    continue
                else:
                    show(i, total, total)
                    yield i, result
                idle.append(w)
            now = time.perf_counter()
            if inflight and progress and now - last_poll >= executor.poll_seconds:
                last_poll = now
                refs = [pool.actors[w].progress.remote() for w, _ in list(inflight.values())[:POLL_ACTORS]]
                for answer in ray.get(
                    ray.wait(refs, num_returns=len(refs), timeout=executor.poll_seconds)[0]
                ):
                    if answer is not None and len(answer) == 3:
                        show(-1 - answer[0], answer[1], answer[2])
    except BaseException:
        pool.kill()
        _POOLS.clear()
        raise
    finally:
        bar.close()


def explain_many(
    net: Backend,
    images: list[np.ndarray],
    *,
    workers: int | None = None,
    cluster: str | None = None,
    progress: bool = True,
    **options: Any,
) -> list[Any]:
    """explain(net, image, **options) for every image (whole images as the work units, see
    explain_each); the results in the order of `images`. `rng` must be an int seed or None (every
    image gets a generator from it, as the CLI does)."""
    if isinstance(options.get("rng"), np.random.Generator):
        raise ValueError("explain_many needs rng as an int seed or None (each image gets its own generator)")
    if "checkpoint" in options or "callback" in options:
        raise ValueError("explain_many takes no checkpoint or callback (per-image runs on the workers)")
    results: list[Any] = [None] * len(images)
    for i, result in explain_each(net, images, options, workers=workers, cluster=cluster, progress=progress):
        results[i] = result
    return results
