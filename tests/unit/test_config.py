"""The config model: source ids, redaction, unknown keys, flags over YAML, environment, profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, parse_source
from pipeline.configfile import expand_env, load_config
from pipeline.redact import redact
from tests.support.servers import ROOT


def test_parse_source_ids() -> None:
    assert parse_source("/data/front door.mp4").id == "front_door"
    assert parse_source("cam1=rtsp://u:p@host:554/live/ch1").id == "cam1"
    assert parse_source("rtsp://host/live/ch1").id == "live_ch1"
    assert parse_source("file:///x/clip.mkv").path == "/x/clip.mkv"
    with pytest.raises(ConfigError, match="invalid stream id"):
        parse_source("bad!=clip.mp4")


def test_redact_hides_passwords() -> None:
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert "s3cret" not in redact("rtsps://admin:s3cret@cam/stream")


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("engine:\n  batch_size: 4\n  bogus_key: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'engine\.bogus_key'"):
        load_config(p)


def test_flags_override_yaml_and_sinks_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("engine: {batch_size: 4, max_wait_ms: 3}\nsources: [clip.mp4]\n")
    cfg = load_config(p, {"engine": {"batch_size": 2}})
    assert cfg.engine.batch_size == 2 and cfg.engine.max_wait_ms == 3 and cfg.sources[0].id == "clip"
    with pytest.raises(ConfigError, match="unknown sink"):
        load_config(None, {"sinks": ["kafka://x"]})


def test_redis_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@example:6380/2")
    assert load_config(None).sinks == ["redis://:pw@example:6380/2"]
    assert load_config(None, {"sinks": ["dir:out"]}).sinks == ["dir:out"]


def test_camera_credentials_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"sources": [
        {"id": "door", "uri": "rtsp://admin:${DOOR_PW}@127.0.0.1:554/live"}]}))
    monkeypatch.setenv("DOOR_PW", "p@ss word")
    cfg = load_config(cfg_file)
    assert cfg.sources[0].uri == "rtsp://admin:p%40ss%20word@127.0.0.1:554/live"
    monkeypatch.delenv("DOOR_PW")
    with pytest.raises(ConfigError, match="DOOR_PW is not set"):
        load_config(cfg_file)


def test_environment_variables_in_paths_are_not_percent_encoded(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "a dir#1"
    d.mkdir()
    (d / "clip.mp4").write_bytes(b"")
    monkeypatch.setenv("SWDIR", str(d))
    monkeypatch.setenv("PW", "p@ss/word")
    cfg = load_config(None, {"sources": [{"id": "c", "uri": "${SWDIR}/clip.mp4"},
                                         {"id": "f", "uri": "file://${SWDIR}/clip.mp4"},
                                         {"id": "r", "uri": "rtsp://admin:${PW}@127.0.0.1:554/live"}]})
    plain, uri, cam = cfg.sources
    assert plain.uri == f"{d}/clip.mp4" and plain.path == f"{d}/clip.mp4"
    assert uri.path == f"{d}/clip.mp4"
    assert cam.uri == "rtsp://admin:p%40ss%2Fword@127.0.0.1:554/live"
    assert expand_env("redis://:${PW}@127.0.0.1:6379/0") == "redis://:p%40ss%2Fword@127.0.0.1:6379/0"


@pytest.mark.parametrize("name", ["latency", "throughput"])
def test_profiles_load_and_keep_live_queues_dropping(name: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", {"sources": [{"id": "cam", "uri": "rtsp://h/s"}]})
    assert cfg.queues.live_policy == "drop_oldest" and cfg.live.latency_budget_ms > 0
    if name == "latency":
        assert cfg.engine.batch_size == 1 and cfg.engine.max_wait_ms == 0
        assert max(cfg.queues.decoded, cfg.queues.prepared, cfg.queues.inferred, cfg.queues.results) <= 2
    else:
        assert cfg.engine.batch_size >= 8 and cfg.queues.prepared >= 16


def test_zones_and_rules_validate(tmp_path: Path) -> None:
    p = tmp_path / "z.yaml"
    p.write_text(yaml.safe_dump({
        "zones": [{"name": "doorway", "streams": ["front"],
                   "polygon": [[0.10, 0.40], [0.45, 0.40], [0.45, 1.0], [0.10, 1.0]]}],
        "rules": [{"name": "person-in-doorway", "zone": "doorway", "classes": ["person", 3], "min_coverage": 0.05,
                   "for_frames": 3, "clear_frames": 5}],
    }))
    cfg = load_config(p)
    assert cfg.zones[0].streams == ["front"] and cfg.rules[0].classes == ["person", 3]
    assert cfg.rules[0].for_frames == 3 and cfg.rules[0].max_distance_m is None


@pytest.mark.parametrize("data, words", [
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0]]}]}, "zone 'a': polygon needs at least 3 points"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 2]]}]}, "outside the frame"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 1], [1, 0], [0, 1]]}]}, "self-intersecting"),
    ({"zones": [{"name": "a/b", "polygon": [[0, 0], [1, 0], [0, 1]]}]}, "invalid zone name 'a/b'"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]], "streams": ["x y"]}]}, "invalid stream id"),
    # two equal copies, not one object twice: yaml.safe_dump would write that as an alias, which configs refuse
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]]} for _ in range(2)]},
     "two zones share the name 'a'"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]], "shape": 1}]}, "unknown config key 'zones.0.shape'"),
    ({"rules": [{"name": "r", "zone": "a", "classes": ["person"]}]}, "rule 'r': unknown zone 'a' (zones: none"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]]}],
      "rules": [{"name": "r", "zone": "a", "classes": ["person"], "min_coverage": 2}]}, "rules.0.min_coverage"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]]}], "tasks": ["depth"],
      "rules": [{"name": "r", "zone": "a", "classes": ["person"]}]}, "needs the segmentation task"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]]}], "tasks": ["segmentation"],
      "rules": [{"name": "r", "zone": "a", "max_distance_m": 1}]}, "needs the depth task"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [0, 1]]}],
      "rules": [{"name": "r", "zone": "a", "classes": ["person"], "for_frames": 0}]}, "rules.0.for_frames"),
])
def test_bad_zones_and_rules_are_named(tmp_path: Path, data: dict[str, object], words: str) -> None:
    p = tmp_path / "z.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_zones_example_config_resolves_against_ade20k() -> None:
    from engines.labels import ADE20K_LABELS
    from pipeline.zones import resolve

    cfg = load_config(ROOT / "configs" / "zones.yaml")
    plan = resolve(cfg.zones, cfg.rules, dict(enumerate(ADE20K_LABELS)), metric=False)
    assert [r.name for r in plan.rules] == ["person-in-doorway", "bay-blocked"]
    assert plan.rules[0].classes == (ADE20K_LABELS.index("person"),)
