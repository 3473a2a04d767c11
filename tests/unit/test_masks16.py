"""More than 256 classes give 16-bit masks, never wrapped class ids."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.sinks.encode import encode_png
from pipeline.stages.depth import depth_summary
from pipeline.stages.masks import class_fractions, segment


def winning(cls: int, num: int, h: int = 12, w: int = 16) -> torch.Tensor:
    logits = torch.zeros(num, h, w)
    logits[cls] = 5.0
    logits[3, :, : w // 2] = 9.0  # left half: class 3
    return logits


@pytest.mark.parametrize("channels_last", [False, True])
def test_class_260_of_300_is_260_not_4(channels_last: bool) -> None:
    logits = winning(260, 300)
    if channels_last:
        logits = logits[None].contiguous(memory_format=torch.channels_last)[0]
    mask = segment(logits, (12, 16))
    assert int(mask.max()) == 260
    fr = class_fractions(mask, 300)
    assert fr == {3: 0.5, 260: 0.5}
    d = depth_summary(torch.arange(12 * 16, dtype=torch.float32).reshape(12, 16), mask, num_classes=300)
    assert set(d["per_class"]) == {"3", "260"}


def test_up_to_256_classes_stay_8_bit() -> None:
    from pipeline.frames import mask_dtype_for

    assert segment(winning(255, 256), (12, 16)).dtype == torch.uint8
    assert mask_dtype_for(256) == "uint8" and mask_dtype_for(257) == "uint16"
    with pytest.raises(ValueError):
        mask_dtype_for(70000)


def test_16_bit_masks_round_trip_through_png() -> None:
    from pipeline.stages.masks import mask_array

    mask = mask_array(segment(winning(299, 300), (12, 16)))
    assert mask.dtype == np.uint16
    back = np.asarray(Image.open(io.BytesIO(encode_png(mask))))
    assert back.dtype == np.uint16 and np.array_equal(back, mask) and int(back.max()) == 299
    eight = np.array([[1, 255]], dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(eight)))), eight)


def test_16_bit_masks_get_colours_in_pictures() -> None:
    from pipeline.overlay import PALETTE, blend_mask

    mask = np.array([[260, 4]], dtype=np.uint16)
    out = blend_mask(None, mask)
    assert out.shape == (1, 2, 3) and np.array_equal(out[0, 0], PALETTE[260 % len(PALETTE)])
    assert np.array_equal(blend_mask(None, np.array([[255]], dtype=np.uint8))[0, 0], PALETTE[255])


def test_class_ids_past_65535_raise_rather_than_wrap() -> None:
    from pipeline.stages.masks import mask_array

    assert mask_array(torch.tensor([[3, 65535]], dtype=torch.int32)).dtype == np.uint16
    with pytest.raises(ValueError, match="16-bit"):
        mask_array(torch.tensor([[3, 69474]], dtype=torch.int32))


def test_a_nan_depth_output_is_published_as_null_never_nan() -> None:
    import json

    from pipeline.stages.depth import has_nonfinite

    depth = torch.arange(12 * 16, dtype=torch.float32).reshape(12, 16)
    depth[0, 0] = float("nan")
    d = depth_summary(depth, segment(winning(260, 300), (12, 16)), num_classes=300)
    text = json.dumps(d, allow_nan=False)  # raises on NaN
    assert d["max"] is None and has_nonfinite(d) and "NaN" not in text
    assert not has_nonfinite(depth_summary(torch.ones(12, 16), None))
