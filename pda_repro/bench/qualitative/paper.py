"""The paper's qualitative figures as data: which image sets (model, images, sampler, method runs) and
which figures (layout, columns, title, caption) `default_setup` describes.

    fig13_mnist                          MNIST digits: PDA (Alg. 1) vs efficient PDA (Alg. 2), marginal sampling
    fig14_efficientnet_lite0             real photos: PDA vs efficient PDA, conditional sampler
    fig15_efficientnet_lite0             PDA vs efficient PDA with the conditional mean replaced by a sample mean
    fig17_efficientnet_lite0_same_class  efficient PDA on a Fig 14 photo and on another image of its class
    fig18_efficientnet_lite0_invariance  efficient PDA on one photo rotated / flipped / cropped
    fig19_efficientnet_lite0             efficient PDA vs the simplified variant (Alg. 3)
    baselines_efficientnet_lite0         saliency, gradient×input, Grad-CAM, deep Taylor, occlusion (photos)
    baselines_mnist                      the same baselines on the MNIST digits

Captions and notes are built from the settings only (strides, windows, forward-pass counts from
WindowGrid); what a map cost is stored beside it by `maps` and drawn from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pda_repro.bench.qualitative.images import (
    box_words,
    invariance_subjects,
    mnist_marginal,
    mnist_subjects,
    photo_sampler,
    photo_subjects,
    same_class_subjects,
)
from pda_repro.bench.qualitative.specs import FigureSpec, ImageSet, MethodRun, SamplerSpec, Settings, Setup
from pda_repro.explain import load_model
from pda_repro.grid import WindowGrid

__all__ = ["default_setup"]

VGG_NOTE = (
    "the paper explains VGG16 with a sampler fitted on the 50,000 ILSVRC validation images; neither "
    "VGG16's trained weights nor ILSVRC images are reachable here, so the ImageNet-trained "
    "EfficientNet-Lite0 and the real photos shipped with scikit-image/matplotlib/opencv-doc stand in"
)


def _by_key(*runs: MethodRun) -> dict[str, MethodRun]:
    return {run.key: run for run in runs}


def _shared_runs(
    *,
    window: int,
    outer: int,
    samples: int,
    stride: int,
    sampler: str,
    grey: float,
    grey_label: str,
    deep_taylor_may_fail: bool,
) -> tuple[MethodRun, ...]:
    """The runs both image sets have: PDA (Alg. 1), efficient PDA (Alg. 2) and the baselines (gradients,
    Grad-CAM, deep Taylor, occlusion with `grey` windows)."""
    windowed = {"window": window, "outer": outer, "sampler": sampler, "stride": stride}
    return (
        MethodRun(key="pda", method="pda", label="PDA (Alg. 1)", samples=samples, **windowed),
        MethodRun(key="epda", method="epda", label="efficient PDA (Alg. 2)", **windowed),
        MethodRun(key="saliency", method="saliency", label="saliency"),
        MethodRun(key="gradient_x_input", method="gradient_x_input", label="gradient × input"),
        MethodRun(key="gradcam", method="gradcam", label="Grad-CAM"),
        MethodRun(
            key="deep_taylor", method="deep_taylor", label="deep Taylor", may_fail=deep_taylor_may_fail
        ),
        MethodRun(
            key="occlusion",
            method="occlusion",
            label=grey_label,
            window=window,
            stride=stride,
            options={"value": grey},
        ),
    )


def _photo_runs(s: Settings) -> dict[str, MethodRun]:
    """Figs 14, 15, 19 and the photo baselines: k×k windows, conditional sampler `gauss`; deep Taylor
    does not apply to EfficientNet-Lite0 (its error is stored and drawn)."""
    conditional = {"window": s.window, "outer": s.outer, "sampler": "gauss"}
    return _by_key(
        *_shared_runs(
            **conditional,
            samples=s.samples,
            stride=s.photo_stride,
            grey=0.0,
            grey_label="occlusion (grey)",
            deep_taylor_may_fail=True,
        ),
        MethodRun(
            key="epda_sampled",
            method="epda_sampled",
            label=f"efficient PDA, mean of {s.samples} samples",
            samples=s.samples,
            stride=s.photo_stride,
            **conditional,
        ),
        MethodRun(
            key="epda_full",
            method="epda",
            label="efficient PDA (Alg. 2)",
            stride=s.full_stride,
            **conditional,
        ),
        MethodRun(
            key="simplified_full",
            method="simplified",
            label="simplified (Alg. 3)",
            stride=s.full_stride,
            **conditional,
        ),
    )


def _mnist_runs(s: Settings) -> dict[str, MethodRun]:
    """Fig 13 and the MNIST baselines: marginal sampling (the outer size is not used by it)."""
    return _by_key(
        *_shared_runs(
            window=s.mnist_window,
            outer=s.mnist_window + 8,
            samples=s.mnist_samples,
            stride=s.mnist_stride,
            sampler="marginal",
            grey=0.5,
            grey_label="occlusion (grey 0.5)",
            deep_taylor_may_fail=False,
        )
    )


def _stride_notes(s: Settings, side: int, where: str) -> dict[str, str]:
    """Why each figure has the stride it has, in window and forward-pass counts (WindowGrid)."""
    k, S, st, full = s.window, s.samples, s.photo_stride, s.full_stride  # noqa: N806 - the paper's S

    def n_windows(stride: int) -> int:
        return WindowGrid(side, side, k, stride).n_windows

    def uncovered(stride: int) -> int:  # pixel rows/columns at the far edges that no window reaches
        return (side - k) % stride

    if st > 1:
        tiling = (
            " (= k, non-overlapping windows)"
            if st == k
            else f" (each pixel in up to {(k // st) ** 2} windows)"
        )
        photo = (
            f"stride {st}{tiling} for every method of the figure: stride 1 would be {n_windows(1) * S:,} "
            f"forward passes per photo for PDA; at stride {st}: {n_windows(st) * S:,} forward passes per photo. "
            + (
                f"The last {uncovered(st)} pixel rows/columns are covered by no window (grey in the maps)."
                if uncovered(st)
                else "Every pixel is covered."
            )
        )
    else:
        photo = f"stride 1: full resolution ({n_windows(1) * S:,} forward passes per photo for PDA), computed on {where}"
    inv = s.invariance_stride
    return {
        "photo": photo,
        "full": (
            f"stride {full}: efficient PDA needs one forward pass per window ({n_windows(full):,} per photo at "
            "this stride), the simplified variant one forward and one backward pass in all, so both are shown "
            "at full resolution (PDA, S times dearer, is not: see Figs 14/15)."
        ),
        "invariance": (
            f"stride {inv}: efficient PDA needs one forward pass per window ({n_windows(inv):,} per image at "
            f"this stride). The last {uncovered(inv)} pixel rows/columns are covered by no window (grey)."
        ),
    }


def default_setup(settings: Settings | None = None) -> Setup:
    """Image sets and figures of the paper reproduction (see the module docstring)."""
    from pda_repro import zoo
    from pda_repro.bench.inputs import SAMPLER_PATCHES
    from pda_repro.data import imagenet_class_names, photo_paths

    s = settings or Settings()
    eff, mn = zoo.get("efficientnet_lite0"), zoo.get("mnist")
    k, l = s.window, s.outer  # noqa: E741 - the paper's names
    where = "CPU" if s.device == "cpu" else s.device.upper()
    strides = _stride_notes(s, side=int(eff.input_shape[-1]), where=where)  # square inputs

    def imagenet_short() -> list[str]:
        return [n.split(",")[0].strip() for n in imagenet_class_names()]

    photo_gauss = SamplerSpec(
        f"PatchGaussian(k={k}, l={l}, 3 channels jointly) fitted on {len(photo_paths())} real photos "
        f"(scikit-image, matplotlib, opencv-doc) preprocessed for efficientnet_lite0; {SAMPLER_PATCHES:,} "
        f"patches, seed {s.seed} (pda_repro.bench.inputs.model_sampler, cached)",
        lambda: photo_sampler("efficientnet_lite0", k, l, s.seed),
    )
    mnist_marginal_spec = SamplerSpec(
        f"MarginalSampler(k={s.mnist_window}, mode='random'): each window filled with the same window of a "
        "training digit drawn at random from all 60,000 (marginal sampling, as the paper); efficient PDA "
        "uses their mean at that location",
        lambda: mnist_marginal(mn, s.mnist_window),
    )
    photo_runs = _photo_runs(s)
    epda_fine = MethodRun(
        key="epda",
        method="epda",
        label="efficient PDA (Alg. 2)",
        window=k,
        outer=l,
        stride=s.invariance_stride,
        sampler="gauss",
    )

    def photo_set(
        name: str, subjects: Callable[[], list[Any]], runs: dict[str, MethodRun], **extra: Any
    ) -> ImageSet:
        """An image set of real photos explained on EfficientNet-Lite0 with the conditional sampler."""
        return ImageSet(
            name=name,
            model=f"EfficientNet-Lite0 converted to Caffe ({s.backend} backend, {where})",
            weights=eff.weights_note,
            net=lambda: load_model(
                "efficientnet_lite0", backend=s.backend, device=s.device, batch=s.photo_batch
            ),
            subjects=subjects,
            class_names=imagenet_short,
            runs=runs,
            samplers={"gauss": photo_gauss},
            weights_file=eff.weights,
            batch=s.photo_batch,
            checkpoints=True,
            **extra,
        )

    image_sets = [
        photo_set(
            "efficientnet_lite0",
            lambda: photo_subjects(eff, s.photos),
            photo_runs,
            notes={"stride": strides["photo"], "model": VGG_NOTE},
        ),
        photo_set(
            "efficientnet_lite0_same_class",
            lambda: same_class_subjects(eff, s),
            {"epda": epda_fine},
            notes={
                "stride": f"stride {s.invariance_stride}, as Fig. 18",
                "photos": (
                    f"the paper shows a second husky; no second photo of a Fig. 14 class is reachable here, "
                    f"so a part of another photo ({s.same_class_photo}) that the net classifies as "
                    f"{s.same_class_of} stands in, beside the Fig. 14 {s.same_class_of} photo"
                ),
                "model": VGG_NOTE,
            },
        ),
        photo_set(
            "efficientnet_lite0_invariance",
            lambda: invariance_subjects(eff, s),
            {"epda": epda_fine},
            class_from="original",
            notes={
                "stride": strides["invariance"],
                "class": "every row explains the class predicted for the original photo",
                "model": VGG_NOTE,
            },
        ),
        ImageSet(
            name="mnist",
            model=f"MNIST LeNet (2 conv, 2 max-pool, 2 FC; {s.backend} backend, {where})",
            weights=mn.weights_note,
            net=lambda: load_model("mnist", backend=s.backend, device=s.device, batch=s.mnist_batch),
            subjects=lambda: mnist_subjects(mn),
            class_names=lambda: [str(d) for d in range(10)],
            runs=_mnist_runs(s),
            samplers={"marginal": mnist_marginal_spec},
            weights_file=mn.weights,
            batch=s.mnist_batch,
            notes={"outer": "outer l is not used by marginal sampling (it only conditions the Gaussian)"},
        ),
    ]
    return Setup({image_set.name: image_set for image_set in image_sets}, _figures(s, strides))


def _figures(s: Settings, strides: dict[str, str]) -> list[FigureSpec]:
    """The figures, in the order they are computed and listed."""
    k, l, S, st = s.window, s.outer, s.samples, s.photo_stride  # noqa: E741, N806 - the paper's names
    kl = f"k={k}×{k}, l={l}×{l}"
    mk = f"{s.mnist_window}×{s.mnist_window}"
    pda_common = f"{kl}, S={S} samples per window, stride {st}"
    correct = "class = the predicted (correct) class."
    return [
        FigureSpec(
            name="fig13_mnist",
            key="fig13",
            image_set="mnist",
            layout="pairs",
            columns=("pda", "epda"),
            title="Fig. 13: MNIST — PDA (Alg. 1) vs efficient PDA (Alg. 2)",
            caption=f"window {mk}, marginal sampling over the MNIST training digits, S={s.mnist_samples} (PDA), "
            f"stride {s.mnist_stride}; class = the predicted class.",
        ),
        FigureSpec(
            name="fig14_efficientnet_lite0",
            key="fig14",
            image_set="efficientnet_lite0",
            layout="pairs",
            columns=("pda", "epda"),
            title="Fig. 14: PDA (Alg. 1) vs efficient PDA (Alg. 2)",
            caption=f"{pda_common}; conditional sampler; {correct}",
        ),
        FigureSpec(
            name="fig15_efficientnet_lite0",
            key="fig15",
            image_set="efficientnet_lite0",
            layout="pairs",
            columns=("pda", "epda_sampled"),
            title="Fig. 15: PDA vs efficient PDA with the conditional mean replaced by the empirical mean of "
            f"{S} samples",
            caption=f"{pda_common}; conditional sampler; {correct}",
        ),
        FigureSpec(
            name="fig19_efficientnet_lite0",
            key="fig19",
            image_set="efficientnet_lite0",
            layout="pairs",
            columns=("epda_full", "simplified_full"),
            title="Fig. 19: efficient PDA (Alg. 2) vs its simplified version (Alg. 3, one backward pass)",
            caption=f"{kl}, stride {s.full_stride}; simplified = first-order difference of P(c|x) (Eq. 38, "
            "not log-odds).",
            notes={"stride": strides["full"]},
        ),
        FigureSpec(
            name="fig17_efficientnet_lite0_same_class",
            key="fig17",
            image_set="efficientnet_lite0_same_class",
            layout="pairs",
            columns=("epda",),
            title=f"Fig. 17: efficient PDA on another photo of a Fig. 14 class ({s.same_class_of})",
            caption=f"{kl}, stride {s.invariance_stride}; rows: the Fig. 14 photo, then a crop of "
            f"{s.same_class_photo} ({box_words(s.same_class_crop)} of the photo); {correct}",
        ),
        FigureSpec(
            name="fig18_efficientnet_lite0_invariance",
            key="fig18",
            image_set="efficientnet_lite0_invariance",
            layout="pairs",
            columns=("epda",),
            title="Fig. 18: invariance — efficient PDA on a rotated, flipped and cropped photo",
            caption=f"{kl}, stride {s.invariance_stride}; rows: original, rotated {s.invariance_angle:+g}°, "
            f"flipped, cropped, rotated {-s.invariance_angle:+g}° (rotations cut the largest square without "
            "empty corners).",
        ),
        FigureSpec(
            name="baselines_efficientnet_lite0",
            key="baselines",
            image_set="efficientnet_lite0",
            layout="grid",
            columns=("epda", "saliency", "gradient_x_input", "gradcam", "deep_taylor", "occlusion"),
            title="Baselines on the Fig. 14 photos (efficient PDA for reference)",
            caption=f"gradients of the class logit; Grad-CAM on the last conv feature map; occlusion: k={k}×{k} "
            f"grey (0) windows, stride {st}, same WE as PDA. Deep Taylor (z+/zB rules) does not apply to "
            "EfficientNet-Lite0 (BatchNorm/Scale, ReLU6, Eltwise): it is shown on MNIST (baselines_mnist.png).",
        ),
        FigureSpec(
            name="baselines_mnist",
            key="baselines",
            image_set="mnist",
            layout="grid",
            columns=("pda", "epda", "saliency", "gradient_x_input", "gradcam", "deep_taylor", "occlusion"),
            title="Baselines on the Fig. 13 digits (deep Taylor shown here: it needs a ReLU/max-pool/linear net)",
            caption=f"PDA/efficient PDA as Fig. 13; gradients of the class logit; Grad-CAM on conv2; deep Taylor "
            f"z+/zB of the logit; occlusion: {mk} windows filled with 0.5, stride {s.mnist_stride}, WE as PDA.",
        ),
    ]
