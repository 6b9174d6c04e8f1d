"""`pda-repro evaluate maps/*.npz`: the faithfulness metrics of `pda-repro explain` outputs.

Each <stem>.npz written by `pda-repro explain` has the maps and the settings; the <stem>.json beside it names
the image. For every map (one per explained class) and, unless --no-controls, a random and an all-equal
control map of the same image, this prints and writes (--out, default ./evaluation.csv + .json) deletion /
insertion AUC per fill, ROAD MoRF / LeRF AUC and the faithfulness correlation (pda_repro.evaluate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from pda_repro.cli.argtypes import positive_int as _positive

FILL_CHOICES = ("mean", "blur", "zeros")
HELP = "faithfulness metrics (deletion/insertion, ROAD, faithfulness correlation) of explain outputs (.npz)"
DESCRIPTION = __doc__.split("\n\n", 1)[1]


def _fills(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in FILL_CHOICES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--fills takes a comma list of {', '.join(FILL_CHOICES)}, got {text!r}"
        )
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `pda-repro evaluate`."""
    parser.add_argument("maps", nargs="+", help="<stem>.npz files written by `pda-repro explain`")
    parser.add_argument(
        "--fills",
        type=_fills,
        default=FILL_CHOICES,
        help="fills of the deletion/insertion curves: mean (the model's conditional patch Gaussian, zoo "
        "models only), blur, zeros (default: all three)",
    )
    parser.add_argument(
        "--block", type=_positive, default=None, help="block size (default: the map's window k, else 10)"
    )
    parser.add_argument("--steps", type=_positive, default=20, help="points of each deletion/insertion curve")
    parser.add_argument(
        "--runs", type=_positive, default=30, help="random subsets of the faithfulness correlation"
    )
    parser.add_argument(
        "--images", default=None, help="directory to find the images in (default: the path in <stem>.json)"
    )
    parser.add_argument(
        "--no-controls", action="store_true", help="skip the random and all-equal control maps"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (ties, subsets, noise)")
    parser.add_argument(
        "--out", default="evaluation.csv", help="CSV to write (a .json with the settings beside it)"
    )


def _read(path: Path, images: str | None) -> dict[str, Any]:
    from pda_repro.cli import CLIError

    if not path.is_file():
        raise CLIError(f"map file not found: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            maps = np.asarray(f["maps"], dtype=np.float32)
            classes = [int(c) for c in f["classes"]]
            settings = json.loads(str(f["settings"]))
    except (OSError, KeyError, ValueError) as exc:
        raise CLIError(f"{path} is not a `pda-repro explain` .npz (maps, classes, settings): {exc}") from None
    summary_path = path.with_suffix(".json")
    if not summary_path.is_file():
        raise CLIError(f"{summary_path} is missing: it names the image of {path.name}")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CLIError(f"{summary_path} is not JSON: {exc}") from None
    image = Path(summary.get("image", ""))
    if images is not None:
        image = Path(images) / image.name
    if not image.is_file():
        raise CLIError(f"image {str(image)!r} of {path.name} not found (pass --images DIR)")
    return {"maps": maps, "classes": classes, "settings": settings, "summary": summary, "image": image}


def run(args: argparse.Namespace) -> int:
    """Score every map of the .npz files and write the CSV (and its JSON)."""
    import pandas as pd

    from pda_repro.bench.results import atomic_write_csv, atomic_write_json
    from pda_repro.cli import CLIError
    from pda_repro.evaluate import constant_map, evaluate_map, fill_image, random_map
    from pda_repro.explain import load_model
    from pda_repro.preprocess import load_image

    entries = [(Path(p), _read(Path(p), args.images)) for p in args.maps]
    nets: dict[tuple, Any] = {}
    rows = []
    rng = np.random.default_rng(args.seed)
    for path, e in entries:
        s = e["settings"]
        key = (s.get("model"), s.get("prototxt"), s.get("weights"), s.get("backend", "torch"))
        if key not in nets:
            try:
                nets[key] = load_model(
                    s.get("model") or s["prototxt"], backend=key[3], weights=s.get("weights")
                )
            except (ValueError, KeyError, OSError, ImportError) as exc:
                raise CLIError(f"cannot load the model of {path.name}: {exc}") from None
        net = nets[key]
        spec = getattr(net, "model_spec", None)
        if spec is None and "mean" in args.fills:
            raise CLIError(
                f"--fills mean needs a zoo model; {path.name} was made with {key[1]} (use --fills blur,zeros)"
            )
        x = load_image(e["image"], spec).x
        block = args.block or int(s.get("window") or 10)
        sampler = None
        if "mean" in args.fills:
            from pda_repro.bench.qualitative import photo_sampler

            outer = int(s.get("outer") or block + 8)
            sampler = photo_sampler(spec.name, block, outer, 0)
        try:
            fills = {f: fill_image(x, f, block, sampler) for f in args.fills}
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        maps = [
            (f"{s.get('method', e['summary'].get('method'))}", c, m)
            for c, m in zip(e["classes"], e["maps"], strict=True)
        ]
        if not args.no_controls:
            shape = x.shape[1:]
            maps += [("random", c, random_map(shape, rng)) for c in e["classes"]]
            maps += [("constant", c, constant_map(shape)) for c in e["classes"]]
        for label, cls, m in maps:
            try:
                scores, _ = evaluate_map(net, x, m, cls, block, sampler, tuple(args.fills), args.steps,
                                         fc_runs=args.runs, rng=rng, fill_images=fills)  # fmt: skip
            except ValueError as exc:
                raise CLIError(f"{path.name}: {exc}") from None
            rows.append({"file": str(path), "image": str(e["image"]), "map": label, "class": cls,
                         "model": s.get("model"), "backend": key[3], "window": s.get("window"),
                         "stride": s.get("stride"), "samples": s.get("samples"), **scores})  # fmt: skip
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    atomic_write_csv(out, frame)
    atomic_write_json(out.with_suffix(".json"), {"command": "pda-repro evaluate", "files": args.maps,
                                                 "fills": list(args.fills), "seed": args.seed, "rows": len(rows)})  # fmt: skip
    shown = (
        ["map", "class"]
        + [c for c in frame.columns if c.endswith("_auc") or "_auc_" in c]
        + ["faithfulness_correlation"]
    )
    with pd.option_context(
        "display.width", 200, "display.max_columns", 40, "display.float_format", "{:.3f}".format
    ):
        print(frame[["file", *shown]].to_string(index=False))
    print(f"evaluate: {len(rows)} rows -> {out}")
    return 0
