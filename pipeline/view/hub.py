"""The view's one reader of Redis: it polls, renders each new entry once and holds one picture per stream.

Every viewer (browser tile, ``latest.jpg``, ``/api/streams``, the event stream) reads the hub's state; none
of them touches Redis. So ten browsers on one camera cost one Redis read and one render per entry.

A poll is two pipelined round trips: ``TIME``, ``SMEMBERS {prefix}:streams``, ``HGETALL {prefix}:meta`` and
``HGETALL {prefix}:alerts:active``; then, per stream, the entries newer than the last one seen
(``XREVRANGE ... + (LAST COUNT n``). The newest entry is rendered (in a worker thread, one render in flight
per stream; entries that arrive meanwhile are skipped, never queued); the older ones only feed the
fps/latency window. When Redis is away, every tile says so and the hub keeps trying; it never exits. A read
that Redis refuses for one stream (its frames key holds another type) marks only that tile (state ``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.frames import valid_stream_id
from pipeline.overlay import PALETTE
from pipeline.redact import redact
from pipeline.sinks import WAY_OUT, RedisKeys, error_reason, key_type, redis_client
from pipeline.view.render import render_tile
from pipeline.view.stats import (
    RateWindow,
    Sample,
    Zone,
    active_zones,
    entry_key,
    entry_ms,
    parse_active_alerts,
    parse_classes,
    parse_labels,
    parse_zones,
    tile_state,
    top_classes,
)

log = logging.getLogger(__name__)

UNREACHABLE = "Redis unreachable"
FIRST_ENTRIES = 16  # entries read for a stream seen for the first time (fps/latency window)
MAX_NEW_ENTRIES = 64  # entries read per stream per poll; more means a gap, and the window restarts


@dataclass(frozen=True)
class ViewSettings:
    """Everything the view needs, resolved once at the CLI edge."""

    redis_url: str
    prefix: str = "dpt"
    host: str = "127.0.0.1"
    port: int = 8088
    token: str | None = None
    stale_after_s: float = 5.0
    poll_s: float = 0.1
    write_timeout_s: float = 5.0  # a viewer whose socket takes longer than this to accept one update is dropped
    render_threads: int = 1
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    redis_timeout_s: float = 2.0


@dataclass(frozen=True)
class Picture:
    """The one rendered frame a stream holds."""

    jpeg: bytes
    entry_id: str
    frame: int
    size: tuple[int, int]
    version: int


@dataclass
class Tile:
    """What the view knows of one stream (mutated only on the event loop)."""

    id: str
    window: RateWindow = field(default_factory=RateWindow)
    last_id: str | None = None
    frame: int | None = None
    published_ms: int | None = None
    classes: dict[int, float] = field(default_factory=dict)
    depth_kind: str | None = None
    picture: Picture | None = None
    render_key: tuple[Any, ...] | None = None  # what the held picture (or the one being made) was made from
    rendering: bool = False
    render_error: str | None = None
    read_error: str | None = None  # Redis refused to read this stream (e.g. its frames key is not a stream)
    entry: dict[str, bytes] | None = None  # the newest entry's fields (re-rendered when zones or alerts change)
    missing_since: float | None = None  # monotonic time it left {prefix}:streams
    node: str | None = None  # the fleet node that wrote the newest entry (fleet cameras only)


@dataclass(frozen=True)
class PollResult:
    """One poll's reading of Redis (made in the I/O thread)."""

    now_ms: int
    streams: list[str]
    meta: dict[str, bytes]
    active: dict[bytes, bytes]
    entries: dict[str, list[tuple[str, dict[str, bytes]]]]  # newest first
    errors: dict[str, str] = field(default_factory=dict)  # stream -> why its entries could not be read


