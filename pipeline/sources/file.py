"""Video files through PyAV: probing, the file's identity (for resume), decoding every decodable frame in display
orientation, truncation detection, resume from a frame index."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np

from pipeline.config import SourceConfig
from pipeline.redact import shorten
from pipeline.sources.base import Source, SourceError, av_reason

log = logging.getLogger(__name__)

HEAD_BYTES = 1 << 20  # the identity hashes the first MiB of the file


_NOT_REGULAR = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def _check_path(cfg: SourceConfig) -> Path:
    """The path of a file source, if it is a non-empty regular file (symlinks followed); else one clear line."""
    path = Path(cfg.path)
    shown = shorten(str(path))
    try:
        try:
            st = path.stat()
        except FileNotFoundError:
            if path.is_symlink():
                raise SourceError(f"source {cfg.id!r}: {shown} is a symlink to a missing file") from None
            raise SourceError(f"source {cfg.id!r}: file not found: {shown}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SourceError(f"source {cfg.id!r}: {shown} is a symlink loop; pass a video file") from None
            raise
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(f"source {cfg.id!r}: {shown} is a directory, not a video file")
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), "not a file")
            raise SourceError(f"source {cfg.id!r}: {shown} is not a regular file ({kind}); pass a video file")
        if st.st_size == 0:
            raise SourceError(f"source {cfg.id!r}: {shown} is empty (0 bytes)")
    except OSError as e:  # e.g. a name longer than the file system allows
        raise SourceError(f"source {cfg.id!r}: cannot open {shown} ({e.strerror or type(e).__name__})") from e
    return path


def probe_file(cfg: SourceConfig) -> dict[str, Any]:
    """Basic facts about a file source (see :func:`inspect_file`), as a dict: frames, width, height (display
    orientation), fps, duration, rotation, mirrored."""
    return inspect_file(cfg).facts()


def frame_seconds(frame: Any, stream_time_base: Fraction | None) -> float | None:
    """A decoded frame's time in seconds: ``frame.time``, else its ``pts`` in the frame's or the stream's time
    base (frames drained by the null packet at the end carry pts but ``time`` NaN), else None (no timestamp)."""
    t = frame.time
    if t is not None and math.isfinite(float(t)):
        return float(t)
    base = frame.time_base or stream_time_base
    if frame.pts is None or not base:
        return None
    return float(frame.pts * base)


def video_end(container: Any, stream: Any) -> float | None:
    """Seconds where the *video stream* ends: its own start + duration; the container's duration only when the
    video is the container's only stream (an audio track may outlast the picture)."""
    if stream.duration and stream.time_base:
        return float((stream.duration + (stream.start_time or 0)) * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return (container.duration + (container.start_time or 0)) / 1_000_000
    return None


# FFmpeg's display-matrix autorotation (fftools' transpose / hflip / vflip choice) as a turn and a mirror: the
# signs of the matrix's 2x2 part, rounded to the nearest multiple of 90 degrees, -> (counter-clockwise degrees,
# then flipped left-right). Checked against ffmpeg 5.1's own decoding for all eight axis-aligned matrices.
_ORIENTATIONS: dict[tuple[int, int, int, int], tuple[int, bool]] = {
    (1, 0, 0, 1): (0, False), (-1, 0, 0, -1): (180, False), (0, -1, 1, 0): (90, False), (0, 1, -1, 0): (270, False),
    (-1, 0, 0, 1): (0, True), (1, 0, 0, -1): (180, True), (0, -1, -1, 0): (90, True), (0, 1, 1, 0): (270, True),
}


@dataclass(frozen=True)
class Orientation:
    """How a player turns a stream's decoded frames: ``rotation`` degrees counter-clockwise, then a left-right
    mirror when ``mirrored`` (what a display matrix with a flip says)."""

    rotation: int = 0
    mirrored: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        return rotate(image, self.rotation, self.mirrored)

    @property
    def swaps_sides(self) -> bool:
        return self.rotation in (90, 270)

    def __bool__(self) -> bool:
        return bool(self.rotation or self.mirrored)

    def __str__(self) -> str:
        return f"{self.rotation}°" + (" mirrored" if self.mirrored else "")


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def display_orientation(frame: Any) -> Orientation:
    """The frame's display matrix as an :class:`Orientation` (none: no turn, no mirror). Rotations that are not
    a multiple of 90 degrees are rounded to the nearest one."""
    matrix = None
    with contextlib.suppress(AttributeError, ImportError, KeyError, TypeError, ValueError):
        from av.sidedata.sidedata import Type

        sd = frame.side_data.get(Type.DISPLAYMATRIX)
        if sd is not None:
            raw = bytes(sd)
            if len(raw) == 36:
                matrix = np.frombuffer(raw, "<i4")
    if matrix is None:
        return Orientation(display_rotation(frame))
    a, b, c, d = (int(matrix[i]) for i in (0, 1, 3, 4))
    axis_aligned = abs(a) + abs(d) >= abs(b) + abs(c)  # nearer a turn of 0 or 180 degrees than of 90 or 270
    key = (_sign(a), 0, 0, _sign(d)) if axis_aligned else (0, _sign(b), _sign(c), 0)
    rotation, mirrored = _ORIENTATIONS.get(key, (0, False))
    return Orientation(rotation, mirrored)


def display_rotation(frame: Any) -> int:
    """The frame's display-matrix rotation as PyAV reads it, counter-clockwise degrees, rounded to a multiple of
    90 (0 when none). Blind to mirrors: :func:`display_orientation` reads the whole matrix."""
    try:
        deg = int(frame.rotation or 0)
    except (AttributeError, ValueError, TypeError):
        return 0
    return (round(deg / 90) * 90) % 360


def rotate(image: np.ndarray, degrees: int, mirrored: bool = False) -> np.ndarray:
    """``image`` turned counter-clockwise by ``degrees`` (a multiple of 90), then mirrored left-right when
    ``mirrored``: the orientation a player shows."""
    k = (degrees // 90) % 4
    out = image if k == 0 else np.rot90(image, k)
    if mirrored:
        out = out[:, ::-1]
    return out if out is image else np.ascontiguousarray(out)


@dataclass(frozen=True)
class SourceIdentity:
    """What makes a file *this* file for resume: recorded in the stream's progress hash with the resume point.

    Two identities are the same file when size, video duration and the hash of the first MiB agree; path and
    mtime are recorded to name the files in messages (a copied or moved file still resumes)."""

    path: str
    size: int
    mtime: float
    duration: float | None
    head_sha256: str
    rotation: int = 0
    mirrored: bool = False

    FIELDS: ClassVar[tuple[str, ...]] = ("source_path", "source_size", "source_mtime", "source_duration",
                                         "source_sha256_1mib", "rotation", "mirrored")

    def fields(self) -> dict[str, str]:
        return {"source_path": self.path, "source_size": str(self.size), "source_mtime": f"{self.mtime:.6f}",
                "source_duration": "" if self.duration is None else f"{self.duration:.6f}",
                "source_sha256_1mib": self.head_sha256, "rotation": str(self.rotation),
                "mirrored": "1" if self.mirrored else "0"}

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> SourceIdentity | None:
        if not f.get("source_sha256_1mib"):
            return None
        try:
            return cls(f.get("source_path", "?"), int(f.get("source_size") or -1),
                       float(f.get("source_mtime") or 0), float(f["source_duration"]) if f.get("source_duration")
                       else None, f["source_sha256_1mib"], int(f.get("rotation") or 0),
                       f.get("mirrored") == "1")
        except ValueError:
            return None

    def same_file(self, other: SourceIdentity) -> bool:
        same_duration = (self.duration is None and other.duration is None) or (
            self.duration is not None and other.duration is not None and abs(self.duration - other.duration) < 1e-3)
        return self.size == other.size and self.head_sha256 == other.head_sha256 and same_duration

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.mtime))
        return f"{shorten(self.path)} ({self.size} bytes, modified {when})"


