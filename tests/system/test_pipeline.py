"""The running pipeline: sources join and leave it while it runs, against a real Redis with a real clip."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pipeline.config import SourceConfig
from pipeline.metrics import Metrics
from pipeline.runtime import Pipeline, PipelineError, RunReport
from pipeline.runtime.app import labels_of
from pipeline.runtime.plan import find_progress_store, plan_source
from pipeline.sinks import RedisSink
from tests.support.live import engines_for, entries, make_config, session_live_assets, wait_for
from tests.support.servers import RedisServer

pytestmark = pytest.mark.slow


def _frames(client: Any, sid: str) -> list[int]:
    return [int(e["frame"]) for e in entries(client, sid)]


def test_a_file_source_joins_and_leaves_a_running_pipeline_and_every_frame_is_published_once(
        tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> None:
    live = session_live_assets(tmp_path_factory)
    total = 45  # the camera clip's frames (15 fps)
    cfg = make_config(live, [{"id": "a", "uri": str(live.clip)}], [redis_server.url], metrics={"port": None})
    engines = engines_for(live)
    metrics = Metrics()
    sink = RedisSink(redis_server.url, cfg, metrics)
    sink.open()
    sink.describe(labels_of(engines), {t: str(e.spec.model_id) for t, e in engines.items()})
    store = find_progress_store([sink])
    client = redis_server.client()
    pipeline = Pipeline(cfg, engines, [sink], metrics, hold_open=True)  # the run outlives its first source
    done: list[RunReport] = []
    runner = threading.Thread(target=lambda: done.append(pipeline.run()), daemon=True)
    try:
        runner.start()
        wait_for(lambda: len(_frames(client, "a")) >= 1, 60, "the first source's frames")
        # paced at the clip's rate, so that it is still being read when it is taken out
        paced = SourceConfig(id="b", uri=str(live.clip), realtime=True)
        pipeline.add_source(plan_source(cfg, paced, engines, store, record=True))
        with pytest.raises(PipelineError, match="already part of the run"):
            pipeline.add_source(plan_source(cfg, paced, engines, store, record=False))
        wait_for(lambda: len(_frames(client, "b")) >= 5, 60, "frames of the added source")
        pipeline.remove_source("b")
        wait_for(lambda: pipeline.report.streams["b"].done, 60, "the removed source's end")
        first = _frames(client, "b")
        assert first == list(range(len(first))) and len(first) < total  # left mid-file, nothing of it lost
        assert pipeline.report.streams["b"].decoded == len(first)  # what it decoded drained to Redis

        again = plan_source(cfg, SourceConfig(id="b", uri=str(live.clip)), engines, store, record=True)
        assert again.start_frame == len(first)  # joins again after its last published frame
        pipeline.add_source(again)
        wait_for(lambda: pipeline.report.streams["b"].done, 120, "the re-added source's end")
        assert pipeline.running  # held open: no source left, still running
        pipeline.request_stop()
        runner.join(60)
        assert not runner.is_alive()
    finally:
        pipeline.request_stop()
        runner.join(60)
        sink.close()
        metrics.close()
    report = done[0]
    assert report.fatal is None and not report.failed
    assert _frames(client, "a") == list(range(total))
    assert _frames(client, "b") == list(range(total))  # every frame of both exactly once
    assert sink.duplicates == 0
    assert report.unwritten == 0
    with pytest.raises(PipelineError, match="has ended"):
        pipeline.add_source(plan_source(cfg, SourceConfig(id="c", uri=str(live.clip)), engines, None, False))