class Hub:
    """Reads Redis for every viewer; see the module doc. ``start()`` on the event loop, ``close()`` at exit."""

    def __init__(self, settings: ViewSettings) -> None:
        self.settings = settings
        self.keys = RedisKeys(settings.prefix)
        self.tiles: dict[str, Tile] = {}
        self.labels: dict[int, str] = {}
        self.zones: list[Zone] = []
        self.active: dict[str, list[dict[str, Any]]] = {}
        self.redis_ok = False
        self.redis_error: str | None = None  # redacted, for logs and /api/streams
        self.now_ms = 0
        self.version = 0  # bumped when anything a viewer shows changes (not the ages)
        self.ready = asyncio.Event()  # the first poll answered (or failed)
        self.viewers = 0
        self.renders = 0  # pictures made (one per new entry per stream)
        self._changed = asyncio.Condition()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="view-redis")
        self._render = ThreadPoolExecutor(max(1, settings.render_threads), thread_name_prefix="view-render")
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._renders: set[asyncio.Task[None]] = set()
        self._meta_raw: dict[str, bytes] = {}
        self._significant: str | None = None
        self._apply_error: str | None = None
        self._labels_version = 0  # bumped when {prefix}:meta labels change (pictures name classes)
        self.payload_json = json.dumps(self._payload())
        self._closed = False
        self._shared_errors: set[str] = set()  # shared keys (meta, active alerts) Redis refused to read (I/O thread)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="view-poll")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._renders):
            t.cancel()
        async with self._changed:
            self._changed.notify_all()
        self._render.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_change(self, seen: int, timeout: float) -> int:
        """Wait until ``version`` differs from ``seen`` (or ``timeout`` passes); the current version."""
        async with self._changed:
            if self.version == seen and not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version

    async def wait_picture(self, sid: str, timeout: float) -> Picture | None:
        deadline = time.monotonic() + timeout
        while True:
            tile = self.tiles.get(sid)
            if tile is None or tile.picture is not None or tile.last_id is None:
                return tile.picture if tile else None
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return None
            await self.wait_change(self.version, left)

    # -- polling ------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            t0 = time.monotonic()
            try:
                cursors = {sid: t.last_id for sid, t in self.tiles.items()}
                result = await loop.run_in_executor(self._io, self._poll, cursors)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away (or answering nonsense): say so, keep trying
                self._went_down(e)
            else:
                self._came_back()
                try:
                    self._apply(result)
                except Exception as e:  # entries we cannot make sense of must not stop the view
                    msg = f"{type(e).__name__}: {e}"
                    if msg != self._apply_error:
                        log.exception("cannot use what Redis returned (%s); skipping it", redact(msg))
                    self._apply_error = msg
                else:
                    self._apply_error = None
            self.ready.set()
            await self._publish()
            pause = self.settings.poll_s if self.redis_ok else max(self.settings.poll_s, 0.5)
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - t0)))

    def _connect(self) -> Any:
        if self._client is None:
            s = self.settings
            self._client = redis_client(s.redis_url, s.ca_file, timeout=s.redis_timeout_s, cert_file=s.cert_file,
                                        key_file=s.key_file)
        return self._client

    def _poll(self, cursors: dict[str, str | None]) -> PollResult:
        """Runs in the I/O thread: the two round trips of one poll."""
        client = self._connect()
        pipe = client.pipeline(transaction=False)
        pipe.time()
        pipe.smembers(self.keys.streams)
        pipe.hgetall(self.keys.meta)
        pipe.hgetall(self.keys.alerts_active)
        (secs, micros), members, meta, active = pipe.execute(raise_on_error=False)
        if isinstance(members, Exception):
            raise members
        meta = self._or_empty(meta, self.keys.meta, "hash")
        active = self._or_empty(active, self.keys.alerts_active, "hash")
        streams = sorted(s for s in (m.decode(errors="replace") for m in members) if valid_stream_id(s))
        entries: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
        errors: dict[str, str] = {}
        if streams:
            pipe = client.pipeline(transaction=False)
            for sid in streams:
                last = cursors.get(sid)
                if last is None:
                    pipe.xrevrange(self.keys.frames(sid), "+", "-", count=FIRST_ENTRIES)
                else:
                    pipe.xrevrange(self.keys.frames(sid), "+", f"({last}", count=MAX_NEW_ENTRIES)
            for sid, got in zip(streams, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(got, Exception):
                    errors[sid] = self._read_problem(client, got, self.keys.frames(sid), "stream")
                    continue
                entries[sid] = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in got]
        return PollResult(int(secs) * 1000 + int(micros) // 1000, streams,
                          {k.decode(): v for k, v in meta.items()}, active, entries, errors)

    @staticmethod
    def _read_problem(client: Any, e: Exception, key: str, kind: str) -> str:
        """Why ``key`` (of type ``kind``) could not be read: ``KEY is not a KIND (it holds a T)`` for a wrong type."""
        import redis

        if not isinstance(e, redis.ResponseError):
            raise e  # a connection error: Redis is away for every tile
        reason = redact(error_reason(e))
        if "WRONGTYPE" in reason:
            try:
                t = key_type(client, key)
            except redis.RedisError:
                return f"{key} is not a {kind}"
            return f"{key} is not a {kind} (it holds a {t})"
        return f"cannot read {key} ({reason})"

    def _or_empty(self, got: Any, key: str, kind: str) -> Any:
        """A shared key's reply, or nothing (warned once) when Redis refused to read it."""
        if not isinstance(got, Exception):
            self._shared_errors.discard(key)
            return got
        why = self._read_problem(self._connect(), got, key, kind)
        if key not in self._shared_errors:
            self._shared_errors.add(key)
            log.warning("%s: read as empty; %s", why, WAY_OUT)
        return {}

    def _went_down(self, e: Exception) -> None:
        reason = redact(error_reason(e))
        if self.redis_ok or self.redis_error is None:
            log.warning("Redis at %s is unreachable (%s): tiles say so; retrying",
                        redact(self.settings.redis_url), reason)
        self.redis_ok = False
        self.redis_error = reason

    def _came_back(self) -> None:
        if not self.redis_ok and self.redis_error is not None:
            log.warning("Redis at %s is reachable again", redact(self.settings.redis_url))
        self.redis_ok = True
        self.redis_error = None

    def _apply(self, r: PollResult) -> None:
        self.now_ms = r.now_ms
        if r.meta != self._meta_raw:
            self._meta_raw = r.meta
            labels = parse_labels(r.meta.get("labels"))
            if labels != self.labels:
                self.labels = labels
                self._labels_version += 1
            self.zones = parse_zones(r.meta.get("zones"))
        self.active = parse_active_alerts(r.active)
        now = time.monotonic()
        for sid in r.streams:
            tile = self.tiles.get(sid)
            if tile is None:
                tile = self.tiles[sid] = Tile(sid)
            tile.missing_since = None
            why = r.errors.get(sid)
            if why is not None and why != tile.read_error:
                log.warning("%s: %s; its tile says so (%s)", sid, why, WAY_OUT)
            tile.read_error = why
            self._take_entries(tile, r.entries.get(sid, []))
        for sid, tile in list(self.tiles.items()):
            if sid in r.streams:
                continue
            # gone from the set (e.g. a Redis restart before the pipeline published again): keep it a while
            if tile.missing_since is None:
                tile.missing_since = now
            elif now - tile.missing_since > self.settings.stale_after_s:
                del self.tiles[sid]
        for tile in self.tiles.values():
            self._maybe_render(tile)

    def _take_entries(self, tile: Tile, got: list[tuple[str, dict[str, bytes]]]) -> None:
        if not got:
            return
        if tile.last_id is not None and entry_key(got[0][0]) <= entry_key(tile.last_id):
            return
        if tile.last_id is None or len(got) >= MAX_NEW_ENTRIES:
            tile.window.reset()  # first sight, or more entries than one read takes: the window restarts
        samples = []
        for eid, f in reversed(got):
            try:
                frame = int(f.get("frame", b"-1"))
                lat = float(f["latency_ms"]) if "latency_ms" in f else None
            except ValueError:
                continue
            samples.append(Sample(entry_ms(eid), frame, lat))
        tile.window.add(samples)
        newest_id, newest = got[0]
        tile.last_id = newest_id
        tile.published_ms = entry_ms(newest_id)
        try:
            tile.frame = int(newest.get("frame", b"-1"))
        except ValueError:
            tile.frame = None
        node = newest.get("node")
        tile.node = node.decode(errors="replace")[:64] if isinstance(node, bytes) else None
        tile.classes = parse_classes(newest.get("classes"))
        try:
            tile.depth_kind = json.loads(newest["depth"]).get("kind") if "depth" in newest else None
        except (ValueError, AttributeError):
            tile.depth_kind = None
        tile.entry = newest  # the entry to render next: replaced by a newer one, never queued

    def _zones_for(self, sid: str) -> tuple[list[Zone], set[str]]:
        zones = [z for z in self.zones if z.applies_to(sid)]
        return zones, active_zones(self.active.get(sid, []))

    def _maybe_render(self, tile: Tile) -> None:
        fields = tile.entry
        if tile.rendering or tile.last_id is None or fields is None:
            return
        zones, active = self._zones_for(tile.id)
        key = (tile.last_id, tuple(zones), tuple(sorted(active)), self._labels_version)
        if key == tile.render_key:
            return
        tile.rendering = True
        tile.render_key = key
        task = asyncio.get_running_loop().create_task(
            self._render_one(tile, tile.last_id, fields, dict(self.labels), zones, active))
        self._renders.add(task)
        task.add_done_callback(self._renders.discard)

    async def _render_one(self, tile: Tile, entry_id: str, fields: dict[str, bytes], labels: dict[int, str],
                          zones: list[Zone], active: set[str]) -> None:
        loop = asyncio.get_running_loop()
        try:
            jpeg, size = await loop.run_in_executor(self._render, render_tile, fields, labels, zones, active)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a malformed entry: say so on the tile, keep the previous picture
            msg = error_reason(e)
            if tile.render_error != msg:
                log.warning("%s: cannot render entry %s (%s)", tile.id, entry_id, msg)
            tile.render_error = msg
        else:
            self.renders += 1
            tile.render_error = None
            try:
                frame = int(fields.get("frame", b"-1"))
            except ValueError:
                frame = -1
            old = tile.picture.version if tile.picture else 0
            tile.picture = Picture(jpeg, entry_id, frame, size, old + 1)
        finally:
            tile.rendering = False
        if self.tiles.get(tile.id) is tile:
            self._maybe_render(tile)  # something newer may have arrived meanwhile
            await self._publish()

    # -- what viewers get -----------------------------------------------------------------------------------
    def stream_info(self, tile: Tile) -> dict[str, Any]:
        age = None
        if tile.published_ms is not None and self.now_ms:
            age = max(0.0, (self.now_ms - tile.published_ms) / 1000.0)
        fps = tile.window.fps()
        lat = tile.window.latency_ms()
        pic = tile.picture
        return {
            "id": tile.id,
            "state": "error" if tile.read_error and self.redis_ok else tile_state(age, self.settings.stale_after_s,
                                                                                 self.redis_ok),
            "frame": tile.frame,
            "node": tile.node,
            "age_s": None if age is None else round(age, 1),
            "fps": None if fps is None else round(fps, 2),
            "latency_ms": None if lat is None else round(lat, 1),
            "classes": top_classes(tile.classes, self.labels, PALETTE),
            "depth_kind": tile.depth_kind,
            "alerts": self.active.get(tile.id, []),
            "zones": [z.name for z in self.zones if z.applies_to(tile.id)],
            "image": None if pic is None else {"version": pic.version, "frame": pic.frame, "width": pic.size[0],
                                               "height": pic.size[1]},
            "render_error": tile.read_error or tile.render_error,
        }

    def _payload(self) -> dict[str, Any]:
        return {
            "redis": "ok" if self.redis_ok else "unreachable",
            "error": None if self.redis_ok else UNREACHABLE,
            "prefix": self.settings.prefix,
            "stale_after_s": self.settings.stale_after_s,
            "renders": self.renders,  # pictures made so far: one per new entry per stream, whoever watches
            "viewers": self.viewers,  # open event streams (browser pages)
            "streams": [self.stream_info(t) for _sid, t in sorted(self.tiles.items())],
        }

    async def _publish(self) -> None:
        payload = self._payload()
        text = json.dumps(payload)
        for s in payload["streams"]:  # ages tick every poll; only other changes wake viewers at once
            s.pop("age_s")
        significant = json.dumps(payload)
        if significant != self._significant:
            self._significant = significant
            self.payload_json = text
            async with self._changed:
                self.version += 1
                self._changed.notify_all()
        else:
            self.payload_json = text
