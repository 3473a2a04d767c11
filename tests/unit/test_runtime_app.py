"""``create_engines``: every engine is warmed up before the pipeline starts."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.configfile import load_config
from pipeline.runtime import app


class _FakeEngine:
    def __init__(self, task: str, log: list[str], fail_warmup: bool = False) -> None:
        self.task = task
        self.log = log
        self.fail_warmup = fail_warmup

    def warmup(self) -> None:
        self.log.append(f"warmup {self.task}")
        if self.fail_warmup:
            raise RuntimeError("CUDA error: out of memory")

    def close(self) -> None:
        self.log.append(f"close {self.task}")


def _cfg() -> Any:
    return load_config(None, {"models": {"segmentation": "seg", "depth": "depth"}, "tasks": ["segmentation", "depth"]})


def test_every_engine_is_warmed_up_before_it_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(app.eng, "create_engine", lambda c: (log.append(f"create {c.task}"),
                                                             _FakeEngine(c.task, log))[1])
    engines = app.create_engines(_cfg())
    assert set(engines) == {"segmentation", "depth"}
    assert log == ["create segmentation", "create depth", "warmup segmentation", "warmup depth"]


def test_a_failed_warmup_closes_what_was_created(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(app.eng, "create_engine", lambda c: _FakeEngine(c.task, log, fail_warmup=c.task == "depth"))
    with pytest.raises(RuntimeError, match="out of memory"):
        app.create_engines(_cfg())
    assert "close segmentation" in log and "close depth" in log