def source_identity(cfg: SourceConfig) -> SourceIdentity:
    """The identity of a file source (see :func:`inspect_file`)."""
    return inspect_file(cfg).identity


@dataclass(frozen=True)
class FileFacts:
    """What one look at a file source tells: its stream's declared frame count, its size in display orientation,
    rate, video duration, display orientation, and its identity (for resume)."""

    frames: int
    width: int
    height: int
    fps: float | None
    duration: float | None
    orientation: Orientation
    identity: SourceIdentity

    def facts(self) -> dict[str, Any]:
        return {"frames": self.frames, "width": self.width, "height": self.height, "fps": self.fps,
                "duration": self.duration, "rotation": self.orientation.rotation,
                "mirrored": self.orientation.mirrored}


def head_sha256(path: Path) -> str:
    """sha256 of the first :data:`HEAD_BYTES` of ``path`` (part of a file's identity)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(HEAD_BYTES))
    return h.hexdigest()


def inspect_file(cfg: SourceConfig) -> FileFacts:
    """Open a file source once (PyAV, up to its first frame for the display matrix) and hash its first MiB once:
    everything known about it before decoding. A file that cannot be used is a :class:`SourceError`, one line."""
    path = _check_path(cfg)
    shown = shorten(str(path))
    try:
        st = path.stat()
        digest = head_sha256(path)
    except OSError as e:
        raise SourceError(f"source {cfg.id!r}: cannot open {shown} ({e.strerror or type(e).__name__})") from e
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                kinds: list[str] = sorted({str(s.type) for s in c.streams}) or ["nothing"]
                raise SourceError(
                    f"source {cfg.id!r}: {shown} has no video stream (it holds {', '.join(kinds)})"
                )
            v = c.streams.video[0]
            w, h = v.codec_context.width, v.codec_context.height
            orient = Orientation()
            with contextlib.suppress(StopIteration, av.FFmpegError):  # orientation: side data of the first frame
                orient = display_orientation(next(c.decode(v)))
            if orient.swaps_sides:
                w, h = h, w
            duration = video_end(c, v)
            fps = float(v.average_rate) if v.average_rate else None
            frames = int(v.frames or 0)
    except av.FFmpegError as e:
        raise SourceError(f"source {cfg.id!r}: cannot read {shown} as video ({av_reason(e)})") from e
    ident = SourceIdentity(str(path.resolve()), st.st_size, st.st_mtime, duration, digest, orient.rotation,
                           orient.mirrored)
    return FileFacts(frames, w, h, fps, duration, orient, ident)


def _next_packet(packets: Iterator[av.Packet]) -> tuple[av.Packet | None, av.FFmpegError | None]:
    """The next packet that holds data; None at the end, with the demuxer's error if it could not go on.
    (Demux's own empty flush packet is passed over: the decoder is drained at the end in every case.)"""
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return None, None
        except av.FFmpegError as e:
            return None, e
        if packet.size:
            return packet, None


class FileSource(Source):
    """Decodes a file (PyAV, threaded codec). ``block`` policy: backpressure reaches the decoder.

    Packets are demuxed and decoded one by one: only a packet the decoder rejects, or the cut-off last packet of a
    truncated file, is skipped, and each is counted (:attr:`bad_packets`, the ``skipped_packets`` metric, the
    end-of-stream marker); the decoder is always drained with the null packet at the end, so every frame FFmpeg
    can decode is published. Frames are turned to the stream's
    display orientation (its display matrix: a turn by a multiple of 90 degrees, and a mirror)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.orientation = Orientation()  # applied to every frame (display matrix)
        self._index = self._first = 0
        self._interval = 0.04
        self._last_pts = -1.0
        self._t0: float | None = None
        self._pts0: float | None = None
        self._rotation_seen = False
        self._time_base: Fraction | None = None

    @property
    def rotation(self) -> int:
        """Counter-clockwise degrees applied to every frame (see :attr:`orientation`)."""
        return self.orientation.rotation

    def run(self) -> None:
        path = self.cfg.path
        index = 0
        while not self._stop.is_set():
            index = self._decode_once(path, index)
            if not self.cfg.loop or self.error or self.truncated:
                break

    def _decode_once(self, path: str, index: int) -> int:
        self.state = "streaming"
        self._up.set(1)
        first = index
        self._t0 = self._pts0 = None
        self._last_pts = -1.0
        self._index = index
        self._first = first
        self._rotation_seen = False
        read_error: Exception | None = None
        declared, interval, expected_end = 0, 0.04, None
        shown = shorten(path)
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                declared = int(stream.frames or 0)
                if stream.average_rate:
                    interval = 1.0 / float(stream.average_rate)
                self._interval = interval
                self._time_base = stream.time_base
                expected_end = video_end(container, stream)
                codec = stream.codec_context
                packets = container.demux(stream)
                packet, read_error = _next_packet(packets)
                while packet is not None:
                    if self._stop.is_set():
                        return self._index
                    following, read_error = _next_packet(packets)
                    if packet.is_corrupt and following is None:
                        # cut off by the end of the file: its data is incomplete, and a frame-threaded decoder
                        # fed it loses the frames still in flight without reporting an error
                        self._bad(f"packet at {packet.pts} is cut off by the end of the file")
                    else:
                        # FFmpeg's corrupt flag elsewhere (an MPEG-TS continuity-counter jump where two files
                        # were joined) says nothing of the payload: only a packet the decoder refuses is skipped
                        try:
                            frames = codec.decode(packet)
                        except av.FFmpegError as e:
                            self._bad(av_reason(e))
                            frames = []
                        if not self._deliver(frames):
                            return self._index
                    packet = following
                try:
                    tail = codec.decode(None)  # the null packet: frame threads hand back what they hold
                except av.FFmpegError as e:
                    log.debug("source %s: flushing the decoder: %s", self.id, av_reason(e))
                    tail = []
                if not self._deliver(tail):
                    return self._index
        except av.FFmpegError as e:
            read_error = read_error or e
        index = self._index
        decoded = index - first
        if read_error is not None:
            if decoded == 0:
                self.error = f"source {self.id!r}: cannot decode {shown} ({av_reason(read_error)})"
                return index
            self.truncated = True
            log.warning("source %r: %s is damaged or truncated after frame %d (%s); kept every decoded frame",
                        self.id, shown, index - 1, av_reason(read_error))
            return index
        if self.cfg.loop:
            return index
        short = (declared and decoded < declared) or (
            expected_end is not None and self._last_pts + 3 * interval < expected_end)
        if decoded == 0 and self.bad_packets:
            self.error = f"source {self.id!r}: cannot decode {shown} ({self.bad_packets} bad packets, no frame)"
        elif short:
            self.truncated = True
            log.warning("source %r: %s is truncated: decoded %d frames up to %.2fs of %.2fs (all kept)",
                        self.id, shown, decoded, self._last_pts, expected_end or 0.0)
        return index

    def _bad(self, why: str) -> None:
        self.bad_packets += 1
        self._skipped_packets.inc()
        if self.bad_packets == 1:
            log.warning("source %r: skipping a bad packet (%s)", self.id, why)
        else:
            log.debug("source %s: skipping a bad packet (%s)", self.id, why)

    def _deliver(self, frames: Any) -> bool:
        """Emit decoded ``frames`` (paced, rotated). False when the source was stopped meanwhile."""
        for frame in frames:
            if self._stop.is_set():
                return False
            if not self._rotation_seen:
                self._rotation_seen = True
                self.orientation = display_orientation(frame)
                if self.orientation:
                    log.info("source %r: display matrix %s: frames are turned to display orientation",
                             self.id, self.orientation)
            t = frame_seconds(frame, self._time_base)
            if t is not None:
                pts = t
            else:  # no timestamp at all: one interval after the last
                pts = self._last_pts + self._interval if self._last_pts >= 0 else \
                    (self._index - self._first) * self._interval
            self._last_pts = max(self._last_pts, pts)
            if self.cfg.realtime:
                now = time.monotonic()
                if self._t0 is None or self._pts0 is None:
                    self._t0, self._pts0 = now, pts
                delay = (pts - self._pts0) - (now - self._t0)
                if delay > 0 and self._stop.wait(delay):
                    return False
            if self._index >= self.start_index:
                self.emit(self._index, pts, self.orientation.apply(frame.to_ndarray(format="rgb24")))
            self._index += 1
        return True
