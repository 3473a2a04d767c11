"""Registry entries: checked as the config checks a source, stored with ``${VAR}`` unexpanded, shown redacted."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.fleet.registry import expand, parse_options, shown, validate_entry


def test_options_are_read_as_yaml_scalars() -> None:
    assert parse_options(["rtsp_transport=udp", "live=true", "open_timeout_s=3"]) == {
        "rtsp_transport": "udp", "live": True, "open_timeout_s": 3}


@pytest.mark.parametrize("opts, says", [
    (["rtsp_transport"], "use key=value"),
    (["=1"], "use key=value"),
    (["uri=rtsp://x/y"], "given as an argument"),
])
def test_bad_options(opts: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_options(opts)


@pytest.mark.parametrize("entry, says", [
    ({"id": "bad id", "uri": "rtsp://h/x"}, "invalid camera id 'bad id'"),
    ({"id": "x", "uri": "ftp://h/x"}, "unsupported scheme 'ftp://'"),
    ({"id": "x", "uri": "rtsp://h/x", "nope": 1}, "unknown config key 'nope'"),
    ({"id": "x", "uri": "rtsp://h/x", "open_timeout_s": -1}, "open_timeout_s"),
    ({"id": "x", "uri": "rtsp://h/x", "rtsp_transport": "xx"}, "rtsp_transport"),
    ({"id": "x"}, "give its uri"),
    ("rtsp://h/x", "is a mapping"),
])
def test_bad_entries_are_one_line(entry: object, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as e:
        validate_entry(entry)
    assert "\n" not in str(e.value)


def test_env_references_are_kept_then_expanded_on_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    e = validate_entry({"id": "door", "uri": "rtsp://admin:${DOOR_PASS}@10.0.0.5/s1"})
    assert e["uri"] == "rtsp://admin:${DOOR_PASS}@10.0.0.5/s1"
    with pytest.raises(ConfigError, match="DOOR_PASS is not set"):
        expand(e)
    monkeypatch.setenv("DOOR_PASS", "p@ss:w/rd")
    assert expand(e).uri == "rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.5/s1"
    assert "hunter2" not in str(shown({"id": "y", "uri": "rtsp://admin:hunter2@h/x"}))
