"""The live nodes: each node heartbeats its entry in ``{prefix}:nodes`` (capacity, models, the cameras it runs)
every third of ``fleet.lease_s``; a node is live while its last heartbeat (Redis's clock) is younger than the
lease. Entries older than :data:`FORGET_S` are removed by whichever node sees them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.fleet.keys import FleetKeys

FORGET_S = 600.0

# KEYS: nodes hash. ARGV: node id, its entry (JSON without "seen_ms"). Stamps Redis's time; returns it (ms).
HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = cjson.decode(ARGV[2])
entry['seen_ms'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return now
"""


@dataclass(frozen=True)
class NodeInfo:
    id: str
    capacity: int
    age_s: float  # since the last heartbeat
    models: dict[str, str]
    cameras: tuple[str, ...]
    host: str = ""


def redis_ms(client: Any) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def read_nodes(client: Any, keys: FleetKeys) -> list[NodeInfo]:
    """Every registered node with its heartbeat age (unreadable entries are skipped)."""
    now = redis_ms(client)
    out = []
    for k, v in client.hgetall(keys.nodes).items():
        try:
            e = json.loads(v)
            out.append(NodeInfo(k.decode() if isinstance(k, bytes) else str(k), int(e.get("capacity", 0)),
                                max(now - int(e.get("seen_ms", 0)), 0) / 1000.0,
                                {str(a): str(b) for a, b in dict(e.get("models") or {}).items()},
                                tuple(str(c) for c in e.get("cameras") or ()), str(e.get("host", ""))))
        except (ValueError, TypeError, AttributeError):
            continue
    return out


def live_nodes(nodes: list[NodeInfo], lease_s: float) -> list[NodeInfo]:
    return [n for n in nodes if n.age_s < lease_s]


class NodeRegistry:
    def __init__(self, client: Any, keys: FleetKeys, node: str, capacity: int, models: dict[str, str],
                 host: str = "") -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.capacity = capacity
        self.models = models
        self.host = host
        self._beat = client.register_script(HEARTBEAT_LUA)

    def heartbeat(self, cameras: list[str]) -> None:
        entry = {"capacity": self.capacity, "models": self.models, "cameras": sorted(cameras), "host": self.host}
        self._beat(keys=[self.keys.nodes], args=[self.node, json.dumps(entry)])

    def leave(self) -> None:
        self.client.hdel(self.keys.nodes, self.node)

    def forget_stale(self, nodes: list[NodeInfo]) -> None:
        old = [n.id for n in nodes if n.age_s > FORGET_S and n.id != self.node]
        if old:
            self.client.hdel(self.keys.nodes, *old)
