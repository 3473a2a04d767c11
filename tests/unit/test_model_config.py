"""Pure checks of model-type dispatch and the processor's network shape (no weights, no files)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any

import pytest

from engines.base import ModelLoadError, PreprocessSpec
from engines.loading import SUPPORTED, inspect_config, preprocess_spec


def _dinov2() -> dict[str, Any]:
    return {"model_type": "dinov2", "hidden_size": 64}


@pytest.mark.parametrize(("task", "cfg", "kind", "arch"), [
    ("depth", {"model_type": "dpt", "architectures": ["DPTForDepthEstimation"]}, "relative_inverse", "DPT (ViT)"),
    ("depth", {"model_type": "dpt", "is_hybrid": True, "backbone_config": {"model_type": "bit"}},
     "relative_inverse", "DPT-Hybrid (BiT + ViT)"),
    ("depth", {"model_type": "dpt", "backbone_config": {"model_type": "beit"}}, "relative_inverse",
     "DPT (BEiT backbone)"),
    ("depth", {"model_type": "dpt", "backbone_config": {"model_type": "swinv2"}}, "relative_inverse",
     "DPT (SwinV2 backbone)"),
    ("depth", {"model_type": "dpt", "backbone_config": _dinov2()}, "relative_inverse", "DPT (DINOv2 backbone)"),
    ("depth", {"model_type": "depth_anything", "backbone_config": _dinov2()}, "relative_inverse",
     "Depth Anything (relative)"),
    ("depth", {"model_type": "depth_anything", "backbone_config": _dinov2(), "depth_estimation_type": "metric",
               "max_depth": 80}, "metric", "Depth Anything (metric, up to 80 m)"),
    ("segmentation", {"model_type": "dpt", "architectures": ["DPTForSemanticSegmentation"]}, None, "DPT (ViT)"),
])
def test_supported_model_types(task: Any, cfg: dict[str, Any], kind: str | None, arch: str) -> None:
    info = inspect_config(task, "some/model", cfg)
    assert info.depth_kind == kind
    assert info.architecture == arch
    if kind == "metric":
        assert info.max_depth == 80.0
        assert info.class_name == "DepthAnythingForDepthEstimation"


@pytest.mark.parametrize(("task", "cfg", "needles"), [
    ("depth", {"model_type": "glpn", "architectures": ["GLPNForDepthEstimation"]}, ["'glpn'", "depth_anything"]),
    ("depth", {"model_type": "zoedepth"}, ["'zoedepth'", "ZoeDepth", "not supported"]),
    ("segmentation", {"model_type": "vit", "architectures": ["ViTForImageClassification"]},
     ["'vit'", "ViTForImageClassification", "dpt"]),
    ("segmentation", {"model_type": "segformer"}, ["'segformer'"]),
    ("segmentation", {"model_type": "depth_anything"}, ["'depth_anything'", "--model depth="]),
    ("depth", {}, ["no model_type"]),
    ("depth", {"model_type": "dpt", "architectures": ["DPTForSemanticSegmentation"]},
     ["segmentation checkpoint", "--model segmentation="]),
    ("segmentation", {"model_type": "dpt", "architectures": ["DPTForDepthEstimation"]},
     ["depth checkpoint", "--model depth="]),
    ("depth", {"model_type": "dpt", "backbone_config": {"model_type": "convnext"}}, ["'convnext'", "DINOv2"]),
    ("depth", {"model_type": "depth_anything", "backbone_config": _dinov2(), "depth_estimation_type": "odd"},
     ["'odd'", "relative and metric"]),
])
def test_refused_model_types_get_one_line(task: Any, cfg: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ModelLoadError) as e:
        inspect_config(task, "some/model", cfg)
    msg = str(e.value)
    assert "\n" not in msg and "some/model" in msg
    for needle in needles:
        assert needle in msg, msg


def test_supported_lists_name_every_family() -> None:
    assert "depth_anything" in SUPPORTED["depth"] and "depth_anything" not in SUPPORTED["segmentation"]
    for name in ("BEiT", "SwinV2", "DINOv2", "hybrid"):
        assert name in SUPPORTED["depth"]


def _transformers_shape(src_h: int, src_w: int, size: int, keep: bool, multiple: int) -> tuple[int, int]:
    import numpy as np
    from transformers.models.dpt.image_processing_pil_dpt import get_resize_output_image_size

    out = get_resize_output_image_size(np.zeros((3, src_h, src_w)), (size, size), keep, multiple)
    return int(out.height), int(out.width)


SOURCES = [(720, 1280), (1080, 1920), (480, 640), (1280, 720), (240, 320), (2160, 3840), (97, 211), (518, 518)]


@pytest.mark.parametrize(("size", "keep", "multiple"), [
    (384, False, 1), (518, True, 14), (512, True, 32), (98, True, 14), (256, False, 32), (196, True, 1),
])
def test_network_shape_is_the_processors(size: int, keep: bool, multiple: int) -> None:
    spec = PreprocessSpec(size, size, keep_aspect_ratio=keep, ensure_multiple_of=multiple)
    for src_h, src_w in SOURCES:
        assert spec.resized_shape(src_h, src_w) == _transformers_shape(src_h, src_w, size, keep, multiple)
        assert spec.network_shape(src_h, src_w) == spec.resized_shape(src_h, src_w)
    assert (spec.fixed_shape is None) == keep


def test_depth_anything_shape_at_518_for_720p() -> None:
    spec = PreprocessSpec(518, 518, keep_aspect_ratio=True, ensure_multiple_of=14)
    assert spec.network_shape(720, 1280) == (518, 924)
    assert spec.network_shape(1280, 720) == (924, 518)


def test_padding_is_centred_to_the_divisor() -> None:
    spec = PreprocessSpec(196, 196, keep_aspect_ratio=True, pad_multiple=14)
    for (src_h, src_w), div in itertools.product(SOURCES, [14]):
        h, w = spec.resized_shape(src_h, src_w)
        top, bottom, left, right = spec.padding(h, w)
        nh, nw = spec.network_shape(src_h, src_w)
        assert nh % div == 0 and nw % div == 0 and nh == h + top + bottom and nw == w + left + right
        assert top == (nh - h) // 2 and left == (nw - w) // 2
        assert nh - h < div and nw - w < div
    assert PreprocessSpec(10, 10, pad_multiple=14).network_shape(5, 5) == (14, 14)


def test_no_resize_keeps_the_source_shape() -> None:
    spec = PreprocessSpec(384, 384, do_resize=False, pad_multiple=14)
    assert spec.network_shape(720, 1280) == (math.ceil(720 / 14) * 14, math.ceil(1280 / 14) * 14)
    assert spec.fixed_shape is None


def test_preprocess_spec_reads_every_processor_setting() -> None:
    proc = SimpleNamespace(size={"height": 518, "width": 518}, resample=3, image_mean=[0.485, 0.456, 0.406],
                           image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255, do_rescale=True,
                           do_normalize=True, keep_aspect_ratio=True, ensure_multiple_of=14, do_resize=True,
                           do_pad=True, size_divisor=14)
    spec = preprocess_spec(proc)
    assert (spec.height, spec.width, spec.keep_aspect_ratio, spec.ensure_multiple_of) == (518, 518, True, 14)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.pad_multiple == 14 and spec.resample == "bicubic"
    off = preprocess_spec(SimpleNamespace(size={"height": 8, "width": 8}, do_normalize=False, do_rescale=False))
    assert off.mean == (0.0, 0.0, 0.0) and off.std == (1.0, 1.0, 1.0) and off.rescale_factor == 1.0


def test_unsupported_resample_is_one_line() -> None:
    with pytest.raises(ModelLoadError, match="lanczos") as e:
        preprocess_spec(SimpleNamespace(size={"height": 8, "width": 8}, resample=1), where="x/preprocessor_config.json")
    assert "\n" not in str(e.value) and "x/preprocessor_config.json" in str(e.value)
