"""Redis key names of the fleet (all under the pipeline's key prefix)."""

from __future__ import annotations

from pipeline.sinks import RedisKeys


class FleetKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.cameras = f"{prefix}:cameras"  # hash: camera id -> JSON of a sources: entry (the desired state)
        self.changed = f"{prefix}:cameras:changed"  # pub/sub channel: a camera was added, replaced or removed
        self.nodes = f"{prefix}:nodes"  # hash: node id -> JSON (capacity, heartbeat, models, cameras)
        self.fence = RedisKeys(prefix).fence  # hash: camera id -> the last fencing token handed out (only grows)
        self.released = f"{prefix}:fleet:released"  # hash: camera id -> why its last owner let it go

    def lease(self, cam: str) -> str:
        return f"{self.prefix}:lease:{cam}"  # string "TOKEN NODE" with a TTL of fleet.lease_s
