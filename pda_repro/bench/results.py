"""Where benchmark results live and how they are written: results/<env>/<experiment>.csv + .json.

* ``env_name(device)`` names the machine class, never the host: ``cpu-<cpu model slug>-<n>c`` or
  ``cuda-<gpu slug>`` (e.g. ``cpu-amd-epyc-2c``, ``cuda-nvidia-h100-80gb-hbm3``).
* ``machine_metadata()`` records what a number depends on: CPU model, cores, GPU, library versions (torch,
  numpy, their BLAS, the pycaffe build and the BLAS it links), threads, git commit, the exact command,
  the date and the load average.
* ``ResultStore`` keeps one CSV per experiment whose rows belong to *cells* (one (experiment, model,
  backend, device, setting) measurement each). A cell is written as soon as it completes, atomically
  (temp file in the same directory + ``os.replace``), so an interrupted run resumes where it stopped and a
  finished cell is skipped unless ``force``. The JSON beside the CSV describes the columns and holds every
  cell's metadata.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pda_repro.io import atomic_writer, file_digest
from pda_repro.paths import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "results"
CELL_COLUMN = "cell"

__all__ = [
    "CELL_COLUMN",
    "RESULTS_DIR",
    "ResultStore",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "cell_id",
    "cpu_model",
    "env_name",
    "gpu_name",
    "machine_metadata",
    "slug",
    "weights_label",
    "weights_slug",
]


# --- names ------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """Lower-case ``text`` with every run of non-alphanumerics turned into one '-' ("AMD EPYC" -> "amd-epyc")."""
    s = re.sub(r"\(r\)|\(tm\)|\bcpu\b|\bprocessor\b|\b\d+-core\b|@.*$", " ", text.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown"


@cache
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def logical_cores() -> int:
    """Cores this process may run on (affinity mask where the OS has one)."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_name(index: int = 0) -> str | None:
    """torch's name of CUDA device ``index``, or None without CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(index)


def env_name(device: str = "cpu") -> str:
    """Host-independent name of the machine class a result was measured on.

    ``cpu-<cpu model slug>-<n>c`` for device "cpu", ``cuda-<gpu slug>`` for "cuda"."""
    if device == "cpu":
        return f"cpu-{slug(cpu_model())}-{logical_cores()}c"
    if device == "cuda":
        name = gpu_name()
        if name is None:
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        return f"cuda-{slug(name)}"
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def cell_id(key: Mapping[str, Any]) -> str:
    """The identifier of one experiment cell: 'name=value' pairs joined by '|', in the key's order."""
    if not key:
        raise ValueError("a cell key needs at least one field")
    parts = []
    for name, value in key.items():
        text = str(value)
        if "|" in text or "|" in name:
            raise ValueError(f"cell key field {name}={text!r} must not contain '|'")
        parts.append(f"{name}={text}")
    return "|".join(parts)


def weights_label(weights: str | Path | None, default_note: str | None = None) -> str:
    """How a result's weights are named in results: the file name and the first 8 hex of its SHA-256,
    or "random (seeded fillers)" (or the zoo's note) when there is no file."""
    if weights is None:
        return default_note or "random (seeded fillers)"
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    return f"{path.name} (sha256 {file_digest(path)[:8]})"


def weights_slug(label: str) -> str:
    """A file-name-safe tag of a weights label: 'bvlc_alexnet.caffemodel (sha256 1234abcd)' ->
    'bvlc_alexnet-1234abcd'; any random-weights label -> 'random'."""
    if str(label).startswith("random"):
        return "random"
    name, _, rest = str(label).partition(" (sha256 ")
    return slug("-".join(p for p in (Path(name).stem, rest.rstrip(")")) if p)).replace("-", "_")


# --- metadata ---------------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - a missing distribution is simply "not installed"
        return None


def _numpy_blas() -> str:
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version')}".strip()
    except Exception:  # noqa: BLE001 - numpy < 1.26 has no dict mode
        return "unknown"


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return {}
    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", shown)
    mkldnn = re.search(r"MKL-DNN v([\d.]+)", shown)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_blas": blas.group(1) if blas else "unknown",
        "torch_mkldnn": mkldnn.group(1) if mkldnn else None,
        "torch_threads": torch.get_num_threads(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    }
    return info


@cache
def pycaffe_info() -> dict[str, Any]:
    """Where pycaffe comes from and what it was built with, found without importing it (importing pycaffe
    is cheap but its CHECK failures abort; here we only read files)."""
    import importlib.util

    spec = importlib.util.find_spec("caffe")
    if spec is None or spec.origin is None:
        return {"pycaffe": None}
    pkg = Path(spec.origin).parent
    info: dict[str, Any] = {"pycaffe": str(pkg)}
    build_ok = pkg.parent.parent / "BUILD_OK"
    if build_ok.is_file():
        info["pycaffe_build"] = build_ok.read_text().strip()
    so = pkg / "_caffe.so"
    if so.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True, timeout=20).stdout
            libs = sorted(
                {m.group(1) for m in re.finditer(r"(lib(?:open)?blas[^\s]*|libmkl[^\s]*)\s*=>", ldd)}
            )
            info["pycaffe_blas"] = ", ".join(libs) or "unknown"
            info["pycaffe_blas_package"] = _dpkg_version("libopenblas0-pthread") or _dpkg_version(
                "libopenblas0"
            )
    return info


