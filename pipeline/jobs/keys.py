"""Redis key names and job states of the batch-job queue."""

from __future__ import annotations

from pipeline.sinks import RedisKeys, redis_down

STATES = ("queued", "running", "done", "failed")
REDIS_DOWN = redis_down()


class JobKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queue = f"{prefix}:jobs"
        self.index = f"{prefix}:jobs:all"
        self.workers = f"{prefix}:workers"

    def job(self, jid: str) -> str:
        return f"{self.prefix}:job:{jid}"

    def progress(self, jid: str) -> str:
        """The job's stream's progress hash, as the Redis sink names it (a job's id is its stream id)."""
        return RedisKeys(self.prefix).progress(jid)
