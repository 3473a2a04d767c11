"""Camera leases: at most one node owns a camera, and each ownership carries a fencing token that only grows.

A lease is the key ``{prefix}:lease:{camera}`` = ``"TOKEN NODE"`` with a TTL of ``fleet.lease_s``; its owner
renews it every third of that. Acquiring hands out the next token (``HINCRBY`` on ``{prefix}:fleet:fence``,
never reset), and the Redis sink's publish script refuses a frame whose token is not the camera's current one,
so a node that was paused past its lease can never write after another node took the camera over. Each
operation is one Lua script, so no two nodes can interleave inside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.fleet.keys import FleetKeys

# KEYS: lease, fence hash, released hash. ARGV: node, camera, ttl ms.
# Returns {token, reason}: token 0 when another node holds it (reason = that node); reason is "held" (ours
# already, renewed), "new" (first owner), or why the previous owner let go: its release reason, else node_lost.
ACQUIRE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local owner = string.sub(cur, sp + 1)
  if owner ~= ARGV[1] then return {0, owner} end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {tonumber(string.sub(cur, 1, sp - 1)), 'held'}
end
local before = redis.call('HGET', KEYS[2], ARGV[2])
local token = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[3])
local reason = 'new'
if before then reason = redis.call('HGET', KEYS[3], ARGV[2]) or 'node_lost' end
redis.call('HDEL', KEYS[3], ARGV[2])
return {token, reason}
"""

# KEYS: lease, fence hash. ARGV: node, camera, token, ttl ms. 1 = still ours (an expired lease that nobody took
# over, e.g. across a Redis outage, is taken back with the same token); 0 = lost.
RENEW_LUA = """
local mine = ARGV[3] .. ' ' .. ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur == mine then redis.call('PEXPIRE', KEYS[1], ARGV[4]) return 1 end
if not cur and redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[4])
  return 1
end
return 0
"""

# KEYS: lease, released hash. ARGV: node, camera, token, reason. 1 = released, 0 = it was not ours any more.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[3] .. ' ' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Grant:
    token: int  # 0: not granted
    reason: str  # "held", "new", "released", "rebalance", "node_lost", or the owner's id when not granted

    @property
    def ok(self) -> bool:
        return self.token > 0


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class Leases:
    def __init__(self, client: Any, keys: FleetKeys, node: str, lease_s: float) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.ttl_ms = max(int(lease_s * 1000), 1)
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def acquire(self, cam: str) -> Grant:
        token, reason = self._acquire(keys=[self.keys.lease(cam), self.keys.fence, self.keys.released],
                                      args=[self.node, cam, self.ttl_ms])
        return Grant(int(token), _text(reason))

    def renew(self, cam: str, token: int) -> bool:
        return bool(self._renew(keys=[self.keys.lease(cam), self.keys.fence], args=[self.node, cam, token,
                                                                                    self.ttl_ms]))

    def release(self, cam: str, token: int, reason: str = "released") -> bool:
        return bool(self._release(keys=[self.keys.lease(cam), self.keys.released],
                                  args=[self.node, cam, token, reason]))

    def owners(self, cams: Iterable[str]) -> dict[str, tuple[str, int]]:
        """Camera -> (node, token) of every camera with a live lease."""
        return read_owners(self.client, self.keys, cams)


def read_owners(client: Any, keys: FleetKeys, cams: Iterable[str]) -> dict[str, tuple[str, int]]:
    names = list(cams)
    if not names:
        return {}
    out: dict[str, tuple[str, int]] = {}
    for cam, raw in zip(names, client.mget([keys.lease(c) for c in names]), strict=True):
        if raw is None:
            continue
        token, _, node = _text(raw).partition(" ")
        if token.isdigit() and node:
            out[cam] = (node, int(token))
    return out
