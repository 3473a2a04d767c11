"""The run plan: a source is looked at once before its frames flow (a real run, real Redis, a real clip)."""

from __future__ import annotations

import pathlib
from collections import Counter
from pathlib import Path
from typing import Any

import av
import pytest

from tests.support.servers import RedisServer


def test_a_file_is_opened_once_to_probe_and_once_to_decode_and_hashed_once(
        assets: dict[str, Path], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli.run import run_pipeline
    from pipeline.configfile import load_config

    clip = assets["clip360"].resolve()
    opens: Counter[str] = Counter()
    real_av_open = av.open
    real_path_open = pathlib.Path.open

    def counting_av_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, Path)) and Path(file).resolve() == clip:
            opens["av"] += 1
        return real_av_open(file, *args, **kwargs)

    def counting_path_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode and "b" in mode and self.resolve() == clip:
            opens["read"] += 1  # the identity hashes the file's first MiB
        return real_path_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_av_open)
    monkeypatch.setattr(pathlib.Path, "open", counting_path_open)
    cfg = load_config(None, {
        "sources": [{"id": "v", "uri": str(clip)}], "sinks": [redis_server.url],
        "models": {"segmentation": str(assets["segmentation"]), "depth": str(assets["depth"])},
        "engine": {"device": "cpu", "threads": 1}, "metrics": {"port": None}, "progress": False,
    })
    for run in ("first", "resumed"):  # a rerun checks the file's identity against the resume point: no more opens
        opens.clear()
        assert run_pipeline(cfg) == 0
        assert opens == {"av": 2, "read": 1}, run
    r = redis_server.client()
    assert r.xlen("dpt:stream:v:frames") == 20  # every frame once (the rerun published nothing twice)
