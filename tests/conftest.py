"""Shared fixtures: a private redis-server on a free port, real-content H.264 clips, tiny DPT checkpoints."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server process on a free port, in its own temp dir. ``stop()``/``start()`` simulate outages."""

    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None) -> None:
        self.dir = workdir
        self.port = port or free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server); the test command installs it")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 1280x720 48-frame clip, a 640x360 clip, and the tiny segmentation/depth checkpoints (session-wide)."""
    from pipeline.sample import make_checkpoint, make_clip

    d = tmp_path_factory.mktemp("assets")
    return {
        "clip720": make_clip(d / "clip720.mp4", frames=24, width=1280, height=720, seed=0),
        "clip360": make_clip(d / "clip360.mp4", frames=20, width=640, height=360, seed=1),
        "segmentation": make_checkpoint(d / "seg", "segmentation"),
        "depth": make_checkpoint(d / "depth", "depth"),
        "dir": d,
    }


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
        input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``dptstream`` as a user would (a subprocess), returning its exit code, stdout and stderr."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=str(ROOT))


def model_args(assets: dict[str, Path]) -> list[str]:
    return ["-m", f"segmentation={assets['segmentation']}", "-m", f"depth={assets['depth']}"]
