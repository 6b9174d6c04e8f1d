"""What `pda-repro explain` writes into --out: the directory (refused when it holds an input, locked,
cleaned of killed runs' temporary files), the up-to-date check of an image's results, and the results
themselves: <stem>.npz, <stem>.png and <stem>.json, staged and replaced in order, the JSON last."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro import __version__
from pda_repro.cli.errors import PROG, CLIError, Fatal, describe, note
from pda_repro.cli.explain_args import classes_for
from pda_repro.io import file_digest
from pda_repro.methods import METHODS
from pda_repro.resolve import ResolvedModel, preprocess_tag

UPSAMPLE_WARNING = 4.0  # linear factor from which an image counts as upsampled a lot


def wrap_label(text: str, width: int = 34) -> str:
    """A colour-bar label on at most two lines."""
    import textwrap

    lines = textwrap.wrap(text, width)
    return "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")


def format_prob(p: float) -> str:
    """0.873 -> '0.873'; tiny probabilities keep their magnitude: 3.2e-05."""
    return f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.1e}"


def short_name(name: str) -> str:
    return name.split(",")[0].strip()


def json_safe(value: Any) -> Any:
    """`value` as strict JSON can hold it: NaN/Inf become null, numpy values and paths plain ones."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value) if isinstance(value, Path) else repr(value)


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


