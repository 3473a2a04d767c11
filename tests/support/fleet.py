"""A camera fleet on this machine for tests and ``bench/fleet.py``: ``dptstream node`` processes started as a user
starts them, a real RTSP server whose mounts are the cameras, and readers of what the fleet wrote to Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.live import LiveAssets, metric, parse_metrics
from tests.support.servers import ROOT, free_port

LEASE_S = 1.5  # short leases keep failover tests short


@dataclass
class Node:
    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.scrape(), name, **labels)

    def ready(self) -> dict[str, Any] | None:
        """``/readyz`` as JSON (200 or 503), None while nothing answers yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            return dict(json.loads(e.read()))
        except OSError:
            return None

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Fleet:
    assets: LiveAssets
    redis_url: str
    workdir: Path
    lease_s: float = LEASE_S
    prefix: str = "dpt"
    nodes: dict[str, Node] = field(default_factory=dict)

    def config(self, **fleet: Any) -> Path:
        data = {
            "sinks": [self.redis_url],
            "models": {"segmentation": str(self.assets.segmentation), "depth": str(self.assets.depth)},
            "engine": {"backend": "torch", "device": "cpu", "threads": 1, "batch_size": 4, "max_wait_ms": 5},
            "metrics": {"host": "127.0.0.1"},
            "redis": {"prefix": self.prefix},
            "live": {"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0, "stall_timeout_s": 3.0},
            "fleet": {"lease_s": self.lease_s, "reconcile_s": 0.25, "max_cameras": 8, **fleet},
        }
        p = self.workdir / f"node-{len(list(self.workdir.glob('node-*.yaml')))}.yaml"
        p.write_text(yaml.safe_dump(data))
        return p

    def start(self, name: str, *extra: str, env: dict[str, str] | None = None, **fleet: Any) -> Node:
        port = free_port()
        log = self.workdir / f"{name}.log"
        cmd = [sys.executable, "-m", "pipeline.cli", "node", str(self.config(**fleet)), "--node-id", name,
               "--metrics-port", str(port), *extra]
        e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with log.open("wb") as f:
            proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=f, env=e)
        node = Node(name, port, log, proc)
        self.nodes[name] = node
        return node

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--redis", self.redis_url,
                               "--redis-prefix", self.prefix], capture_output=True, text=True, timeout=120,
                              env=e, cwd=str(ROOT))

    def stop_all(self) -> None:
        for n in self.nodes.values():
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.proc.kill()
            n.proc.wait(10)


def owners(client: Any, cams: list[str], prefix: str = "dpt") -> dict[str, str]:
    """Camera -> the node holding its lease now."""
    out = {}
    for cam, raw in zip(cams, client.mget([f"{prefix}:lease:{c}" for c in cams]), strict=True):
        if raw is not None:
            out[cam] = raw.decode().partition(" ")[2]
    return out


def written(client: Any, sid: str, prefix: str = "dpt") -> list[tuple[str, float, str]]:
    """(entry id, ts, node) of every entry of a stream, in stream order."""
    return [(i.decode(), float(f[b"ts"]), f.get(b"node", b"").decode())
            for i, f in client.xrange(f"{prefix}:stream:{sid}:frames")]


def runs_of(nodes: list[str]) -> list[str]:
    """The writers of a stream in order, one per uninterrupted run (``a a b b`` -> ``[a, b]``)."""
    out: list[str] = []
    for n in nodes:
        if not out or out[-1] != n:
            out.append(n)
    return out


def newest_ms(client: Any, sid: str, prefix: str = "dpt") -> int:
    last = client.xrevrange(f"{prefix}:stream:{sid}:frames", count=1)
    return int(last[0][0].decode().split("-")[0]) if last else 0


def now_ms(client: Any) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


