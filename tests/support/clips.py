"""Clips with a known shape for tests: files joined with ``cat``, and FFmpeg's own count of their frames."""

from __future__ import annotations

from pathlib import Path

import av


def joined_transport_streams(directory: Path, first_s: float = 2.0, second_s: float = 1.0, fps: int = 24) -> Path:
    """Two intact MPEG-TS files of different sizes (320x180, then 640x360) joined byte for byte, as ``cat a.ts
    b.ts`` does. The demuxer flags the second file's first packet corrupt (its continuity counter jumps); the
    packet itself is whole and decodes."""
    from pipeline.sample import make_clip

    directory.mkdir(parents=True, exist_ok=True)
    a = make_clip(directory / "a.ts", frames=int(first_s * fps), width=320, height=180, fps=fps, seed=1)
    b = make_clip(directory / "b.ts", frames=int(second_s * fps), width=640, height=360, fps=fps, seed=2)
    joined = directory / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    return joined


def ffmpeg_frame_count(path: Path) -> int:
    """Frames FFmpeg decodes from ``path`` (what ``ffprobe -count_frames`` reports): every packet is handed to
    the decoder, whatever flags the demuxer set on it."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def corrupt_flagged_packets(path: Path) -> int:
    """Video packets the demuxer flags corrupt."""
    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(video=0) if p.size and p.is_corrupt)