class OutputDir:
    """--out for one run: refused if it is a file or holds an input; created (and removed again if it is
    left empty); locked so that a second run on it exits 2 naming the holder; temporary files of killed
    runs removed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created: list[Path] = []
        self.lock: Any = None

    def open(self, inputs: Sequence[Path]) -> None:
        from pda_repro.io import LockHeld, OutputLock, remove_stale_temps

        out = self.path
        if out.exists() and not out.is_dir():
            raise CLIError(f"--out {str(out)!r} is a file; expected a directory (created if missing)")
        root = os.path.realpath(out)
        for p in inputs:
            real = os.path.realpath(p)
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                raise CLIError(
                    f"--out {str(out)!r} {'is' if real == root else 'contains'} the input {str(p)!r}: "
                    "results would overwrite inputs; choose another --out"
                )
        missing, p = [], out
        while not p.exists() and p.parent != p:
            missing.append(p)
            p = p.parent
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.created = missing
            self.lock = OutputLock(out).acquire()
        except LockHeld as exc:
            raise CLIError(f"--out {exc}") from None
        except OSError as exc:
            raise CLIError(describe(exc, "write to --out", out)) from None
        stale = remove_stale_temps(out) + remove_stale_temps(out / ".checkpoints", "*.tmp")
        if stale:
            note(f"removed {len(stale)} temporary file(s) left in {out} by an interrupted run")

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for d in self.created:  # deepest first; only directories this run made and left empty
            with contextlib.suppress(OSError):
                d.rmdir()


@dataclass
class RunState:
    """What every image of an explain run shares."""

    args: argparse.Namespace
    model: ResolvedModel
    net: Any
    sampler: Any
    sampler_info: dict
    method_options: dict
    uses: frozenset[str]
    class_request: list[int | str]
    out: Path
    class_names: list[str]
    inference: str = "full"
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def settings_of(state: RunState) -> dict[str, Any]:
    """Everything that decides a result (its "up to date" key, the JSON's settings): the settings and
    the content of the prototxt, weights, sampler and labels."""
    a = state.args
    used = {name: getattr(a, name) for name in ("window", "outer", "samples", "stride") if name in state.uses}
    if "output" in state.uses and a.output is not None:
        used["output"] = a.output
    return {
        "method": a.method,
        **used,
        "method_options": state.method_options,
        "sampler": {k: v for k, v in state.sampler_info.items() if k != "seconds"}
        if state.sampler is not None
        else None,
        "classes": [str(c) for c in a.classes],
        "seed": a.seed,
        "batch": a.batch,
        "model": state.model.spec.name,
        "prototxt": str(Path(state.model.spec.prototxt).resolve())
        if Path(state.model.spec.prototxt).exists()
        else str(state.model.spec.prototxt),
        "weights": str(state.model.weights.resolve()) if state.model.weights else None,
        **state.fingerprints,
        "backend": a.backend,
        "device": a.device,
        "inference": state.inference,
        "preprocessing": preprocess_tag(state.model.spec),
    }


def previous_result(final: Sequence[Path], key: str) -> str:
    """ "current": the JSON records `key` and the npz/png it lists are the ones it was written with;
    "broken": it records `key` but a file is missing, truncated or changed; "other": anything else."""

    try:
        previous = json.loads(final[2].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "other"
    if not isinstance(previous, dict) or previous.get("settings_hash") != key:
        return "other"
    recorded = previous.get("files") or {}
    for path, name in ((final[0], "npz_sha256"), (final[1], "png_sha256")):
        try:
            if not isinstance(recorded, dict) or file_digest(path) != recorded.get(name):
                return "broken"
        except OSError:
            return "broken"
    return "current"


def drop_unreadable_checkpoint(path: Path) -> None:
    """A checkpoint that does not load (cut short, corrupt) is removed with a note: the image restarts."""
    if not path.exists():
        return
    try:
        with np.load(path, allow_pickle=False) as f:
            for name in ("identity", "cursor", "sums"):
                np.asarray(f[name])
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed from
        note(f"warning: checkpoint {path} is unreadable ({type(exc).__name__}); this image starts again")
        path.unlink(missing_ok=True)


def upsampling_warning(original_size: Sequence[int], spec: Any) -> str | None:
    """A warning when the image is much smaller than the model's input (the maps show interpolation)."""
    h0, w0 = (int(v) for v in original_size)
    _, h, w = (int(v) for v in spec.input_shape)
    factor = (spec.resize or min(h, w)) / max(1, min(h0, w0))
    if factor < UPSAMPLE_WARNING:
        return None
    return (
        f"the image is {w0}×{h0} px, upsampled {factor:.1f}× for the model's {w}×{h} input: "
        "the maps cannot resolve more than the original pixels"
    )


def read_image_digest(path: Path) -> str:
    from pda_repro.preprocess import ImageReadError

    try:
        path.stat()  # follows links: a missing target, a loop, no permission
        if not path.is_file():
            raise ImageReadError(f"expected an image file, got {str(path)!r}")
        return file_digest(path)
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {str(path)!r}") from None
    except OSError as exc:
        raise ImageReadError(describe(exc, "read image", path)) from None


@dataclass
class ImageJob:
    """One image to explain: what plan_image found and explain() is called with."""

    path: Path
    img: Any
    digest: str
    key: str
    settings: dict
    final: list[Path]
    checkpoint: Path | None
    kwargs: dict
    warnings: list[str]
    started: float


def plan_image(state: RunState, path: Path, stem: str) -> ImageJob | dict[str, Any]:
    """The skipped record of an image whose results are up to date, else the job that computes them."""
    from pda_repro.preprocess import load_image

    a, spec = state.args, state.model.spec
    started = time.perf_counter()
    digest = read_image_digest(path)
    settings = settings_of(state)
    key = hashlib.sha256(dumps({"image": digest, **settings}, sort_keys=True).encode()).hexdigest()[:16]
    final = [state.out / f"{stem}.npz", state.out / f"{stem}.png", state.out / f"{stem}.json"]
    checkpoint = state.out / ".checkpoints" / f"{stem}-{key}.npz"
    previous = "other" if a.force else previous_result(final, key)
    if previous == "current":
        with contextlib.suppress(OSError):  # left by a run killed after writing its results
            checkpoint.unlink(missing_ok=True)
            checkpoint.parent.rmdir()
        return {"skipped": True, "files": final}
    if previous == "broken":
        note(f"{path}: the results in {state.out} are incomplete or changed; recomputing them")

    img = load_image(path, spec)
    probs, _ = state.net.forward(img.x[None])
    probs = np.asarray(probs[0], dtype=np.float64)
    if not np.isfinite(probs).all():
        raise CLIError(
            f"{path}: model {spec.name} gives NaN/Inf class probabilities for this image (forward pass of "
            "the image; check the weights)"
        )
    classes = classes_for(state.class_request, probs)
    image_warnings = [w for w in (upsampling_warning(img.original_size, spec),) if w]
    for w in image_warnings:
        note(f"warning: {path}: {w}")
    kwargs: dict[str, Any] = {
        "method": a.method,
        "window": a.window,
        "outer": a.outer,
        "samples": a.samples,
        "stride": a.stride,
        "batch": a.batch,
        "sampler": state.sampler,
        "classes": classes,
        "rng": np.random.default_rng(a.seed),
        "progress": not a.no_progress,
        "inference": state.inference,
        "workers": a.workers,
        "cluster": a.cluster,
        **state.method_options,
    }
    if a.output is not None:
        kwargs["output"] = a.output
    if not METHODS[a.method].checkpointable:
        checkpoint = None
    else:
        drop_unreadable_checkpoint(checkpoint)
        kwargs.update(
            checkpoint=checkpoint, keep_checkpoint=True, checkpoint_seconds=float(a.checkpoint_seconds)
        )
    return ImageJob(path, img, digest, key, settings, final, checkpoint, kwargs, image_warnings, started)


def write_result(state: RunState, job: ImageJob, result: Any) -> dict[str, Any]:
    """The image's .npz, .png and .json (staged, then replaced in order, the JSON last); the
    checkpoint goes once they are on disk."""
    from pda_repro.io import commit, temp_path  # noqa: PLC0415
    from pda_repro.viz import save_explanation_png  # noqa: PLC0415 - looked up per call

    a, spec, names = state.args, state.model.spec, state.class_names
    path, img, digest, key, settings = job.path, job.img, job.digest, job.key, job.settings
    final, checkpoint, image_warnings, started = job.final, job.checkpoint, job.warnings, job.started
    maps = np.asarray(result.maps, dtype=np.float32)
    res_classes = [int(c) for c in np.asarray(result.classes).reshape(-1)]
    res_probs = np.asarray(result.probs, dtype=np.float64).reshape(-1)
    top5 = [int(c) for c in np.argsort(-res_probs, kind="stable")[:5]]

    def entry(c: int) -> dict[str, Any]:
        return {"index": c, "name": names[c], "prob": float(res_probs[c])}

    units = str(getattr(result, "params", {}).get("units", "relevance"))
    titles = [f"{short_name(names[c])} p={format_prob(res_probs[c])}" for c in res_classes]
    shown = ", ".join(f"{k}={settings[k]}" for k in ("window", "outer", "samples", "stride") if k in settings)
    suptitle = f"{path.name}: {a.method}{' (' + shown + ')' if shown else ''}, {spec.name}"
    summary = {
        "image": str(path),
        "image_sha256": digest,
        "original_size": list(img.original_size),
        "input_size": list(spec.input_shape),
        "model": spec.name,
        "prototxt": str(spec.prototxt),
        "weights": str(state.model.weights) if state.model.weights else None,
        "weights_note": state.model.weights_note,
        "backend": a.backend,
        "device": a.device,
        "method": a.method,
        "settings": settings,
        "sampler": state.sampler_info if state.sampler is not None else None,
        "params": getattr(result, "params", {}),
        "top5": [entry(c) for c in top5],
        "explained": [entry(c) for c in res_classes],
        "warnings": [*state.warnings, *image_warnings],
        "seconds": float(getattr(result, "seconds", 0.0)),
        "total_seconds": None,
        "forward_passes": int(getattr(result, "forward_passes", 0)),
        "windows_evaluated": int(getattr(result, "windows_evaluated", 0)),
        "timings": getattr(result, "timings", {}),
        "units": units,
        "files": {"npz": final[0].name, "png": final[1].name},
        "settings_hash": key,
        "pda_repro_version": __version__,
        "command": [PROG, *sys.argv[1:]],
    }
    staged = [temp_path(p) for p in final]
    try:  # stage all three, then replace them in order, the JSON (the record of completion) last
        with open(staged[0], "wb") as fh:
            np.savez_compressed(
                fh,
                maps=maps,
                classes=np.asarray(res_classes, dtype=np.int64),
                class_names=np.asarray([names[c] for c in res_classes]),
                probs=res_probs.astype(np.float32),
                display=img.display,
                settings=np.asarray(dumps(settings, sort_keys=True)),
            )
        save_explanation_png(
            staged[1], img.display, maps, titles, suptitle=suptitle, colorbar_label=wrap_label(units)
        )
        summary["files"].update(npz_sha256=file_digest(staged[0]), png_sha256=file_digest(staged[1]))
        summary["total_seconds"] = round(time.perf_counter() - started, 3)
        staged[2].write_text(dumps(summary, indent=2) + "\n", encoding="utf-8")
        commit(list(zip(staged, final, strict=True)))
    except OSError as exc:
        raise Fatal(describe(exc, f"write the results of {path.name} to", state.out)) from None
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    if checkpoint is not None:
        with contextlib.suppress(OSError):  # the results are on disk: the checkpoint has done its job
            checkpoint.unlink(missing_ok=True)
            checkpoint.parent.rmdir()  # only when empty (no other image's unfinished run)
    return {"skipped": False, "files": final, "summary": summary}
