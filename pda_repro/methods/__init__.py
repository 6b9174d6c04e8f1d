"""Explanation methods by name (a timm-like registry): PDA, efficient PDA and the paper's baselines.

METHODS["epda"]        -> the method class; explain(net, image, method="epda", ...) builds it
available_methods()    -> the names
get_method(name)       -> the class, or ValueError listing the known names
"""

from __future__ import annotations

from pda_repro.methods.base import Method, MethodResult, RunContext
from pda_repro.methods.deep_taylor import DeepTaylor, deep_taylor_relevance
from pda_repro.methods.efficient import EfficientPDA, SampledEfficientPDA
from pda_repro.methods.gradients import GradCAM, GradientXInput, Saliency, default_cam_blob, upsample_bilinear
from pda_repro.methods.occlusion import Occlusion
from pda_repro.methods.pda import PDA
from pda_repro.methods.simplified import SimplifiedPDA
from pda_repro.methods.windows import (
    Imputation,
    WindowMethod,
    average_over_windows,
    laplace_correct,
    log2_odds,
    run_window_loop,
    weight_of_evidence,
)

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        PDA,
        EfficientPDA,
        SampledEfficientPDA,
        SimplifiedPDA,
        Occlusion,
        Saliency,
        GradientXInput,
        GradCAM,
        DeepTaylor,
    )
}


def available_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = [
    "METHODS",
    "PDA",
    "DeepTaylor",
    "EfficientPDA",
    "GradCAM",
    "GradientXInput",
    "Imputation",
    "Method",
    "MethodResult",
    "Occlusion",
    "RunContext",
    "Saliency",
    "SampledEfficientPDA",
    "SimplifiedPDA",
    "WindowMethod",
    "available_methods",
    "average_over_windows",
    "deep_taylor_relevance",
    "default_cam_blob",
    "get_method",
    "laplace_correct",
    "log2_odds",
    "run_window_loop",
    "upsample_bilinear",
    "weight_of_evidence",
]
