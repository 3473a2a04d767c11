"""Hand-made Redis entries for the renderer's tests: a two-class mask PNG beside a depth summary."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image


def split_mask_entry(height: int, width: int, right: int, depth: dict[str, Any],
                     **extra: bytes) -> dict[str, bytes]:
    """An entry whose mask is class 0 on the left half and class ``right`` on the right half (50 % each), with
    the depth summary ``depth``; ``extra`` fields (e.g. ``frame=b"3"``) come first."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 2:] = right
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG")
    return {**extra, "mask": buf.getvalue(), "classes": json.dumps({"0": 0.5, str(right): 0.5}).encode(),
            "depth": json.dumps(depth).encode()}
