"""Issue 10 (hardening), pure config logic: redaction of any URI (items 8, 9), whole-string name checks (10),
YAML alias bombs and oversized or binary configs (7, 13), flag and value bounds (13), source URI schemes (16)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from pipeline.cli.common import build_overrides
from pipeline.config import ConfigError, SourceConfig, parse_source
from pipeline.configfile import load_config
from pipeline.redact import redact


# -- one redact() for every scheme; the userinfo ends at the authority's last "@" -------------------------------
@pytest.mark.parametrize("uri, secret, shown", [
    ("redis://:s3cret@PW@127.0.0.1:6379/0", "s3cret@PW", "redis://:***@127.0.0.1:6379/0"),
    ("rtsp://admin:cam@Secret9@10.0.0.5:554/live", "cam@Secret9", "rtsp://admin:***@10.0.0.5:554/live"),
    ("rtsps://admin:a:b:c@cam/stream", "a:b:c", "rtsps://admin:***@cam/stream"),
    ("redis://u:pa/ss@host:6379/0", "pa/ss", "redis://u:***@host:6379/0"),
    ("rtsp://u:p%40ss%3Aw%2Fd@cam/s", "p%40ss", "rtsp://u:***@cam/s"),
    ("rtsp://u:pässwörd☃@cam/s", "pässwörd☃", "rtsp://u:***@cam/s"),
    ("http://user:pw123@example.com/a.m3u8", "pw123", "http://user:***@example.com/a.m3u8"),
    ("https://user:pw123@example.com:8443/x?y=1", "pw123", "https://user:***@example.com:8443/x?y=1"),
    ("rtmp://live:k3y@ingest/app", "k3y", "rtmp://live:***@ingest/app"),
    ("srt://u:pw@host:9000", "pw", "srt://u:***@host:9000"),
    ("kafka://u:pw@broker:9092", "pw", "kafka://u:***@broker:9092"),
])
def test_redact_hides_the_whole_password_of_any_scheme(uri: str, secret: str, shown: str) -> None:
    out = redact(uri)
    assert out == shown
    assert secret not in out


@pytest.mark.parametrize("uri", ["redis://127.0.0.1:6379/0", "rediss://writer@redis.example:6380/0",
                                 "/data/a:b@c.mp4", "dir:out/", "http://host/path@v2"])
def test_redact_leaves_uris_without_a_password_alone(uri: str) -> None:
    assert redact(uri) == uri


def test_redact_text_and_the_log_filter_hide_passwords_inside_any_message() -> None:
    from pipeline.cli.common import RedactFilter
    from pipeline.redact import redact_text

    msg = "cannot open http://u:pw123@h/x and rtsp://a:cam@Secret9@c/s (refused)"
    assert redact_text(msg) == "cannot open http://u:***@h/x and rtsp://a:***@c/s (refused)"
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "source at %s failed", ("rtsp://a:s@3cr@c/s",), None)
    assert RedactFilter().filter(rec) and "s@3cr" not in rec.getMessage() and "***" in rec.getMessage()


# -- names are checked whole (a "$" anchor would accept a final newline) ---------------------------------------
@pytest.mark.parametrize("bad", ["cam\n", "cam\r\n", "\ncam"])
def test_names_with_a_newline_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid stream id"):
        parse_source(f"{bad}=/x/clip.mp4")
    with pytest.raises(ConfigError, match="invalid redis prefix"):
        load_config(None, {"redis": {"prefix": f"dpt{bad}"}})
    with pytest.raises(ConfigError, match="invalid consumer group"):
        load_config(None, {"jobs": {"group": f"g{bad}"}})
    with pytest.raises(ConfigError, match="invalid mask size"):
        load_config(None, {"mask_size": "64x64\n"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text('sources: [{id: "cam\\n", uri: a.mp4}]\n')
    with pytest.raises(ConfigError, match="invalid stream id"):
        load_config(cfg)


def test_worker_names_are_checked_whole() -> None:
    from pipeline.jobs.worker import WORKER_NAME_RE

    assert WORKER_NAME_RE.fullmatch("host-1@a") and not WORKER_NAME_RE.fullmatch("host-1\n")


# -- YAML aliases are refused before anything expands, and configs are capped at 1 MiB -------------------------
BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(7))
        + "sources: [{uri: *h}]\n")


def test_yaml_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    assert len(BOMB) < 400  # the 328-byte class of file from the issue
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    with pytest.raises(ConfigError, match=r"aliases \(\*a\) are not allowed") as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_a_single_harmless_alias_is_refused_too(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("x: &port 9108\nmetrics: {port: *port}\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(p)


def test_configs_over_one_mib_are_refused_unread(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("# " + "x" * (1 << 20) + "\nsources: []\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(p)


def test_a_video_as_the_config_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\xff\xfe\x00\x01" * 50)
    with pytest.raises(ConfigError, match="not a text YAML file") as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_a_5000_character_path_is_one_short_line(tmp_path: Path) -> None:
    long = "/tmp/" + "d" * 5000 + ".yaml"
    with pytest.raises(ConfigError) as e:
        load_config(long)
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e2:
        parse_source("/data/" + "v" * 5000 + ".mp4")
    assert len(str(e2.value)) < 300


# -- bounds for every value, flags tested for presence (0 and "" are given values) -----------------------------
@pytest.mark.parametrize("over, match", [
    ({"mask_size": "0x0"}, "invalid mask size"),
    ({"mask_size": "99999x99999"}, "invalid mask size"),
    ({"mask_size": "8193x10"}, "invalid mask size"),
    ({"sinks": ["redis://127.0.0.1:99999/0"]}, "port must be a number in 1..65535"),
    ({"sinks": ["redis://127.0.0.1:0/0"]}, "port must be a number in 1..65535"),
    ({"sinks": ["redis://127.0.0.1:6379/zero"]}, "database must be a number"),
    ({"metrics": {"port": 70000}}, "metrics.port"),
])
def test_values_out_of_bounds_are_config_errors(over: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, over)


# -- values checked by the config, before any model loads (later they would be exit 1 with a raw error) -------
@pytest.mark.parametrize("over, match", [
    ({"engine": {"max_wait_ms": float("inf")}}, "engine.max_wait_ms: Input should be a finite number"),
    ({"engine": {"max_wait_ms": 1e300}}, "engine.max_wait_ms: Input should be less than or equal to 60000"),
    ({"engine": {"threads": 2**40}}, "engine.threads: Input should be less than or equal to 1024"),
    ({"redis": {"maxlen": 10**20}}, "redis.maxlen: Input should be less than or equal to 1000000000"),
    ({"redis": {"retry_max_s": float("nan")}}, "redis.retry_max_s: Input should be a finite number"),
    ({"live": {"stall_timeout_s": float("inf")}}, "live.stall_timeout_s: Input should be a finite number"),
    ({"sinks": ["redis://"]}, "name the host"),
    ({"sinks": ["redis:///0"]}, "name the host"),
    ({"sinks": ["redis://:pw@[::1/0"]}, "is not a valid URL"),
])
def test_values_that_used_to_fail_after_the_models_loaded_are_config_errors(over: dict[str, object],
                                                                             match: str) -> None:
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")) as e:
        load_config(None, over)
    assert "pw" not in str(e.value)


def test_an_upper_case_redis_scheme_is_accepted_as_lower_case() -> None:
    assert load_config(None, {"sinks": ["REDIS://127.0.0.1:6379/0"]}).sinks == ["redis://127.0.0.1:6379/0"]


def test_a_key_given_twice_in_yaml_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "dup.yaml"
    p.write_text("engine:\n  batch_size: 4\n  batch_size: 2\n")
    with pytest.raises(ConfigError, match=r"the key 'batch_size' is given twice \(line 3\)"):
        load_config(p)
    p.write_text("sources: [{id: a, uri: a.mp4}, {id: b, uri: b.mp4}]\nengine: {batch_size: 2}\n")
    assert [s.id for s in load_config(p).sources] == ["a", "b"]  # the same key in sibling mappings is fine


def test_a_rule_class_must_be_a_name_or_an_id_not_a_boolean() -> None:
    zones = [{"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]]}]
    with pytest.raises(ConfigError, match="rules"):
        load_config(None, {"zones": zones, "rules": [{"name": "r", "zone": "door", "classes": [True]}]})


def test_mask_size_bounds_accept_the_edges() -> None:
    assert load_config(None, {"mask_size": "1x8192"}).mask_size == "1x8192"


def test_zero_and_empty_flags_are_validated_not_ignored() -> None:
    o = build_overrides(None, None, None, None, None, None, 0, None, None)
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, o)
    with pytest.raises(ConfigError, match="--tasks is empty"):
        build_overrides(None, None, None, "", None, None, None, None, None)
    with pytest.raises(ConfigError, match="--tasks is empty"):
        build_overrides(None, None, None, " , ", None, None, None, None, None)
    with pytest.raises(ConfigError, match="invalid mask size"):
        load_config(None, build_overrides(None, None, None, None, None, None, None, "", None))
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_config(None, build_overrides(None, None, None, None, None, None, None, None, -5))
    assert load_config(None, build_overrides(None, None, None, None, None, None, None, None, -1)).metrics.port is None


# -- file:// is percent-decoded; network schemes are live; anything else names the supported list --------------
def test_file_uris_are_percent_decoded() -> None:
    s = parse_source("file:///data/with%20space%23.mp4")
    assert s.path == "/data/with space#.mp4" and s.id == "with_space_" and not s.is_live


@pytest.mark.parametrize("uri", ["http://h/live.m3u8", "https://h/a.mp4", "rtmp://h/app/key", "rtmps://h/app"])
def test_network_schemes_are_live_sources(uri: str) -> None:
    s = SourceConfig(id="n", uri=uri)
    assert s.is_live and s.scheme == uri.split(":", 1)[0]
    with pytest.raises(ValueError, match="read as live streams"):
        SourceConfig(id="n", uri=uri, live=False)


@pytest.mark.parametrize("uri", ["ftp://u:pw@h/a.mp4", "srt://h:9000", "gopher://h/x"])
def test_unsupported_schemes_say_so_with_the_list(uri: str) -> None:
    with pytest.raises(ConfigError, match="unsupported scheme") as e:
        parse_source(uri)
    assert "rtsp://" in str(e.value) and "http://" in str(e.value) and "pw" not in str(e.value)


# -- redaction never raises, hides query secrets, and unparsable URLs are refused ------------------------------
UNPARSABLE = ["http://admin:TOPSECRET5@[::1:1/s", "rtsp://admin:TOPSECRET5@[::1/stream", "rtsp://u:TOPSECRET5@]x/s",
              "redis://:TOPSECRET5@[zz]:6379/0", "rtsp://u:TOPSECRET5@[notipv6]/s"]


@pytest.mark.parametrize("uri", UNPARSABLE)
def test_redaction_never_raises_and_hides_the_whole_userinfo_of_an_unparsable_url(uri: str) -> None:
    from pipeline.redact import redact_text, scrub

    out = redact(uri)
    assert "TOPSECRET5" not in out and out.startswith(uri.split("://")[0] + "://***@")
    msg = f"Invalid argument: '{uri}' (TOPSECRET5)"
    assert "TOPSECRET5" not in redact_text(f"Invalid argument: '{uri}'")
    assert "TOPSECRET5" not in scrub(msg, uri)


def test_redaction_is_total_on_any_string() -> None:
    import random

    from pipeline.redact import redact_text, scrub

    rng = random.Random(7)
    alphabet = "ab:/@[]?#&=%\\\"' \t\n\x00é☃" + "password=token=".upper()
    for _ in range(3000):
        s = rng.choice(["", "http://", "redis://", "rtsp://u:p@", "x://"]) + "".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert isinstance(redact(s), str) and isinstance(redact_text(s), str) and isinstance(scrub(s, s), str)


@pytest.mark.parametrize("uri, shown", [
    ("redis://127.0.0.1:6379/0?password=S3cr3t-pw", "redis://127.0.0.1:6379/0?password=***"),
    ("http://127.0.0.1:1/video.mjpg?user=admin&password=S3cr3t-pw",
     "http://127.0.0.1:1/video.mjpg?user=admin&password=***"),
    ("http://cam/v?token=S3cr3t-pw&fps=5", "http://cam/v?token=***&fps=5"),
    ("https://cam/live.m3u8?ACCESS_TOKEN=S3cr3t-pw#t", "https://cam/live.m3u8?ACCESS_TOKEN=***#t"),
    ("rtsp://u:S3cr3t-pw@cam/s?Pwd=S3cr3t-pw", "rtsp://u:***@cam/s?Pwd=***"),
    ("https://b.s3/x.mp4?X-Amz-Signature=S3cr3t-pw&X-Amz-Credential=S3cr3t-pw",
     "https://b.s3/x.mp4?X-Amz-Signature=***&X-Amz-Credential=***"),
    ("http://h/x?apiKey=S3cr3t-pw", "http://h/x?apiKey=***"),
])
def test_redact_hides_secret_query_parameters(uri: str, shown: str) -> None:
    from pipeline.redact import redact_text, scrub

    assert redact(uri) == shown
    assert "S3cr3t" not in redact_text(f"cannot open '{uri}': refused")
    assert "S3cr3t" not in scrub(f"open failed for {uri} (S3cr3t-pw)", uri)


@pytest.mark.parametrize("uri", ["http://cam/v?fps=5&size=640x360", "redis://h:6379/0?socket_timeout=5",
                                 "http://cam/v?keyframes=1&passthrough=1"])
def test_redact_keeps_harmless_query_parameters(uri: str) -> None:
    assert redact(uri) == uri


@pytest.mark.parametrize("arg", [f"cam={u}" for u in UNPARSABLE if not u.startswith("redis")]
                         + [u for u in UNPARSABLE if not u.startswith("redis")])
def test_an_unparsable_source_url_is_a_config_error_with_the_password_hidden(arg: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid URL") as e:
        parse_source(arg)
    assert "TOPSECRET5" not in str(e.value)


@pytest.mark.parametrize("uri, why", [("rtsp://admin:TOPSECRET5@cam:abc/s", "its port is not a number in 1..65535"),
                                      ("rtsp://cam:99999/s", "its port is not a number in 1..65535"),
                                      ("http://cam:0/v.mjpg", "its port is not a number in 1..65535"),
                                      ("rtsp:///s", "it names no host")])
def test_a_camera_uri_with_a_bad_port_or_no_host_is_refused_up_front(uri: str, why: str) -> None:
    for arg in (uri, f"cam={uri}"):
        with pytest.raises(ConfigError, match=re.escape(f"is not a valid URL ({why})")) as e:
            parse_source(arg)
        assert "TOPSECRET5" not in str(e.value)
    assert parse_source("file:///tmp/a.mp4").uri == "file:///tmp/a.mp4"


def test_run_and_submit_name_a_file_with_the_same_id_and_unicode_names_stay_distinct() -> None:
    from pipeline.jobs.submit import job_id_for

    names = ["/d/日本.mp4", "/d/カメラ.mp4", "/d/cam 1.mp4", "/d/_cam.mp4", "/d/" + "x" * 80 + ".mp4"]
    ids = [parse_source(n).id for n in names]
    assert ids == [job_id_for(n) for n in names]
    assert len(set(ids)) == len(ids)  # the two unicode names used to be "__" both (and "job" from submit)
    assert ids[2:4] == ["cam_1", "_cam"] and all(len(i) <= 64 for i in ids)
