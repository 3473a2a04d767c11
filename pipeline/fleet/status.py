"""What ``cameras list`` and the view show of each desired camera: its owner, state, frame rate and the age of
its last frame (from the lease, the node heartbeats and the stream's own entries). URIs are redacted."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.fleet.keys import FleetKeys
from pipeline.fleet.leases import read_owners
from pipeline.fleet.nodes import read_nodes, redis_ms
from pipeline.fleet.registry import CameraRegistry, shown
from pipeline.sinks import RedisKeys

RECENT_S = 5.0  # frames younger than this count towards the frame rate; a running camera's last frame is younger


@dataclass(frozen=True)
class CameraRow:
    id: str
    uri: str  # redacted, ${VAR} kept
    node: str | None
    state: str  # running, starting (owned, no recent frame), unassigned
    fps: float
    age_s: float | None  # since the last published frame; None: none yet

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _entry_ms(entry_id: Any) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(raw.split("-", 1)[0])


def frame_rate(client: Any, key: str, now_ms: int) -> tuple[float, float | None]:
    """(frames/s over the last :data:`RECENT_S`, age of the last entry in s) of a frames stream."""
    entries = client.xrevrange(key, count=64)
    if not entries:
        return 0.0, None
    times = [_entry_ms(e[0]) for e in entries]
    age = max(now_ms - times[0], 0) / 1000.0
    recent = [t for t in times if now_ms - t <= RECENT_S * 1000]
    if len(recent) < 2:
        return 0.0, age
    span = (recent[0] - recent[-1]) / 1000.0
    return ((len(recent) - 1) / span if span > 0 else 0.0), age


def camera_rows(client: Any, prefix: str, lease_s: float = 5.0) -> list[CameraRow]:
    keys = FleetKeys(prefix)
    rkeys = RedisKeys(prefix)
    entries = CameraRegistry(client, keys).entries() or {}
    owners = read_owners(client, keys, entries)
    live = {n.id for n in read_nodes(client, keys) if n.age_s < lease_s}
    now = redis_ms(client)
    rows = []
    for cam in sorted(entries):
        node = owners.get(cam, (None, 0))[0]
        fps, age = frame_rate(client, rkeys.frames(cam), now)
        if node is None or node not in live:
            state = "unassigned" if node is None else "owner_lost"
        else:
            state = "running" if age is not None and age < RECENT_S else "starting"
        rows.append(CameraRow(cam, str(shown(entries[cam]).get("uri", "")), node, state, round(fps, 2),
                              None if age is None else round(age, 2)))
    return rows
