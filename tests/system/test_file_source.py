"""File sources (``pipeline/sources/file.py``) on real clips — display rotation, every decodable frame of a truncated
file, truncation judged from the video stream alone. The source runs in-process on real video (no models)."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.frames import EndOfStream, Frame
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue

pytestmark = pytest.mark.slow


def decode_all(path: Path, sid: str = "s") -> tuple[list[Frame], EndOfStream, Any]:
    from pipeline.sources import create_source

    q: NamedQueue[Any] = NamedQueue("decoded", 1000)
    src = create_source(SourceConfig(id=sid, uri=str(path)), q, Metrics())
    src.start()
    frames: list[Frame] = []
    while True:
        item = q.get(timeout=60)
        if isinstance(item, EndOfStream):
            assert src.join(10)
            return frames, item, src
        frames.append(item)


def complete_packets(full: Path, cut_len: int) -> int:
    """Independent oracle: video packets of the intact file that lie wholly inside the first ``cut_len`` bytes
    (packets are in decode order and every reference precedes its user, so each of them decodes)."""
    with av.open(str(full)) as c:
        return sum(1 for p in c.demux(video=0) if p.size and p.pos is not None and p.pos + p.size <= cut_len)


def test_truncated_mp4_publishes_every_frame_ffmpeg_can_decode(tmp_path: Path) -> None:
    from pipeline.sample import make_clip

    full = make_clip(tmp_path / "full.mp4", frames=48, width=1280, height=720, seed=3)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    expect = complete_packets(full, len(data) // 2)
    assert 10 < expect < 48
    frames, eos, src = decode_all(cut)
    assert [f.id.index for f in frames] == list(range(expect))
    assert eos.truncated and eos.error is None
    # the cut-off last packet is the one skipped, and it is counted
    assert eos.bad_packets == 1 and src.metrics.skipped_packets.labels(stream="s")._value.get() == 1


def test_a_file_cut_inside_a_packet_keeps_the_frames_before_it(tmp_path: Path) -> None:
    from pipeline.sample import make_clip

    full = make_clip(tmp_path / "full.mkv", frames=30, width=640, height=360, seed=5)
    data = full.read_bytes()
    for frac in (0.35, 0.7):
        cut = tmp_path / f"cut{frac}.mkv"
        cut.write_bytes(data[: int(len(data) * frac)])
        frames, eos, _ = decode_all(cut, "c")
        assert eos.truncated and eos.error is None
        assert len(frames) >= complete_packets(full, int(len(data) * frac)) - 1  # mkv: the cluster index is lost


def video_with_longer_audio(path: Path, video_s: float = 1.0, audio_s: float = 5.0) -> Path:
    from pipeline.sample import make_frames

    fps = 24
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 320, 180, "yuv420p"
        v.codec_context.time_base = Fraction(1, fps)
        a = out.add_stream("aac", rate=48000)
        a.layout = "mono"
        for img in make_frames(int(video_s * fps), 320, 180, seed=2):
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        n = 1024
        for i in range(int(audio_s * 48000 / n)):
            t = (np.arange(n) + i * n) / 48000
            fr = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                            format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 48000, i * n
            for p in a.encode(fr):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_outlasting_video_is_not_truncation(tmp_path: Path, suffix: str) -> None:
    path = video_with_longer_audio(tmp_path / f"av{suffix}")
    with av.open(str(path)) as c:
        assert c.duration / 1e6 > 4  # the container lasts as long as its audio
    frames, eos, _ = decode_all(path)
    assert len(frames) == 24
    assert not eos.truncated and eos.error is None


def vfr_clip(path: Path, pts_ms: list[int]) -> Path:
    """An H.264 clip whose frames lie at ``pts_ms`` (milliseconds, irregular: a variable frame rate)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i, p in enumerate(pts_ms):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 30, np.uint8), format="rgb24")
            f.pts, f.time_base = p, Fraction(1, 1000)
            for pk in s.encode(f):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)
    return path


