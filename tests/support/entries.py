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


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says ``width`` x ``height`` (its pixel data is a 1x1 picture's): what a reader
    must refuse from the header alone, without spending the seconds and the memory a real one would take."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)
