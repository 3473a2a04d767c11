"""Encoding shared by the sinks: mask PNGs, 16-bit depth-map PNGs, JPEG thumbnails, the JSON summary of a result."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from pipeline.frames import Result

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(mask: np.ndarray) -> bytes:
    """A greyscale PNG of a class-id mask. uint8 (up to 256 classes): 8-bit, written directly (filter type 0 on
    every row and zlib's fast run-length strategy; class masks are long runs of equal ids, so this is ~4x cheaper
    in CPU than PIL's encoder at ``compress_level=1`` and smaller; any PNG reader decodes the very same pixels).
    uint16 (more than 256 classes): a 16-bit greyscale PNG through PIL (mode ``I;16``)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    h, w = mask.shape
    rows = np.zeros((h, w + 1), dtype=np.uint8)  # a leading 0 per row: filter type "None"
    rows[:, 1:] = mask
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(rows.tobytes()) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, greyscale, deflate, no filter, no interlace
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


MAX_MM = 65535  # the largest 16-bit value: 65.535 m


def depth_png_values(depth: np.ndarray, kind: str, lo: float, hi: float) -> np.ndarray:
    """Depth -> uint16 pixel values: metric depth (metres) in millimetres, clipped to 0..65535 (as RGB-D
    cameras and ROS ``16UC1`` images store it); relative depth scaled from ``lo..hi`` (the entry's
    ``depth.min``..``depth.max``) to 0..65535."""
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0)  # non-finite output: 0, or clipped
    if kind == "metric":
        v = np.rint(d * 1000.0)
    else:
        span = hi - lo
        v = np.rint((d - lo) / span * 65535.0) if span > 0 else np.zeros_like(d)
    return np.clip(v, 0, MAX_MM).astype(np.uint16)


def encode_depth_png(depth: np.ndarray, depth_summary: dict[str, Any]) -> bytes:
    """A 16-bit greyscale PNG of a mask-sized depth map, scaled by :func:`depth_png_values` from the entry's
    depth ``summary`` (its ``kind``, ``min``, ``max``)."""
    lo, hi = depth_summary.get("min"), depth_summary.get("max")  # None (null): the output was not finite
    values = depth_png_values(depth, str(depth_summary.get("kind", "relative_inverse")),
                              float(lo) if lo is not None else 0.0, float(hi) if hi is not None else 0.0)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG", compress_level=1)  # uint16 -> mode "I;16"
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