def _dpkg_version(package: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=20
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{package} {out.stdout.strip()}"
    return None


def git_commit(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """HEAD's commit and whether tracked files differ from it ("uncommitted" when there is no commit)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    commit = head.stdout.strip() if head.returncode == 0 else "uncommitted"
    return {"git_commit": commit, "git_dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The exact command that is running, shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py")):
        argv = [sys.executable, "-m", "pda_repro.cli", *argv[1:]]
    return shlex.join(argv)


def machine_metadata(command: str | None = None) -> dict[str, Any]:
    """Everything a timing depends on, as a JSON-able dict."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    meta: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
        "cpu_model": cpu_model(),
        "logical_cores": logical_cores(),
        "physical_cores": _physical_cores(),
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": [round(x, 2) if x is not None else None for x in load],
        "gpu": gpu_name(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": _numpy_blas(),
        "scipy": _version("scipy"),
        "pandas": pd.__version__,
        "matplotlib": _version("matplotlib"),
        "protobuf": _version("protobuf"),
        "pda_repro": _version("pda-repro"),
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
            if k in os.environ
        },
    }
    meta.update(_torch_info())
    meta.update(pycaffe_info())
    meta.update(git_commit())
    return meta


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001
        return None


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        return None


# --- atomic writers ---------------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through pda_repro.io.atomic_writer (a temp file in the same directory,
    then ``os.replace``; mode io.FILE_MODE): a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_generated_block(path: str | Path, markers: tuple[str, str], body: str) -> Path | None:
    """Rewrite the text between a file's two marker lines (a block `make figures` generates) with
    `body`; None (nothing written) when the file lacks either marker."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = markers
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return atomic_write_text(path, f"{head}{start}\n{body.rstrip()}\n{end}{tail}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_csv(path: str | Path, frame: pd.DataFrame | Sequence[Mapping[str, Any]]) -> Path:
    """Write a DataFrame (or a list of row dicts) as CSV, atomically."""
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(list(frame))
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.6g")
    return atomic_write_text(path, buf.getvalue())


def atomic_save_npz(path: str | Path, **arrays: Any) -> Path:
    """``np.savez_compressed`` to ``path``, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


# --- the store --------------------------------------------------------------------------------------


@dataclass
class ResultStore:
    """results/<env>/: one CSV + one JSON per experiment, filled cell by cell."""

    root: Path
    env: str

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.env or "/" in self.env or self.env.startswith("."):
            raise ValueError(f"env must be a plain directory name, got {self.env!r}")

    @property
    def dir(self) -> Path:
        return self.root / self.env

    def csv_path(self, experiment: str) -> Path:
        return self.dir / f"{experiment}.csv"

    def json_path(self, experiment: str) -> Path:
        return self.dir / f"{experiment}.json"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise read-modify-write of this env's files between processes (a lock on the directory
        itself, so no lock file lands in results/)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def read(self, experiment: str) -> pd.DataFrame:
        """The experiment's rows (empty frame when nothing was written yet)."""
        path = self.csv_path(experiment)
        if not path.is_file():
            return pd.DataFrame()
        return pd.read_csv(path)

    def read_meta(self, experiment: str) -> dict[str, Any]:
        path = self.json_path(experiment)
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def has_cell(self, experiment: str, key: Mapping[str, Any]) -> bool:
        """True when the cell's rows are in the CSV *and* its metadata is in the JSON (both are written,
        CSV first, when a cell completes; a crash between the two leaves the cell to be redone)."""
        cid = cell_id(key)
        meta = self.read_meta(experiment)
        if cid not in meta.get("cells", {}):
            return False
        frame = self.read(experiment)
        return CELL_COLUMN in frame.columns and bool((frame[CELL_COLUMN] == cid).any())

    def write_cell(
        self,
        experiment: str,
        key: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]],
        meta: Mapping[str, Any],
        description: str | None = None,
        columns: Mapping[str, str] | None = None,
    ) -> str:
        """Replace the cell's rows in the experiment CSV and its metadata in the JSON. Returns the cell id.

        Every row gets the key's fields and the ``cell`` column; ``meta`` (machine metadata, settings) is
        stored under ``cells[<cell id>]`` in the JSON; ``description`` and ``columns`` (column -> meaning)
        document the experiment."""
        if not rows:
            raise ValueError(f"cell {cell_id(key)!r} of {experiment!r} has no rows to write")
        cid = cell_id(key)
        new = pd.DataFrame([{CELL_COLUMN: cid, **key, **row} for row in rows])
        with self._lock():
            old = self.read(experiment)
            if not old.empty and CELL_COLUMN in old.columns:
                old = old[old[CELL_COLUMN] != cid]
            frame = new if old.empty else pd.concat([old, new], ignore_index=True, sort=False)
            atomic_write_csv(self.csv_path(experiment), frame)
            doc = self.read_meta(experiment) or {"experiment": experiment, "env": self.env, "cells": {}}
            if description:
                doc["description"] = description
            if columns:
                doc["columns"] = {**doc.get("columns", {}), **columns}
            doc.setdefault("cells", {})[cid] = dict(meta)
            atomic_write_json(self.json_path(experiment), doc)
        return cid

    def remove_cell(self, experiment: str, key: Mapping[str, Any] | str) -> None:
        """Forget one cell (by key or cell id): its rows and its metadata."""
        cid = key if isinstance(key, str) else cell_id(key)
        with self._lock():
            frame = self.read(experiment)
            if not frame.empty and CELL_COLUMN in frame.columns and (frame[CELL_COLUMN] == cid).any():
                atomic_write_csv(self.csv_path(experiment), frame[frame[CELL_COLUMN] != cid])
            doc = self.read_meta(experiment)
            if cid in doc.get("cells", {}):
                del doc["cells"][cid]
                atomic_write_json(self.json_path(experiment), doc)


def envs(root: str | Path = RESULTS_DIR) -> list[str]:
    """The env directories under a results root (those holding at least one CSV)."""
    root = Path(root)
    if not root.is_dir():
        return []
    skip = {"figures", "qualitative", "checkpoints"}
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name not in skip and any(p.glob("*.csv"))
    )
