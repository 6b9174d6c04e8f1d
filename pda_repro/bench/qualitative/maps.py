"""Compute the maps of the qualitative figures once and keep them: one .npz per (image set, image, run)
under results/qualitative/<set>/<image>/, and one JSON per figure of everything the renderer draws.

A run's .npz holds the map and a JSON `meta` string: the request that made it (method, settings, sampler,
class, input digest, weights digest, seed), explain()'s params, and what it cost (wall and CPU seconds,
forward passes). A run whose file holds the same request is reused (resume per image and method); `force`
recomputes. Every file is written atomically (pda_repro.io.atomic_writer). `subjects` shares the work out
among processes; a final run without it writes the figure JSONs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.bench.qualitative.specs import (
    UNITS_SHORT,
    FigureSpec,
    ImageSet,
    MethodRun,
    Settings,
    Setup,
    Subject,
)
from pda_repro.bench.results import RESULTS_DIR
from pda_repro.explain import explain
from pda_repro.io import atomic_writer, file_digest
from pda_repro.paths import REPO_ROOT, cache_dir
from pda_repro.seeding import generator

__all__ = ["FIGURES_DIRNAME", "FORMAT", "QUALITATIVE_DIRNAME", "ComputeReport", "compute", "read_npz"]

QUALITATIVE_DIRNAME = "qualitative"
FIGURES_DIRNAME = "figures"
FORMAT = 1
# What a figure JSON keeps of each run's meta (the request is added beside them).
RUN_FIELDS = ("seconds", "cpu_seconds", "forward_passes", "images_forwarded", "windows_evaluated", "error")
MACHINE_FIELDS = ("cpu_model", "logical_cores", "torch", "torch_threads", "date")


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        fh.write(data)
    return path


def _write_npz(path: Path, **arrays: Any) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return _write_bytes(path, buf.getvalue())


def read_npz(path: Path) -> dict[str, Any]:
    """The arrays of a stored .npz, its `meta` decoded from JSON."""
    with np.load(path, allow_pickle=False) as data:
        out = {name: data[name] for name in data.files}
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    return out


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _array_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.blake2b(f"{a.dtype.str}{a.shape}".encode() + a.tobytes(), digest_size=12).hexdigest()


# --------------------------------------------------------------------------------------------------
# Compute
# --------------------------------------------------------------------------------------------------
@dataclass
class ComputeReport:
    """What a compute call did: run labels "<set>/<subject>/<run>", its cost and the JSONs it wrote."""

    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # may_fail runs that raised (stored as errors)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    json_files: list[Path] = field(default_factory=list)


def _select_figures(setup: Setup, only: Sequence[str] | None) -> list[FigureSpec]:
    """The figures named (by key or full name) in `only`; all when it is empty."""
    if not only:
        return list(setup.figures)
    known = {f.key for f in setup.figures} | {f.name for f in setup.figures}
    bad = [o for o in only if o not in known]
    if bad:
        raise ValueError(f"unknown figure(s) {bad}; known: {', '.join(sorted(known))}")
    return [f for f in setup.figures if f.key in only or f.name in only]


def compute(
    setup: Setup | None = None,
    only: Sequence[str] | None = None,
    results_dir: str | Path = RESULTS_DIR,
    force: bool = False,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    subjects: Sequence[str] | None = None,
) -> ComputeReport:
    """Compute (or reuse) every map the selected figures need, then write one JSON per figure.

    Each run's map is saved as soon as it is done; a run whose .npz exists with the same request
    (method, settings, sampler, class, input image, weights) is skipped unless `force`.
    `subjects` restricts the work to those images (to share it out among processes); the figure
    JSONs are then not written: a later call without `subjects` reuses the maps and writes them."""
    if setup is None:
        from pda_repro.bench.qualitative.paper import default_setup

        setup = default_setup(Settings(seed=seed))
    root = Path(results_dir) / QUALITATIVE_DIRNAME
    say = log or (lambda _msg: None)
    report = ComputeReport()
    started, cpu_started = time.perf_counter(), time.process_time()
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir is not None else cache_dir("qualitative-checkpoints")
    by_set: dict[str, list[FigureSpec]] = {}
    for fig in _select_figures(setup, only):
        by_set.setdefault(fig.image_set, []).append(fig)
    subjects_of = {name: setup.image_sets[name].subjects() for name in by_set}  # images read once
    wanted = None if subjects is None else set(subjects)
    if wanted is not None:
        known = {sub.name for subs in subjects_of.values() for sub in subs}
        unknown = sorted(wanted - known)
        if unknown or not wanted:
            raise ValueError(
                f"unknown subject(s) {unknown or '(none given)'}; the selected figures have: {', '.join(sorted(known))}"
            )
    for set_name, figs in by_set.items():
        image_set = setup.image_sets[set_name]
        keys: list[str] = []
        for fig in figs:
            keys.extend(k for k in fig.columns if k not in keys)
        job = _SetJob(
            image_set, root / set_name, ckpt_root, seed=seed, force=force, progress=progress, say=say
        )
        before = len(report.computed)
        names = job.run(subjects_of[set_name], keys, report, wanted)
        if wanted is None:
            computed_here = len(report.computed) > before
            for fig in figs:
                report.json_files.append(_write_figure_json(fig, image_set, names, root, seed, computed_here))
    report.wall_seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu_started
    say(
        f"qualitative: {len(report.computed)} maps computed, {len(report.skipped)} reused, "
        f"{len(report.failed)} not applicable; {report.wall_seconds:.0f} s wall, {report.cpu_seconds:.0f} s CPU"
    )
    return report


class _SetJob:
    """The maps of one image set; loads the net, the weights digest and the samplers only when needed."""

    def __init__(
        self,
        image_set: ImageSet,
        set_dir: Path,
        ckpt_root: Path,
        *,
        seed: int,
        force: bool,
        progress: bool,
        say: Callable[[str], None],
    ) -> None:
        self.image_set, self.set_dir, self.ckpt_root = image_set, set_dir, ckpt_root
        self.seed, self.force, self.progress, self.say = seed, force, progress, say
        self._net: Any = None
        self._samplers: dict[str, Any] = {}
        self._weights: str | None = None

    @property
    def net(self) -> Any:
        if self._net is None:
            f = self.image_set.weights_file
            if f is not None and not Path(f).is_file():
                raise ValueError(
                    f"image set {self.image_set.name!r} needs trained weights {f}, which do not exist "
                    "(maps of random weights mean nothing)"
                )
            self._net = self.image_set.net()
        return self._net

    def sampler(self, key: str) -> Any:
        if key not in self._samplers:
            self._samplers[key] = self.image_set.samplers[key].build()
        return self._samplers[key]

    @property
    def weights_sha256(self) -> str:
        if self._weights is None:
            f = self.image_set.weights_file
            self._weights = file_digest(Path(f)) if f is not None and Path(f).is_file() else "none"
        return self._weights

    def run(
        self, subjects: list[Subject], keys: list[str], report: ComputeReport, wanted: set[str] | None
    ) -> list[str]:
        """Compute the missing runs `keys` of every subject (of those in `wanted`, if given); returns the
        subject names in order."""
        image_set = self.image_set
        names = [s.name for s in subjects]
        if len(set(names)) != len(names):
            raise ValueError(f"image set {image_set.name!r} has duplicate subject names: {names}")
        order = list(subjects)
        if image_set.class_from is not None:  # the reference subject first: its class is explained for all
            ref = [s for s in subjects if s.name == image_set.class_from]
            if not ref:
                raise ValueError(
                    f"class_from={image_set.class_from!r} is not a subject of {image_set.name!r}"
                )
            order = ref + [s for s in subjects if s.name != image_set.class_from]
        fixed_class: int | None = None
        for subject in order:
            info = self._subject_info(subject, self.force)
            cls = int(info["predicted"]) if fixed_class is None else fixed_class
            if image_set.class_from is not None and fixed_class is None:
                fixed_class = cls
            if int(info["explained"]) != cls:  # class_from changed: rewrite input.npz with the new class
                info = self._subject_info(subject, True, explained=cls)
            if wanted is None or subject.name in wanted:
                for key in keys:
                    self._run_or_reuse(image_set.runs[key], subject, cls, report)
        return names

    def _run_or_reuse(self, run: MethodRun, subject: Subject, cls: int, report: ComputeReport) -> None:
        path = self.set_dir / subject.name / f"{run.key}.npz"
        request = self._request(run, subject, cls)
        label = f"{self.image_set.name}/{subject.name}/{run.key}"
        if not self.force and path.is_file():
            try:
                stored = read_npz(path)["meta"].get("request")
            except (OSError, ValueError, KeyError):
                stored = None
            if stored == request:
                report.skipped.append(label)
                return
            self.say(f"{label}: stored settings differ from the requested ones; recomputing")
        self.say(f"{label}: computing {run.method} ...")
        meta, maps = self._explain(run, subject, cls)
        meta["request"] = request
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
        if maps is not None:
            arrays["map"] = maps.astype(np.float32)
            report.computed.append(label)
            self.say(f"{label}: done in {meta['seconds']:.1f} s ({meta['cpu_seconds']:.1f} s CPU)")
        else:
            report.failed.append(label)
            self.say(f"{label}: not applicable: {meta['error']}")
        _write_npz(path, **arrays)

    def _request(self, run: MethodRun, subject: Subject, cls: int) -> dict:
        """What makes a stored map this run's map: equal requests, equal maps."""
        return _json_safe(
            {
                "format": FORMAT,
                "method": run.method,
                **run.explain_kwargs(),
                "sampler": self.image_set.samplers[run.sampler].description if run.sampler else None,
                "class": int(cls),
                "input": _array_digest(subject.x),
                "weights_sha256": self.weights_sha256,
                "train_size": self.image_set.train_size,
                "seed": self.seed,
            }
        )

    def _subject_info(self, subject: Subject, force: bool, explained: int | None = None) -> dict[str, Any]:
        """input.npz of a subject (display image, top-5 probabilities, predicted and explained class)."""
        path = self.set_dir / subject.name / "input.npz"
        digest = _array_digest(subject.x)
        if not force and path.is_file():
            try:
                meta = read_npz(path)["meta"]
                if (
                    meta.get("input") == digest
                    and meta.get("weights_sha256") == self.weights_sha256
                    and meta.get("note") == subject.note
                ):
                    return meta
            except (OSError, ValueError, KeyError):
                pass
        probs, _ = self.net.forward(subject.x[None])
        p = np.asarray(probs[0], dtype=np.float64)
        top = np.argsort(-p)[:5]
        names = self.image_set.class_names()
        predicted = int(top[0])
        shown = int(predicted if explained is None else explained)
        meta = {
            "subject": subject.name,
            "note": subject.note,
            "input": digest,
            "weights_sha256": self.weights_sha256,
            "predicted": predicted,
            "predicted_name": names[predicted],
            "predicted_prob": float(p[predicted]),
            "explained": shown,
            "top5": [[int(i), names[int(i)], float(p[i])] for i in top],
            "expected": subject.expected_class,
            "correct": None if subject.expected_class is None else bool(predicted == subject.expected_class),
            "explained_name": names[shown],
            "explained_prob": float(p[shown]),
        }
        _write_npz(
            path,
            display=np.ascontiguousarray(subject.display, dtype=np.uint8),
            meta=np.array(json.dumps(meta)),
        )
        return meta

    def _explain(
        self, run: MethodRun, subject: Subject, cls: int
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """One map from explain(), seeded by (seed, set, subject, run) whatever else is computed."""
        from pda_repro.methods import get_method

        image_set = self.image_set
        kwargs = run.explain_kwargs()
        if run.sampler is not None:
            kwargs["sampler"] = self.sampler(run.sampler)
        if image_set.train_size is not None:
            kwargs["train_size"] = image_set.train_size
        checkpoint = None
        if image_set.checkpoints and get_method(run.method).checkpointable:
            checkpoint = self.ckpt_root / image_set.name / subject.name / f"{run.key}.ckpt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
        rng = generator(self.seed, image_set.name, subject.name, run.key)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = explain(
                self.net,
                subject.x,
                method=run.method,
                classes=[cls],
                rng=rng,
                batch=image_set.batch,
                progress=self.progress,
                checkpoint=checkpoint,
                **kwargs,
            )
        except ValueError as exc:
            if not run.may_fail:
                raise
            return {"error": str(exc), "method": run.method, "seconds": 0.0, "cpu_seconds": 0.0}, None
        meta = {
            "method": run.method,
            "params": _json_safe(res.params),
            "units": res.params.get("units", ""),
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "forward_passes": res.forward_passes,
            "images_forwarded": res.params.get("images_forwarded"),
            "windows_evaluated": res.windows_evaluated,
            "timings": _json_safe(res.timings),
        }
        return meta, np.asarray(res.maps[0], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Figure JSON
# --------------------------------------------------------------------------------------------------
def _repo_relative(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _subject_entry(sub_dir: Path, name: str, columns: Sequence[str]) -> tuple[dict[str, Any], bool]:
    """A subject's stored input meta and the cost and request of each of its runs; False if incomplete."""
    entry: dict[str, Any] = {"name": name, "runs": {}}
    complete = True
    if (sub_dir / "input.npz").is_file():
        entry.update(read_npz(sub_dir / "input.npz")["meta"])
    else:
        complete = False
    for key in columns:
        path = sub_dir / f"{key}.npz"
        if not path.is_file():
            complete = False
            continue
        meta = read_npz(path)["meta"]
        entry["runs"][key] = {k: meta.get(k) for k in RUN_FIELDS if meta.get(k) is not None}
        entry["runs"][key]["request"] = meta.get("request")
    return entry, complete


def _machine(path: Path, computed_here: bool) -> dict[str, Any]:
    """The machine that computed the maps: this one when a map was computed now, else the one the
    figure's stored JSON names (a JSON rewritten from reused maps must not claim this machine)."""
    from pda_repro.bench.results import machine_metadata

    if not computed_here and path.is_file():
        with contextlib.suppress(ValueError, OSError):
            stored = json.loads(path.read_text()).get("machine")
            if isinstance(stored, dict):
                return stored
    machine = machine_metadata()
    return {k: machine.get(k) for k in MACHINE_FIELDS}


def _write_figure_json(
    fig: FigureSpec, image_set: ImageSet, names: list[str], root: Path, seed: int, computed_here: bool = True
) -> Path:
    """Everything the renderer needs and a reader wants to know, built from the stored data."""

    subjects = []
    complete = True
    for name in names:
        entry, ok = _subject_entry(root / image_set.name / name, name, fig.columns)
        subjects.append(entry)
        complete = complete and ok
    runs = {}
    for key in fig.columns:
        run = image_set.runs[key]
        runs[key] = {
            "method": run.method,
            "label": run.label,
            "units": UNITS_SHORT.get(run.method, ""),
            **run.explain_kwargs(),
            "sampler": image_set.samplers[run.sampler].description if run.sampler else None,
        }
    doc = {
        "format": FORMAT,
        "figure": fig.name,
        "key": fig.key,
        "title": fig.title,
        "caption": fig.caption,
        "layout": fig.layout,
        "image_set": image_set.name,
        "model": image_set.model,
        "weights": image_set.weights,
        "weights_file": _repo_relative(image_set.weights_file),
        "weights_sha256": next((s.get("weights_sha256") for s in subjects if s.get("weights_sha256")), None),
        "notes": {**image_set.notes, **fig.notes},
        "columns": list(fig.columns),
        "runs": runs,
        "seed": seed,
        "subjects": subjects,
        "complete": complete,
        "cpu_seconds_total": sum(
            r.get("cpu_seconds", 0.0) or 0.0 for s in subjects for r in s["runs"].values()
        ),
        "machine": _machine(root / f"{fig.name}.json", computed_here),
        "png": f"{FIGURES_DIRNAME}/{fig.name}.png",
    }
    text = json.dumps(_json_safe(doc), indent=2) + "\n"
    return _write_bytes(root / f"{fig.name}.json", text.encode("utf-8"))
