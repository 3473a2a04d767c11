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


def test_a_handed_over_stream_keeps_its_rules_running_and_a_removed_one_ends_them(
        tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> None:
    """A fleet camera moving to another node (``remove_source(handover=True)``) leaves its active rule and its
    debounce state for the next owner; a camera removed for good ends its rules."""
    live = session_live_assets(tmp_path_factory)
    always = {"name": "seen", "zone": "all", "classes": list(range(150)), "min_coverage": 0.5}  # any class
    cfg = make_config(live, [], [redis_server.url], metrics={"port": None},
                      zones=[{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}], rules=[always])
    engines = engines_for(live)
    metrics = Metrics()
    sink = RedisSink(redis_server.url, cfg, metrics)
    sink.open()
    store = find_progress_store([sink])
    client = redis_server.client()
    pipeline = Pipeline(cfg, engines, [sink], metrics, hold_open=True)
    runner = threading.Thread(target=pipeline.run, daemon=True)

    def states(sid: str) -> list[str]:
        return [f[b"state"].decode() for _, f in client.xrange("dpt:alerts") if f[b"stream"] == sid.encode()]

    try:
        runner.start()
        wait_for(lambda: pipeline.running, 60, "the pipeline running")
        for sid in ("moved", "gone"):
            cam = SourceConfig(id=sid, uri=str(live.clip), live=True, loop=True, realtime=True)
            pipeline.add_source(plan_source(cfg, cam, engines, store, record=True))
        wait_for(lambda: states("moved") == ["start"] and states("gone") == ["start"], 60, "both rules active")
        pipeline.remove_source("moved", handover=True)
        pipeline.remove_source("gone")
        wait_for(lambda: pipeline.report.streams["moved"].done and pipeline.report.streams["gone"].done, 60,
                 "both ends")
        assert states("moved") == ["start"] and client.hexists("dpt:alerts:active", "moved/seen")
        assert store is not None and store.saved_progress("moved").rule_state  # the next owner continues it
        assert states("gone") == ["start", "end"] and not client.hexists("dpt:alerts:active", "gone/seen")
    finally:
        pipeline.request_stop()
        runner.join(60)
        sink.close()
        metrics.close()
