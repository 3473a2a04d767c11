"""Encoding shared by the sinks: mask PNGs, JPEG thumbnails, the JSON summary of a result."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from pipeline.frames import Result


def encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_thumbnail(image: np.ndarray, long_side: int) -> bytes:
    """A small JPEG of the frame (long side ``long_side`` px) for ``snapshot`` (``redis.thumbnail``)."""
    im = Image.fromarray(image)
    im.thumbnail((long_side, long_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def summary(r: Result, latency_ms: float) -> dict[str, Any]:
    """The entry's fields without the mask (what light subscribers get)."""
    out: dict[str, Any] = {
        "stream": r.id.stream_id, "frame": r.id.index, "pts": round(r.id.pts, 6), "ts": round(r.id.wall_time, 6),
        "latency_ms": round(latency_ms, 3),
    }
    if r.mask is not None:
        out["mask_w"], out["mask_h"] = int(r.mask.shape[1]), int(r.mask.shape[0])
        out["classes"] = {str(k): v for k, v in r.classes.items()}
    if r.depth is not None:
        out["depth"] = r.depth
    if r.zones is not None:
        out["zones"] = r.zones
    return out
