"""Reconnect logic for live cameras: the camera state machine, the backoff between attempts and the classification
of failed attempts (the reason label of ``dptstream_stream_reconnects_total``).
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Callable

import av

IDLE, CONNECTING, STREAMING = "idle", "connecting", "streaming"
BACKING_OFF, STOPPED = "backing_off", "stopped"
_ALLOWED: dict[str, frozenset[str]] = {
    IDLE: frozenset({CONNECTING, STOPPED}),
    CONNECTING: frozenset({STREAMING, BACKING_OFF, STOPPED}),
    STREAMING: frozenset({BACKING_OFF, STOPPED}),
    BACKING_OFF: frozenset({CONNECTING, STOPPED}),
    STOPPED: frozenset({STOPPED}),
}

STABLE_S = 10.0  # a session that streamed this long resets the backoff to its first step


class StateMachine:
    """The camera's state, changed only through :meth:`to` under one lock; ``on_change`` sees every move."""

    def __init__(self, on_change: Callable[[str, str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._state = IDLE
        self._since = time.monotonic()
        self._on_change = on_change

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def since(self) -> float:
        with self._lock:
            return self._since

    def to(self, new: str) -> str:
        """Move to ``new``; returns the old state. An illegal move is a bug and raises ``RuntimeError``."""
        with self._lock:
            old = self._state
            if new not in _ALLOWED[old]:
                raise RuntimeError(f"illegal camera state change {old} -> {new}")
            self._state = new
            if new != old:
                self._since = time.monotonic()
            if self._on_change is not None:
                self._on_change(old, new)
            return old


class Backoff:
    """Exponential backoff with jitter and a cap: ``min(cap, initial * 2**n) * U(1 - jitter, 1)``."""

    def __init__(self, initial: float, cap: float, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self.jitter = min(max(jitter, 0.0), 1.0)
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * (2.0 ** min(self.attempt, 60)))
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


class ConnectFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def classify(e: BaseException, open_timeout: float) -> tuple[str, str]:
    """(metric reason, one clear human sentence) for a failed connection attempt; no URI in either."""
    strerror = getattr(e, "strerror", None)
    detail = str(strerror).strip() if strerror else type(e).__name__
    code = getattr(e, "errno", None)
    if isinstance(e, av.HTTPUnauthorizedError | av.HTTPForbiddenError):
        return "auth", f"the camera refused the credentials ({detail}); check the user name and password"
    if isinstance(e, av.HTTPNotFoundError):
        return "not_found", f"the camera has no stream at this path ({detail}); check the URI's path"
    if isinstance(e, av.ExitError) or code == errno.ETIMEDOUT:
        return "timeout", f"no answer within {open_timeout:g}s (open_timeout_s)"
    if isinstance(e, ConnectionRefusedError) or code in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                          errno.ENETUNREACH, errno.ECONNRESET):
        return "unreachable", f"cannot connect ({detail.lower()}); is the camera on and the host/port right?"
    if isinstance(e, av.HTTPError):
        return "error", f"the camera answered with an error ({detail})"
    return "error", f"cannot open the stream ({detail})"