def test_variable_frame_rate_pts_come_from_the_container(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Frames drained from the decoder at the end (``decode(None)``) carry pts but no ``frame.time``: their
    times are the container's, not extrapolated, and the intact file is not called truncated."""
    pts_ms = [0, 10, 500, 510, 5000, 5001, 5002, 20000]
    clip = vfr_clip(tmp_path / "vfr.mkv", pts_ms)
    with av.open(str(clip)) as c:
        oracle = sorted(float(f.pts * f.time_base) for f in c.decode(video=0))
    assert oracle == pytest.approx([p / 1000 for p in pts_ms], abs=1e-3)
    with caplog.at_level("INFO"):
        frames, eos, _ = decode_all(clip)
    assert [f.id.pts for f in frames] == pytest.approx(oracle, abs=1e-3)
    assert not eos.truncated and eos.error is None
    assert "truncated" not in caplog.text


def rotated_clip(path: Path, degrees: int, width: int = 160, height: int = 96) -> tuple[Path, np.ndarray]:
    """A clip whose display matrix says: turn the picture ``degrees`` counter-clockwise (what a phone writes).
    The picture has a white block at the top-left of the coded frame."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 4, : width // 4] = 255
    still_clip(path, img, 6, lambda s: s.set_display_rotation(degrees))
    return path, img


def still_clip(path: Path, img: np.ndarray, frames: int, display: Callable[[Any], None]) -> None:
    """``frames`` copies of ``img`` as near-lossless H.264; ``display`` sets the stream's display matrix."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        s.options = {"crf": "10"}
        display(s)
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def display_matrix(turn_ccw: int, hflip: bool, vflip: bool) -> list[int]:
    """FFmpeg's ``av_display_rotation_set`` then ``av_display_matrix_flip``: what ``ffmpeg -display_rotation R
    -display_hflip -display_vflip`` writes."""
    import math

    r = -turn_ccw * math.pi / 180
    c, s = round(math.cos(r) * 65536), round(math.sin(r) * 65536)
    m = [c, -s, 0, s, c, 0, 0, 0, 1 << 30]
    sign = (-1 if hflip else 1, -1 if vflip else 1, 1)
    return [v * sign[i % 3] for i, v in enumerate(m)]


def blocks(img: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where the centres of the white and the red block of :func:`matrix_clip`'s picture are, in eighths of the
    picture's (height, width): the pair tells all eight turns and mirrors apart."""
    h, w = img.shape[:2]
    x = img.astype(int)
    white = x.min(axis=2) > 200
    red = (x[..., 0] > 200) & (x[..., 1] < 60)
    out = []
    for m in (white, red):
        ys, xs = np.nonzero(m)
        out.append((round(float(ys.mean()) / h * 8), round(float(xs.mean()) / w * 8)))
    return out[0], out[1]


def matrix_clip(path: Path, matrix: list[int]) -> np.ndarray:
    """A 160x96 clip: a white block in the coded frame's top-left corner, a red one below it."""
    img = np.zeros((96, 160, 3), np.uint8)
    img[:24, :40] = 255
    img[24:48, :40] = (255, 0, 0)
    still_clip(path, img, 3, lambda s: s.set_display_matrix(matrix))
    return img


# What ffmpeg 5.1 shows for each matrix (its autorotation: transpose / hflip / vflip), read off its decoded
# output when this was written: the block centres (eighths of height, width) and whether the picture is portrait.
# The six mirrored cases and two turns; the plain turns are test_display_rotation_turns_frames_to_display_orientation.
@pytest.mark.parametrize("turn, hflip, vflip, white, red, portrait", [
    (0, False, True, (7, 1), (5, 1), False),
    (0, True, False, (1, 7), (3, 7), False),
    (90, False, False, (1, 7), (1, 5), True),
    (90, False, True, (7, 7), (7, 5), True),
    (90, True, False, (1, 1), (1, 3), True),
    (90, True, True, (7, 1), (7, 3), True),
    (180, True, False, (7, 1), (5, 1), False),
    (270, True, False, (7, 7), (7, 5), True),
])
def test_mirrored_display_matrices_show_as_ffmpeg_shows_them(tmp_path: Path, turn: int, hflip: bool, vflip: bool,
                                                             white: tuple[int, int], red: tuple[int, int],
                                                             portrait: bool) -> None:
    path = tmp_path / "m.mp4"
    matrix_clip(path, display_matrix(turn, hflip, vflip))
    frames, eos, src = decode_all(path)
    assert eos.error is None and len(frames) == 3
    img = frames[0].image
    assert (img.shape[0] > img.shape[1]) == portrait
    assert blocks(img) == (white, red)
    assert src.orientation.mirrored == (hflip != vflip)
    from pipeline.sources import probe_file, source_identity

    cfg = SourceConfig(id="s", uri=str(path))
    facts = probe_file(cfg)
    assert (facts["height"], facts["width"]) == img.shape[:2] and facts["mirrored"] == (hflip != vflip)
    ident = source_identity(cfg)
    assert ident.fields()["mirrored"] == ("1" if hflip != vflip else "0")


@pytest.mark.parametrize("degrees, corner", [(90, "bottom-left"), (-90, "top-right"), (180, "bottom-right"),
                                             (0, "top-left")])
def test_display_rotation_turns_frames_to_display_orientation(tmp_path: Path, degrees: int, corner: str) -> None:
    path, _ = rotated_clip(tmp_path / "rot.mp4", degrees)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation % 360 == degrees % 360  # the side data really is in the file
    frames, eos, src = decode_all(path)
    assert eos.error is None and len(frames) == 6
    f = frames[0]
    h, w = f.image.shape[:2]
    portrait = degrees in (90, -90)
    assert (w, h) == ((96, 160) if portrait else (160, 96))
    assert (f.id.width, f.id.height) == (w, h)
    g = f.image.mean(axis=2)
    corners = {"top-left": g[: h // 8, : w // 8], "top-right": g[: h // 8, -(w // 8):],
               "bottom-left": g[-(h // 8):, : w // 8], "bottom-right": g[-(h // 8):, -(w // 8):]}
    bright = max(corners, key=lambda k: float(corners[k].mean()))
    assert bright == corner
    assert src.rotation == degrees % 360
    from pipeline.sources import probe_file

    facts = probe_file(SourceConfig(id="s", uri=str(path)))  # what the pipeline plans network shapes from
    assert (facts["width"], facts["height"]) == (w, h) and facts["rotation"] == degrees % 360
