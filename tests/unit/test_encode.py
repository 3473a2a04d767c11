"""Mask PNGs written by hand (cheaper than PIL's encoder per frame): every reader must decode exactly the mask."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.sinks.encode import encode_png


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (108, 192), (203, 360)])
@pytest.mark.parametrize("kind", ["noise", "blocks", "constant"])
def test_png_decodes_to_the_same_mask(shape: tuple[int, int], kind: str) -> None:
    rng = np.random.default_rng(sum(shape))
    if kind == "noise":
        mask = rng.integers(0, 256, shape, dtype=np.uint8)
    elif kind == "blocks":
        mask = np.kron(rng.integers(0, 150, (shape[0] // 4 + 1, shape[1] // 4 + 1)),
                       np.ones((4, 4)))[: shape[0], : shape[1]].astype(np.uint8)
    else:
        mask = np.full(shape, 12, dtype=np.uint8)
    data = encode_png(mask)
    im = Image.open(io.BytesIO(data))
    im.verify()  # CRCs and structure
    im = Image.open(io.BytesIO(data))
    assert im.mode == "L" and im.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(im), mask)


def test_a_non_contiguous_mask_is_encoded_as_its_values() -> None:
    mask = np.arange(64 * 48, dtype=np.int64).reshape(64, 48).astype(np.uint8).T  # a transposed view
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(mask)))), mask)
