"""Live network streams through PyAV (RTSP/RTSPS cameras, HTTP(S) with HLS, RTMP(S)): reconnect with backoff,
stall watchdog, frozen-picture detector.

A camera is an explicit state machine guarded by one lock::

    idle -> connecting -> streaming -> backing_off -> connecting -> ...
                  \\-> backing_off                      (any) -> stopped

``stream_up`` is 1 exactly while the state is ``streaming`` (frames are arriving), and the readiness
probe reads the same state. The reader thread decodes into the stream's own queue, whose policy for
live sources is ``drop_oldest``: it never waits for downstream, so the socket is always drained and the
newest frame wins; every eviction is counted by the queue.

Reasons a camera is reconnected (the ``reason`` label of ``dptstream_stream_reconnects_total``):
``stall`` (no new frame for ``live.stall_timeout_s``, whether the socket went silent or packets keep
coming without pictures), ``frozen`` (the picture has not changed for ``live.frozen_timeout_s``),
``eof`` (the camera ended the session), ``error`` (the session broke), and for failed connection
attempts ``unreachable``, ``timeout``, ``auth``, ``not_found``.

Credentials ride in the URI (``rtsp://user:pass@host/path``; a config may write them as
``${ENV_VAR}``, expanded when the config is loaded). They never reach a log line, an error message or a
metric label: every text derived from the URI or from FFmpeg goes through :func:`scrub`.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Any

import av
import numpy as np

from pipeline.config import LiveSection, SourceConfig
from pipeline.frames import EndOfStream
from pipeline.metrics import Metrics
from pipeline.queues import NamedQueue
from pipeline.redact import redact, scrub
from pipeline.sources.base import Source
from pipeline.sources.reconnect import (
    BACKING_OFF,
    CONNECTING,
    STABLE_S,
    STOPPED,
    STREAMING,
    Backoff,
    ConnectFailure,
    StateMachine,
    classify,
)

log = logging.getLogger(__name__)


# Demuxer options that keep the first frame close to the connection (SPS/PPS come in the SDP).
_FAST_OPEN = {"analyzeduration": "0", "probesize": "65536"}


def thumbnail(image: np.ndarray, grid: int = 8) -> np.ndarray:
    """A ``grid x grid`` map of block means of a ~64x64 grayscale subsample: cheap, noise-tolerant."""
    h, w = image.shape[:2]
    sub = image[:: max(1, h // 64), :: max(1, w // 64)]
    g = sub.mean(axis=2, dtype=np.float32) if sub.ndim == 3 else sub.astype(np.float32)
    gh, gw = (g.shape[0] // grid) * grid, (g.shape[1] // grid) * grid
    if gh == 0 or gw == 0:
        return g
    return g[:gh, :gw].reshape(grid, gh // grid, grid, gw // grid).mean(axis=(1, 3))


class FrozenDetector:
    """Says when the picture stayed the same (``tolerance`` grey levels per block) for ``timeout`` s.

    Each frame's thumbnail is compared with the one that began the current run of unchanged pictures;
    a change beyond the tolerance starts a new run. A camera that keeps sending one picture, re-encoded
    or not, is caught; a truly static scene with a noise-free sensor looks the same, so keep the
    timeout long where scenes can be still (the detector is off unless ``live.frozen_timeout_s`` > 0).
    """

    def __init__(self, timeout: float, tolerance: float = 2.0) -> None:
        self.timeout = timeout
        self.tolerance = tolerance
        self._ref: np.ndarray | None = None
        self._since = 0.0

    def reset(self) -> None:
        self._ref = None

    def update(self, image: np.ndarray, now: float) -> bool:
        if self.timeout <= 0:
            return False
        t = thumbnail(image)
        ref = self._ref
        if ref is None or ref.shape != t.shape or float(np.abs(t - ref).max()) > self.tolerance:
            self._ref, self._since = t, now
            return False
        return now - self._since >= self.timeout


class LiveSource(Source):
    """A live stream (an RTSP/RTSPS camera, HTTP(S) or HLS, RTMP(S): any network URI FFmpeg reads) that
    reconnects by itself and never stalls."""

    def __init__(self, cfg: SourceConfig, out: NamedQueue[Any], metrics: Metrics, start_index: int = 0,
                 live: LiveSection | None = None, rng: random.Random | None = None) -> None:
        self._sm = StateMachine(self._state_changed)
        self._up_gauge: Any = None
        super().__init__(cfg, out, metrics, start_index)
        self._up_gauge = self._up
        self._up.set(0)
        self.live = live or LiveSection()
        self.uri = cfg.uri
        self.safe_uri = redact(cfg.uri)
        self.backoff = Backoff(self.live.reconnect_initial_s, self.live.reconnect_max_s,
                               self.live.reconnect_jitter, rng)
        self.frozen = FrozenDetector(self.live.frozen_timeout_s, self.live.frozen_tolerance)
        self.index = start_index
        self.sessions = 0  # successful connections
        self.failures = 0  # consecutive failed connection attempts
        self.reconnects = 0
        self.last_reason: str | None = None
        self.fatal = False  # ended by live.fail_if_down_at_start: the pipeline stops
        self.last_error: str | None = None
        self._logged_reason: str | None = None
        self._down_since: float | None = None

    # -- state ------------------------------------------------------------------------------------------
    @property  # type: ignore[override]
    def state(self) -> str:
        return self._sm.state

    @state.setter
    def state(self, value: str) -> None:
        if value == STOPPED:
            self._sm.to(STOPPED)
        elif value != self._sm.state:
            self._sm.to(value)

    def _state_changed(self, old: str, new: str) -> None:
        if self._up_gauge is not None:
            self._up_gauge.set(1 if new == STREAMING else 0)

    @property
    def stall_s(self) -> float:
        """No frame for this long means a stalled camera (the read timeout is never longer)."""
        return min(self.live.stall_timeout_s, self.cfg.read_timeout_s)

    @property
    def up(self) -> bool:
        return self._sm.state == STREAMING

    # -- thread -----------------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.run()
        except Exception as e:  # a bug here ends this camera only; others go on
            self.error = self.error or f"source {self.id!r}: {type(e).__name__}: {scrub(str(e), self.uri)}"
            log.error("%s", self.error)
        finally:
            self._sm.to(STOPPED)
            self.out.put(EndOfStream(self.id, self.frames, self.error, False))

    def run(self) -> None:
        while not self._stop.is_set():
            self._sm.to(CONNECTING)
            try:
                container = self._open()
            except ConnectFailure as f:
                if self._failed(f.reason, f"camera {self.id!r} at {self.safe_uri}: {f.message}"):
                    return
                continue
            sessions = self.sessions
            reason = self._session(container)
            if reason == STOPPED:
                break
            msg = f"camera {self.id!r} at {self.safe_uri}: {self._describe(reason)}"
            if self.sessions == sessions:  # connected, but not one frame came: a failed attempt too
                if self._failed(reason, msg):
                    return
                continue
            self._retry(reason, msg)

    def _failed(self, reason: str, msg: str) -> bool:
        """A connection attempt that gave no frame. True when the camera is given up for good."""
        self.failures += 1
        if self.sessions == 0 and self.failures == 1 and self.live.fail_if_down_at_start:
            self.fatal = True
            self.error = f"{msg} (live.fail_if_down_at_start is set, so the run stops)"
            return True
        if self.live.max_attempts and self.failures >= self.live.max_attempts:
            self.error = f"{msg}; gave up after {self.failures} attempts (live.max_attempts)"
            log.error("%s", self.error)
            return True
        self._retry(reason, msg)
        return False

    def _describe(self, reason: str) -> str:
        return {
            "stall": f"no new frame for {self.stall_s:g}s (stalled)",
            "frozen": f"the picture has not changed for {self.live.frozen_timeout_s:g}s (frozen)",
            "eof": "the camera ended the stream",
        }.get(reason, self.last_error or "the stream broke")

    def _retry(self, reason: str, msg: str) -> None:
        """Count the reconnect, log it once per reason, back off (unless stopped), then try again."""
        if self._stop.is_set():
            return
        self._sm.to(BACKING_OFF)
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.reconnects += 1
        self.last_reason = reason
        self.metrics.reconnects.labels(stream=self.id, reason=reason).inc()
        delay = self.backoff.next()
        if reason != self._logged_reason:
            log.warning("%s; reconnecting in %.1fs", msg, delay)
            self._logged_reason = reason
        else:
            log.debug("%s; reconnecting in %.1fs (attempt %d)", msg, delay, self.backoff.attempt)
        self._stop.wait(delay)

    def _open(self) -> Any:
        cfg = self.cfg
        read_timeout = self.stall_s
        options: dict[str, str] = {}  # http(s) and rtmp(s): PyAV's open/read timeouts alone (rtmp's own
        # "timeout" option would put FFmpeg in listen mode)
        if cfg.scheme in ("rtsp", "rtsps"):
            options = {"rtsp_transport": cfg.rtsp_transport, "timeout": str(int(read_timeout * 1e6)),
                       **_FAST_OPEN}
        if cfg.scheme == "rtsps" and (self.live.rtsps_verify or self.live.rtsps_ca_file):
            options["tls_verify"] = "1"
            if self.live.rtsps_ca_file:
                options["ca_file"] = self.live.rtsps_ca_file
        t0 = time.monotonic()
        try:
            container = av.open(self.uri, options=options, timeout=(cfg.open_timeout_s, read_timeout))
        except (av.FFmpegError, OSError) as e:
            reason, message = classify(e, cfg.open_timeout_s)
            if reason == "error" and "tls_verify" in options and getattr(e, "errno", None) == errno.EIO:
                message += ("; the TLS handshake may have failed: is the camera's certificate signed by "
                            "live.rtsps_ca_file (or a system CA)?")
            if reason == "error" and time.monotonic() - t0 >= 0.9 * cfg.open_timeout_s:
                # FFmpeg reports an interrupted handshake as bad data: it was the open timeout
                reason, message = "timeout", f"no answer within {cfg.open_timeout_s:g}s (open_timeout_s)"
            log.debug("camera %s: open failed: %s", self.id, scrub(repr(e), self.uri))
            raise ConnectFailure(reason, scrub(message, self.uri)) from None
        if not container.streams.video:
            container.close()
            raise ConnectFailure("error", "the stream has no video track")
        return container

    def _session(self, container: Any) -> str:
        """Read one connection until it ends; returns why: stall, frozen, eof, error or stopped."""
        stall_s = self.stall_s
        self.frozen.reset()
        started = time.monotonic()
        last_frame = started
        streaming = False
        try:
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"  # frame threads would add latency
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return STOPPED
                now = time.monotonic()
                try:
                    frames = packet.decode()
                except av.FFmpegError as e:  # a damaged packet: skip it, the watchdog covers a dead stream
                    log.debug("camera %s: decode error: %s", self.id, scrub(str(e), self.uri))
                    frames = []
                for frame in frames:
                    image = frame.to_ndarray(format="rgb24")
                    now = time.monotonic()
                    last_frame = now
                    if not streaming:
                        streaming = True
                        self._connected()
                    if self.frozen.update(image, now):
                        return "frozen"
                    pts = float(frame.time) if frame.time is not None else now - started
                    self.emit(self.index, pts, image)
                    self.index += 1
                if now - last_frame >= stall_s:
                    return "stall"
            return "eof"
        except av.ExitError:  # the read timeout's interrupt: nothing arrived for stall_s
            return "stall"
        except av.EOFError:
            return "eof"
        except (av.FFmpegError, OSError) as e:
            detail = getattr(e, "strerror", None) or type(e).__name__
            self.last_error = f"the stream broke ({scrub(str(detail), self.uri)})"
            return "error"
        finally:
            if streaming and time.monotonic() - started >= STABLE_S:
                self.backoff.reset()
            try:
                container.close()
            except Exception:  # closing a broken session must not hide why it broke
                log.debug("camera %s: close failed", self.id)

    def _connected(self) -> None:
        self.sessions += 1
        self.failures = 0
        self._sm.to(STREAMING)
        if self._down_since is not None:
            log.warning("camera %r at %s: streaming again after %.1fs down", self.id, self.safe_uri,
                        time.monotonic() - self._down_since)
        elif self.sessions == 1:
            log.info("camera %r at %s: streaming", self.id, self.safe_uri)
        self._down_since = None
        self._logged_reason = None
        if self.sessions == 1:
            self.backoff.reset()
