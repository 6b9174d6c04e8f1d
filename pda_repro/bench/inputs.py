"""Images and samplers the experiments run on.

* ImageNet-style nets: the real photos of :func:`pda_repro.data.photo_paths` (scikit-image, matplotlib's
  grace_hopper, Debian opencv-doc), preprocessed per the zoo entry. Where an experiment needs more images
  than there are photos (Fig 11: 200), the extra ones are seeded random crops (50-95 % of the shorter
  side) of the photos, every second one mirrored — named ``<photo>/crop<i>[-flip]`` in the results.
* mnist: real MNIST digits (test split for the explained images, train split for fitting the sampler).
* The conditional sampler: :class:`pda_repro.sampling.PatchGaussian` fitted (and cached) on the same
  kind of images the net is explained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pda_repro.bench.context import BenchContext

TIMING_PHOTO = "chelsea"  # the image Fig 12 explains on ImageNet-style nets (a cat; any photo would do)
SAMPLER_PATCHES = 20_000


def is_mnist_like(spec: Any) -> bool:
    return tuple(spec.input_shape) == (1, 28, 28)


def photo_inputs(spec: Any) -> list[tuple[str, np.ndarray]]:
    """(name, C×H×W float32) of every real photo, preprocessed for the net (resize + centre crop)."""
    from pda_repro.data import photo_paths
    from pda_repro.preprocess import load_image

    paths = photo_paths()
    if not paths:
        raise RuntimeError("no real photos found (scikit-image / matplotlib / opencv-doc); run `make setup`")
    return [(name, load_image(path, spec).x) for name, path in paths.items()]


def mnist_inputs(spec: Any, split: str, count: int, start: int = 0) -> list[tuple[str, np.ndarray]]:
    """(name, 1×28×28 float32) of MNIST digits ``start .. start+count-1`` of ``split``, preprocessed."""
    from pda_repro.data import mnist
    from pda_repro.preprocess import to_network_input

    images, labels = mnist(split)
    if start + count > len(images):
        raise ValueError(f"MNIST {split} has {len(images)} images, asked for {start}..{start + count - 1}")
    out = []
    for i in range(start, start + count):
        rgb = np.repeat(images[i][:, :, None], 3, axis=2)
        out.append((f"mnist-{split}-{i}-label{int(labels[i])}", to_network_input(rgb, spec)))
    return out


def timing_image(ctx: BenchContext, model: str) -> tuple[np.ndarray, str]:
    """The image Figure 12 explains: the 'chelsea' photo (ImageNet-style nets) or MNIST test digit 0."""
    spec = ctx.spec(model)
    if is_mnist_like(spec):
        name, x = mnist_inputs(spec, "test", 1)[0]
        return x, name
    from pda_repro.data import photo_paths
    from pda_repro.preprocess import load_image

    paths = photo_paths()
    name = TIMING_PHOTO if TIMING_PHOTO in paths else next(iter(paths))
    return load_image(paths[name], spec).x, name


def crop_variants(spec: Any, count: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """``count`` distinct inputs from the real photos: each photo as preprocessed, then seeded random crops
    (side 50-95 % of the photo's shorter side, random position, resized to the input), every second one
    mirrored left-right, cycling over the photos."""
    from PIL import Image

    from pda_repro.data import photo_paths
    from pda_repro.preprocess import load_image, read_rgb, to_network_input

    paths = list(photo_paths().items())
    if not paths:
        raise RuntimeError("no real photos found (scikit-image / matplotlib / opencv-doc); run `make setup`")
    _, out_h, out_w = spec.input_shape
    resample = Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR
    out: list[tuple[str, np.ndarray]] = []
    cache: dict[str, np.ndarray] = {}
    for i in range(count):
        name, path = paths[i % len(paths)]
        variant = i // len(paths)
        if variant == 0:
            out.append((name, load_image(path, spec).x))
            continue
        rgb = cache.setdefault(name, read_rgb(path))
        height, width = rgb.shape[:2]
        side = int(round(min(height, width) * rng.uniform(0.5, 0.95)))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = rgb[top : top + side, left : left + side]
        flip = variant % 2 == 1
        if flip:
            crop = crop[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(crop)).resize((out_w, out_h), resample=resample)
        label = f"{name}/crop{variant}" + ("-flip" if flip else "")
        out.append((label, to_network_input(np.asarray(im, dtype=np.uint8), spec)))
    return out


def distinct_images(ctx: BenchContext, model: str, count: int) -> tuple[list[tuple[str, np.ndarray]], str]:
    """``count`` distinct real images for ``model`` and a sentence saying where they come from."""
    spec = ctx.spec(model)
    if is_mnist_like(spec):
        return mnist_inputs(spec, "test", count), f"the first {count} MNIST test digits"
    from pda_repro.data import photo_paths

    n_photos = len(photo_paths())
    images = crop_variants(spec, count, ctx.rng("photo-variants", model))
    if count <= n_photos:
        return images, f"{count} real photos (scikit-image, matplotlib, opencv-doc)"
    return images, (
        f"{count} inputs made from the {n_photos} real photos available (scikit-image, matplotlib, "
        "opencv-doc): each photo once as preprocessed, then seeded random square crops (50-95 % of the "
        "shorter side), every second one mirrored"
    )


def model_sampler(spec: Any, model: str, window: int, outer: int, seed: int) -> Any:
    """The conditional patch Gaussian (paper Sec. 3.2) for the inputs of ``model`` (zoo spec ``spec``),
    fitted once with ``seed`` and cached on disk by the sampler.

    ImageNet-style nets: fitted on the real photos preprocessed for the net; mnist: on the first 10,000
    MNIST training digits."""
    from pda_repro.sampling import PatchGaussian

    channels = spec.input_shape[0]
    if is_mnist_like(spec):

        def images() -> np.ndarray:
            return np.stack([x for _, x in mnist_inputs(spec, "train", 10_000)])

        source = "mnist-train[0:10000]"
    else:
        from pda_repro.data import photo_paths

        names = sorted(photo_paths())

        def images() -> list[np.ndarray]:
            return [x for _, x in photo_inputs(spec)]

        source = "photos:" + ",".join(names)
    tag = f"{model}-{spec.channel_order}-mean{','.join(f'{m:g}' for m in spec.mean)}-scale{spec.scale:g}"
    return PatchGaussian.fit_cached(
        images,
        window,
        outer,
        channels=channels,
        tag=tag,
        source=source,
        n_patches=SAMPLER_PATCHES,
        seed=seed,
    )
