"""Shared fixtures: a private redis-server on a free port, real-content H.264 clips, tiny DPT checkpoints.
The helpers behind them live in tests/support/ and are imported from there, never from this file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import RedisServer


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


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One engine cache (ONNX exports, compiled OpenVINO models) for the whole session, inherited by every
    ``dptstream`` subprocess: the tiny checkpoints are deterministic, so each shape compiles once per session."""
    import os

    d = tmp_path_factory.mktemp("engine-cache")
    old = os.environ.get("DPTSTREAM_CACHE_DIR")
    os.environ["DPTSTREAM_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("DPTSTREAM_CACHE_DIR", None)
    else:
        os.environ["DPTSTREAM_CACHE_DIR"] = old
