"""engines.memory: the network input's memory estimate, the refusal line, and engine.max_side's shapes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engines.base import EngineError, EngineSpec, PreprocessSpec
from engines.memory import activations_per_pixel, check_network_shape, estimated_bytes

# facebook/dpt-dinov2-*: no resize, ImageNet mean/std, zero padding to multiples of 14
DINOV2 = PreprocessSpec(518, 518, do_resize=False, pad_multiple=14)


def spec(pre: PreprocessSpec = DINOV2, per_pixel: float = 100.0, batch: int = 8) -> EngineSpec:
    return EngineSpec(task="depth", model_id="m", backend="torch-cpu-fp32", device="cpu", dtype=torch.float32,
                      preprocess=pre, max_batch=batch, activations_per_pixel=per_pixel)


def test_a_processor_that_does_not_resize_runs_at_the_source_size_padded() -> None:
    assert DINOV2.network_shape(720, 1280) == (728, 1288)
    assert DINOV2.network_shape(2160, 3840) == (2170, 3850)


def test_max_side_resizes_larger_sources_first_keeping_the_aspect_ratio() -> None:
    bounded = PreprocessSpec(518, 518, do_resize=False, pad_multiple=14, max_side=518)
    assert bounded.resized_shape(720, 1280) == (291, 518)
    assert bounded.network_shape(720, 1280) == (294, 518)  # then padded to multiples of 14, as transformers
    assert bounded.network_shape(2160, 3840) == (294, 518)
    assert bounded.network_shape(1280, 720) == (518, 294)  # portrait: the longest side is bounded
    assert bounded.resized_shape(180, 320) == (180, 320)  # smaller sources are left alone


def test_max_side_changes_nothing_for_a_processor_that_resizes() -> None:
    square = PreprocessSpec(384, 384, max_side=100)
    assert square.network_shape(720, 1280) == (384, 384)


def test_estimate_scales_with_pixels_batch_and_dtype() -> None:
    s = spec(per_pixel=100.0, batch=8)
    assert estimated_bytes(s, (100, 200)) == 100 * 100 * 200 * 8 * 4
    assert estimated_bytes(s, (100, 200), batch=1) == 100 * 100 * 200 * 4
    half = EngineSpec(task="depth", model_id="m", backend="torch-cuda-fp16", device="cuda", dtype=torch.float16,
                      preprocess=DINOV2, max_batch=8, activations_per_pixel=100.0)
    assert estimated_bytes(half, (100, 200)) == estimated_bytes(s, (100, 200)) // 2


def test_a_shape_beyond_the_device_is_refused_in_one_line_naming_shape_estimate_and_way_out() -> None:
    s = spec(per_pixel=165.0)
    need = estimated_bytes(s, (2170, 3850))
    with pytest.raises(EngineError) as e:
        check_network_shape(s, (2170, 3850), "source 'cam' (3840x2160)", available=need // 3)
    line = str(e.value)
    assert "\n" not in line
    assert "source 'cam' (3840x2160)" in line and "3850x2170" in line
    assert f"{need / 2**30:.1f} GiB" in line and "batch of 8" in line and "available RAM" in line
    assert "engine.max_side" in line and "--max-side" in line
    assert check_network_shape(s, (2170, 3850), "cam", available=need) == need  # fits: the estimate back


def test_the_estimate_reads_the_checkpoint_config() -> None:
    tiny = SimpleNamespace(fusion_hidden_size=32, backbone_config=SimpleNamespace(hidden_size=64, patch_size=14))
    small = SimpleNamespace(fusion_hidden_size=256, backbone_config=SimpleNamespace(hidden_size=384, patch_size=14))
    assert activations_per_pixel(tiny, "depth") < activations_per_pixel(small, "depth")
    seg = SimpleNamespace(fusion_hidden_size=256, hidden_size=1024, patch_size=16, num_labels=150)
    assert activations_per_pixel(seg, "segmentation") > activations_per_pixel(seg, "depth") + 149


def test_the_start_up_log_says_how_the_input_follows_the_source() -> None:
    assert PreprocessSpec(384, 384).describe() == "384x384"
    assert DINOV2.describe() == "the source's size (not resized, padded to multiples of 14)"
    bounded = PreprocessSpec(518, 518, do_resize=False, pad_multiple=14, max_side=518)
    assert bounded.describe() == "the source's size (longest side at most 518, padded to multiples of 14)"
    da = PreprocessSpec(518, 518, keep_aspect_ratio=True, ensure_multiple_of=14)
    assert da.describe() == "518x518 with the source's aspect ratio in multiples of 14"
