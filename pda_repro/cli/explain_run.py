"""`pda-repro explain`: the run. Set up once (model, net, labels, classes, sampler; any bad value exits 2
before anything is written), then explain the images one after another -- or, with Ray workers, whole
images at a time (whole_images.py) -- writing each image's results as it finishes (outputs.py)."""

from __future__ import annotations

import argparse
import hashlib
import signal
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro import paths
from pda_repro.cli.argtypes import suggest
from pda_repro.cli.errors import (
    EXIT_OK,
    EXIT_USER_ERROR,
    CLIError,
    Fatal,
    Interrupted,
    debug,
    describe,
    error,
    note,
    one_line,
)
from pda_repro.cli.explain_args import resolve_class_request, unique_stems
from pda_repro.cli.outputs import OutputDir, RunState, format_prob, plan_image, short_name, write_result
from pda_repro.cli.whole_images import explain_whole_images, image_workers
from pda_repro.io import file_digest
from pda_repro.methods import METHODS
from pda_repro.resolve import (
    Preprocessing,
    ResolvedModel,
    build_sampler,
    expand_images,
    read_labels,
    resolve_model,
)


def _fingerprint(obj: Any) -> str:
    """SHA-256 over an object's public arrays and scalars (a sampler's parameters)."""
    h = hashlib.sha256(type(obj).__name__.encode())
    for name, value in sorted(vars(obj).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            h.update(f"{name}:{value.dtype}:{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif value is None or isinstance(value, bool | int | float | str | tuple):
            h.update(f"{name}={value!r}".encode())
    return h.hexdigest()


def _coverage_warning(args: argparse.Namespace, spec: Any, uses: frozenset[str]) -> str | None:
    """A warning when the window grid leaves pixels that no window covers (their map value is 0)."""
    if not {"window", "stride"} <= uses:
        return None
    from pda_repro.grid import WindowGrid  # noqa: PLC0415

    k, s = args.window, args.stride
    _, h, w = (int(v) for v in spec.input_shape)
    fraction = 1.0 - WindowGrid(h, w, k, s).coverage().mean()
    if fraction <= 0:
        return None
    why = (
        f"--stride {s} is larger than --window {k}"
        if s > k
        else f"--stride {s} does not reach the last rows/columns of the {h}×{w} input"
    )
    return f"{100 * fraction:.1f} % of the pixels are covered by no window ({why}); their map value is 0"


def _preprocessing(args: argparse.Namespace) -> Preprocessing:
    return Preprocessing(preprocess=args.preprocess, channel_order=args.channel_order, mean=args.mean,
                         scale=args.scale, resize=args.resize, labels=args.labels, train_size=args.train_size)  # fmt: skip


def _check_run_settings(args: argparse.Namespace, spec: Any, uses: frozenset[str]) -> None:
    """--window, --outer and --mean against the model's input, before anything is loaded or written."""
    from pda_repro.methods.windows import check_window_args  # noqa: PLC0415

    _, h, w = (int(v) for v in spec.input_shape)
    if "window" in uses:
        try:
            check_window_args(args.window, args.stride, tuple(spec.input_shape))
        except ValueError as exc:
            raise CLIError(f"--window {args.window} is too large: {exc}") from None
    if "outer" in uses and "sampler" in uses and args.sampler == "conditional":
        if args.outer <= args.window:
            raise CLIError(f"--outer {args.outer} must be larger than --window {args.window}")
        if (args.outer - args.window) % 2:
            raise CLIError(
                f"--outer minus --window must be even (the outer patch is centred), got {args.outer} - {args.window}"
            )
        if args.outer > min(h, w):
            raise CLIError(f"--outer {args.outer} is larger than the model's input {h}×{w}")
    channels = int(spec.input_shape[0])
    if len(spec.mean) not in (1, channels):
        raise CLIError(
            f"--mean has {len(spec.mean)} values {','.join(f'{m:g}' for m in spec.mean)}; model {spec.name} "
            f"has {channels} channel{'s' if channels != 1 else ''}: expected 1 or {channels} values"
        )


def _method_options(args: argparse.Namespace, method_cls: Any, spec: Any, in_zoo: bool) -> dict[str, Any]:
    """The -O KEY=VALUE options, checked against the method's own options before anything runs."""
    generic = {"window", "outer", "samples", "stride", "sampler", "output"}
    accepted = set(method_cls.option_names())
    options: dict[str, Any] = {}
    for key, value in args.method_options:
        if key in generic:
            raise CLIError(f"-O {key}=...: use --{key} instead")
        if key not in accepted:
            known = sorted(accepted - generic)
            raise CLIError(
                f"method {args.method} has no option {key!r}{suggest(key, known)}; "
                f"its options: {', '.join(known) or 'none'}"
            )
        options[key] = value
    if "train_size" in accepted and "train_size" not in options and (not in_zoo or args.train_size):
        options["train_size"] = int(spec.train_size)
    return options


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pda_repro.backends.base import BackendError  # noqa: PLC0415
    from pda_repro.preprocess import ImageReadError  # noqa: PLC0415

    return (CLIError, ImageReadError, BackendError, ValueError, KeyError, FileNotFoundError)


def _error_text(exc: BaseException) -> str:
    return one_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    del signum, frame
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """`pda-repro explain`: set up once, then explain every image."""

    user_errors = _user_error_types()
    if args.max_pixels is not None:
        from PIL import Image  # noqa: PLC0415

        Image.MAX_IMAGE_PIXELS = args.max_pixels
    out = OutputDir(Path(args.out))
    previous_handler = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # kill = Ctrl-C: checkpoint kept
    try:
        try:
            state, items = _prepare_explain(args, out)
        except CLIError:
            raise
        except OSError as exc:
            raise CLIError(describe(exc, "read")) from None
        except user_errors as exc:  # bad values found while setting up (sampler, spec, ...): one line
            if debug():
                raise
            raise CLIError(_error_text(exc)) from None
        return _explain_all(state, items)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        out.close()


def _run_inputs(
    args: argparse.Namespace, model: ResolvedModel, items: Sequence[tuple[str, Path | None, str | None]]
):
    """Every file or directory this run reads (none may lie inside --out)."""
    inputs = [Path(arg) for arg, _, _ in items] + [p for _, p, err in items if err is None and p is not None]
    inputs += [Path(model.spec.prototxt)] + ([model.weights] if model.weights else [])
    for option in (args.labels, args.fit_images):
        if option:
            inputs.append(Path(option))
    if args.sampler not in ("conditional", "marginal"):
        inputs.append(Path(args.sampler))
    return inputs


def _load_weights(args: argparse.Namespace, model: ResolvedModel) -> tuple[dict | None, list[str]]:
    """The --weights arrays, checked against the net (shapes, NaN/Inf) and the layers they lack."""
    if model.weights is None or model.is_module:
        return None, []
    from pda_repro import proto  # noqa: PLC0415
    from pda_repro.backends.caffemodel import read_caffemodel  # noqa: PLC0415
    from pda_repro.backends.fillers import missing_layers  # noqa: PLC0415

    try:
        arrays = read_caffemodel(model.weights)
    except OSError as exc:
        raise CLIError(describe(exc, "read weights", model.weights)) from None
    missing = missing_layers(proto.read_prototxt(model.spec.prototxt), arrays)
    if missing and not args.allow_missing_weights:
        raise CLIError(
            f"weights {str(model.weights)!r} lack {len(missing)} learnable layer(s) of model {model.spec.name}: "
            f"{', '.join(missing)}; pass --allow-missing-weights to give them seeded random values"
        )
    return arrays, missing


def _prepare_explain(
    args: argparse.Namespace, out: OutputDir
) -> tuple[RunState, list[tuple[str, Path | None, str | None]]]:
    """Everything shared by the images: model, net, labels, classes, sampler (fatal errors: exit 2)."""
    method_cls = METHODS[args.method]
    uses = method_cls.uses
    model = resolve_model(args.model, args.weights, _preprocessing(args), note=note)
    spec = model.spec
    _check_run_settings(args, spec, uses)
    options = _method_options(args, method_cls, spec, model.in_zoo)
    items = expand_images(args.images)
    if args.cluster is not None and method_cls.checkpointable:
        from pda_repro.parallel import make_executor  # noqa: PLC0415

        make_executor(args.workers, args.cluster, args.device)  # joins now: a bad address writes nothing
    out.open(_run_inputs(args, model, items))

    user_errors = _user_error_types()
    try:
        arrays, missing = _load_weights(args, model)
        with warnings.catch_warnings():  # missing layers are reported below, in one line
            warnings.filterwarnings("ignore", message="no weights given for layers")
            net = model.load(args.backend, args.device, args.batch, weights=arrays, scores=args.scores)
    except ImportError as exc:
        raise CLIError(f"backend {args.backend!r} is not available: {one_line(exc)}") from None
    except CLIError:
        raise
    except user_errors as exc:
        weights = f"weights {str(model.weights)!r}" if model.weights else "random weights"
        what = f"cannot load model {spec.name} with {weights} on {args.backend}/{args.device}"
        raise CLIError(f"{what}: {_error_text(exc)}") from None
    try:
        inference = net.resolve_inference(args.inference)
    except ValueError as exc:
        raise CLIError(f"--inference {args.inference}: {_error_text(exc)}") from None
    if (
        args.batch is None
    ):  # resolved here, for the inference mode: the batch is part of the recorded settings
        args.batch = net.window_batch(inference)
    run_warnings = [w for w in (_coverage_warning(args, spec, uses),) if w]
    if args.inference == "auto" and inference == "full" and args.backend == "torch":
        run_warnings.append(f"incremental inference off for this net: {net.incremental_note()}")
    if missing:
        run_warnings.append(
            f"weights {str(model.weights)!r} lack layers {', '.join(missing)}: they have seeded random "
            "values (--allow-missing-weights)"
        )
    if not model.in_zoo:
        base = net.model_spec if model.is_module else spec  # fitted to the model's input size
        spec = replace(base, num_classes=int(net.num_classes), input_shape=tuple(net.input_shape))
        model.spec = spec
    class_names = read_labels(spec, int(net.num_classes))
    class_request = resolve_class_request(args.classes, class_names)

    sampler, sampler_info = (None, {})
    if "sampler" in uses:
        cache = args.sampler_cache
        try:
            sampler, sampler_info = build_sampler(args.sampler, args.window, args.outer, spec, fit=args.fit_images,
                                                  n_patches=args.n_patches, cache_dir=cache, note=note)  # fmt: skip
        except OSError as exc:
            where = exc.filename or cache or paths.cache_dir("samplers")
            raise CLIError(describe(exc, "use the sampler cache", where)) from None
    fingerprints = {
        "prototxt_sha256": file_digest(spec.prototxt)
        if model.is_module and Path(spec.prototxt).is_file()
        else hashlib.sha256(net.net_param.SerializeToString(deterministic=True)).hexdigest(),
        "weights_sha256": file_digest(model.weights) if model.weights else None,
        "missing_weights": missing or None,
        "sampler_sha256": _fingerprint(sampler) if sampler is not None else None,
        "labels_sha256": file_digest(spec.class_names) if spec.class_names else None,
    }
    for w in run_warnings:
        note(f"warning: {w}")
    state = RunState(args, model, net, sampler, sampler_info, options, uses, class_request, out.path,
                     class_names, inference, fingerprints, run_warnings)  # fmt: skip
    return state, items


def _explain_one(state: RunState, path: Path, stem: str) -> dict[str, Any]:
    """Plan, compute and write one image in this process (its windows maybe on Ray workers)."""
    from pda_repro.explain import explain  # noqa: PLC0415 - looked up per call

    job = plan_image(state, path, stem)
    if isinstance(job, dict):
        return job
    try:
        result = explain(state.net, job.img.x, **job.kwargs)
    except KeyboardInterrupt:
        raise Interrupted(job.checkpoint) from None
    except OSError as exc:  # the checkpoint could not be written
        raise Fatal(describe(exc, "write the checkpoint", job.checkpoint)) from None
    except ValueError as exc:  # explain()'s own checks of the arguments
        raise CLIError(one_line(exc)) from None
    return write_result(state, job, result)


def _explain_all(state: RunState, items: list[tuple[str, Path | None, str | None]]) -> int:
    """Explain each image; a failing image prints one line and the others go on (exit 2 if any failed);
    an output that cannot be written ends the run.

    With several images and Ray workers (--workers N >= 2, --cluster, or auto once the first image
    went to Ray), whole images are the work units: while at least as many images are left as there
    are workers, each worker explains one image on one thread (its checkpoint in --out when Ray runs on
    this machine); the last images (fewer than the workers) have their windows spread over all of them.
    The maps are the same either way (one thread per worker, the same batches)."""
    paths = [p for _, p, err in items if err is None and p is not None]
    stems = iter(unique_stems(paths))
    run = ImageRun(state, len(items))
    pending: list[tuple[int, Path, str]] = []
    for i, (arg, path, problem) in enumerate(items, 1):
        if problem is not None or path is None:
            error(problem or f"bad image argument {arg!r}")
            run.failed += 1
        else:
            pending.append((i, path, next(stems)))
    while pending:
        workers = image_workers(state, run, len(pending))
        if workers < 2 or len(pending) < workers:
            i, path, stem = pending.pop(0)
            run.report(i, path, lambda p=path, s=stem: _explain_one(state, p, s))
            continue
        whole = len(pending) - len(pending) % workers
        explain_whole_images(state, run, pending[:whole], workers)
        del pending[:whole]
    if run.failed:
        note(f"{run.failed} of {run.total} image{'s' if run.total != 1 else ''} failed")
    return EXIT_USER_ERROR if run.failed else EXIT_OK


class ImageRun:
    """The per-image lines of an explain run and its count of failed images."""

    def __init__(self, state: RunState, total: int) -> None:
        self.state, self.total, self.failed = state, total, 0
        self.user_errors = _user_error_types()
        self.executor: tuple[str, int] | None = None  # what the last computed image ran on

    def report(self, i: int, path: Path, compute: Callable[[], dict[str, Any]]) -> None:
        """Run `compute` for image i and print its line; a user error fails this image only."""
        try:
            done = compute()
        except (Interrupted, Fatal):
            raise
        except self.user_errors as exc:
            if debug():
                raise
            text = _error_text(exc)
            error(text if str(path) in text else f"{path}: {text}")
            self.failed += 1
            return
        if done.get("skipped") is None:  # planned for the whole-image phase, computed later
            return
        files = done["files"]
        if done["skipped"]:
            note(f"[{i}/{self.total}] {path}: up to date in {files[2]} (use --force to recompute)")
            return
        s = done["summary"]
        params = s.get("params", {})
        self.executor = (str(params.get("executor", "in-process")), int(params.get("workers", 1)))
        best = s["explained"][0] if s["explained"] else s["top5"][0]
        print(
            f"[{i}/{self.total}] {path} -> {files[0].with_suffix('')}.{{npz,png,json}}: "
            f"{short_name(best['name'])} p={format_prob(best['prob'])}, {s['seconds']:.1f} s, "
            f"{params.get('images_forwarded', s['forward_passes'])} images forwarded",
            flush=True,
        )
