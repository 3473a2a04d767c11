"""Real servers for tests: a private redis-server on a free port, and ``dptstream`` run as a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


@contextlib.contextmanager
def cli_process(*args: str, stdout: int | None = None, env: dict[str, str] | None = None
                ) -> Iterator[subprocess.Popen[str]]:
    """``dptstream`` running as a subprocess, as a user starts it (stderr piped, text); killed on the way out
    if the test left it running."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=str(ROOT), stdout=stdout,
                            stderr=subprocess.PIPE, text=True, env=e)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
        input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``dptstream`` as a user would (a subprocess), returning its exit code, stdout and stderr."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=str(ROOT))


def model_args(assets: dict[str, Path]) -> list[str]:
    return ["-m", f"segmentation={assets['segmentation']}", "-m", f"depth={assets['depth']}"]


def one_error_line(stderr: str) -> str:
    """The one ``dptstream: error:`` line of a failed run (and no traceback): what a user sees."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("dptstream: error:")]
    assert len(errors) == 1, stderr
    return errors[0]
