"""What the Redis sink and its readers (``show``, ``snapshot``, ``alerts``, the live view, the job worker) share:
the key names, the client, the errors that mean Redis is away, and one line for a key that holds the wrong
type or a corrupt resume point."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from engines.base import error_reason
from pipeline.config import ConfigError

SCHEMA_VERSION = "1"
WAY_OUT = "DEL the key or use another --redis-prefix"


def redis_down() -> tuple[type[Exception], ...]:
    """The errors that mean Redis is away for now, so the call is worth retrying: unreachable or timed out
    (redis-py wraps socket errors in these), loading its data after a restart, or a replica that refuses writes
    during a failover. Any other error reply is a refusal. (A function: redis is imported when first needed.)"""
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.meta = f"{prefix}:meta"
        self.streams = f"{prefix}:streams"
        self.alerts = f"{prefix}:alerts"  # stream of rule start/end events, and the pub/sub channel of the same
        self.alerts_active = f"{prefix}:alerts:active"  # hash "{stream}/{rule}" -> the start event (JSON)
        self.fence = f"{prefix}:fleet:fence"  # hash: camera id -> its current fencing token (fleet nodes)

    def frames(self, sid: str) -> str:
        return f"{self.prefix}:stream:{sid}:frames"

    def events(self, sid: str) -> str:
        return f"{self.prefix}:stream:{sid}:events"

    def progress(self, sid: str) -> str:
        return f"{self.prefix}:stream:{sid}:progress"

    def expected_types(self, sid: str | None = None) -> dict[str, str]:
        """The Redis type of each key the pipeline writes (of stream ``sid`` and the shared ones)."""
        kinds = {self.meta: "hash", self.streams: "set", self.alerts: "stream", self.alerts_active: "hash"}
        if sid is not None:
            kinds = {self.frames(sid): "stream", self.progress(sid): "hash", **kinds}
        return kinds


def key_type(client: Any, key: str) -> str:
    """Redis's ``TYPE`` of ``key`` as text (``none`` when absent); raises what the client raises."""
    t = client.type(key)
    return t.decode() if isinstance(t, bytes) else str(t)


def corrupt_resume_point(key: str, detail: str) -> str:
    """The one line for a progress hash whose ``frame`` is not a frame index, and the way out."""
    return f"Redis key {key} has a corrupt resume point ({detail}): publish from frame 0 with --no-resume, or DEL the key"


def wrong_type(client: Any, kinds: dict[str, str]) -> str | None:
    """Which of ``kinds`` (key -> the type it must have) holds another type, as ``KEY holds a T, not a U``;
    None when all are right (or absent) or Redis cannot tell. A WRONGTYPE reply does not name the key."""
    try:
        for key, kind in kinds.items():
            t = key_type(client, key)
            if t not in ("none", kind):
                return f"{key} holds a {t}, not a {kind}"
    except Exception:  # the caller says what it can without the key
        return None
    return None


def key_problem(client: Any, e: Exception, kinds: dict[str, str], what: str) -> str:
    """One line for a Redis error reply ``e`` to ``what`` (e.g. "writing stream 'cam'"), naming the wrong-typed
    key and the way out when that is the cause."""
    reason = error_reason(e)
    if "CORRUPT progress" in reason:
        key = next((k for k in kinds if k.endswith(":progress")), "the progress hash")
        return corrupt_resume_point(key, f"{what}; its frame is not a frame index")
    if "WRONGTYPE" in reason:
        found = wrong_type(client, kinds)
        if found is not None:
            return f"Redis key {found} ({what}): {WAY_OUT}"
        return f"a Redis key {what} uses has the wrong type ({', '.join(kinds)}): {WAY_OUT}"
    if "publish to the channel" in reason:  # Redis 7 ACL users get no channel unless granted (resetchannels)
        return (f"Redis refused {what}: its ACL user may not publish to the events and alerts channels (grant "
                f"them: ACL SETUSER USER '&PREFIX:*', with the redis.prefix, default dpt)")
    return f"Redis refused {what} ({reason.split(' script: ')[0]})"


def redis_client(url: str, ca_file: str | None = None, timeout: float = 5.0, cert_file: str | None = None,
                 key_file: str | None = None) -> Any:
    """A client for ``redis://`` or ``rediss://`` (TLS, verified against ``ca_file`` or the system CAs,
    with an optional client certificate). ACL user and password come from the URL (or ``REDIS_PASSWORD``)."""
    import redis

    parts = urlsplit(url)
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                              "health_check_interval": 30}
    if parts.scheme == "rediss":
        if ca_file:
            kwargs["ssl_ca_certs"] = ca_file
        if cert_file:
            kwargs["ssl_certfile"] = cert_file
        if key_file:
            kwargs["ssl_keyfile"] = key_file
    password = os.environ.get("REDIS_PASSWORD")
    if password and not parts.password:
        kwargs["password"] = password
    return redis.Redis.from_url(url, **kwargs)


def parse_resume_point(key: str, value: str) -> int:
    """The ``frame`` of progress hash ``key``: an integer, else a corrupt resume point (ConfigError)."""
    if value.lstrip("-").isdigit():
        return int(value)
    raise ConfigError(corrupt_resume_point(key, f"frame {value[:40]!r} is not a frame index"))
