"""The arguments of `pda-repro explain`, and what they name: the classes to explain per image and the
output names of the images."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pda_repro.cli.argtypes import (
    non_negative_int,
    option_pair,
    positive_float,
    positive_int,
    suggest,
    workers,
)
from pda_repro.cli.errors import CLIError
from pda_repro.methods import METHODS
from pda_repro.resolve import DEFAULT_MODEL, parse_mean

DEFAULT_OUT = "pda-out"
DESCRIPTION = (
    "Explain why a net classifies images as it does (Prediction Difference Analysis and baselines). "
    "Writes <stem>.npz (maps), <stem>.png (input | heatmap | overlay; red = evidence for, blue = against) and "
    "<stem>.json (top-5, settings, time) per image into --out. Ctrl-C keeps a checkpoint; rerunning resumes."
)


def _method_type(value: str) -> str:
    known = sorted(METHODS)
    if value not in known:
        raise argparse.ArgumentTypeError(
            f"unknown method {value!r}{suggest(value, known)}; known methods: {', '.join(known)}"
        )
    return value


def _mean(value: str) -> tuple[float, ...]:
    try:
        return parse_mean(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `pda-repro explain`."""
    from pda_repro import zoo  # noqa: PLC0415

    methods = sorted(METHODS)
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
    parser.add_argument("--window", type=positive_int, default=10, help="window size k (window methods)")
    parser.add_argument(
        "--outer", type=positive_int, default=18, help="outer patch size l of the conditional sampler"
    )
    parser.add_argument(
        "--samples", type=positive_int, default=10, help="samples S per window (pda, epda_sampled)"
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        default=2,
        help="stride between windows (default 2: the largest stride whose maps keep the stride-1 map's ranking "
        "on every model measured, README 'Choosing the stride'; 1 = every window, the paper's setting)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
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
        type=workers,
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
        "--n-patches", type=positive_int, default=20_000, help="patches for fitting the conditional sampler"
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
        type=option_pair,
        default=[],
        metavar="KEY=VALUE",
        help="a method option, e.g. -O value=0.5 (occlusion's fill) or -O blob=conv5 (gradcam's layer)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampling")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--checkpoint-seconds",
        type=positive_float,
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
        type=positive_int,
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
        type=_mean,
        default=None,
        help="mean pixel on the 0..255 scale, comma separated in channel order (default 104,117,123 / 0)",
    )
    group.add_argument(
        "--scale",
        type=positive_float,
        default=None,
        help="multiplied after the mean subtraction (default 1)",
    )
    group.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        help="shorter side before the centre crop (default 256 for 3 channels)",
    )
    group.add_argument("--labels", default=None, help="class names, one per line")
    group.add_argument(
        "--train-size", type=positive_int, default=None, help="N of the Laplace correction (default 100000)"
    )


def unique_stems(paths: Sequence[Path]) -> list[str]:
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


def resolve_class_request(items: Sequence[str], names: Sequence[str]) -> list[int | str]:
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
                f"{suggest(_normalise_name(text), list(lookup))}; use topN, an index or a label"
            )
    return out


def classes_for(request: Sequence[int | str], probs: np.ndarray) -> list[int]:
    order = np.argsort(-probs, kind="stable")
    chosen: list[int] = []
    for item in request:
        picks = [int(c) for c in order[: int(item[3:])]] if isinstance(item, str) else [int(item)]
        chosen.extend(c for c in picks if c not in chosen)
    return chosen
