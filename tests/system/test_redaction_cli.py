"""Passwords holding '?', '#', '/' or several '@' never reach a terminal: config errors, a camera's logs and final
error, and the Redis commands given REDIS_URL or --redis (subprocess, as a user runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.servers import cli, model_args, one_error_line

pytestmark = pytest.mark.slow

REDIS_URLS = ["redis://:pa?ss#wordSECRET@127.0.0.1:6379/0", "redis://:p@ss:w/rdSECRET@X9@127.0.0.1:6379/0"]


@pytest.mark.parametrize("uri", ["rtsp://u:ab?cdSECRET@127.0.0.1:1/s", "rtsp://u:ab/cd#SECRET@127.0.0.1:1/s"])
def test_a_config_error_never_shows_a_password_holding_query_characters(assets: dict[str, Path], tmp_path: Path,
                                                                        uri: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'sources: [{{id: cam, uri: "{uri}"}}]\n')
    p = cli("run", str(cfg), *model_args(assets), "--metrics-port", "-1", timeout=120)
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert "'rtsp://u:***@127.0.0.1:1/s'" in line and "percent-encode" in line
    assert "SECRET" not in p.stdout + p.stderr


def test_a_camera_never_logs_a_password_holding_a_question_mark(assets: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    # a URL parser reads host "u", port 12: the camera cannot be reached, is retried, logged and given up
    cfg.write_text('sources: [{id: cam, uri: "rtsp://u:12?SECRET@127.0.0.1/s", open_timeout_s: 2}]\n'
                   f"sinks: ['dir:{tmp_path / 'out'}']\nlive: {{max_attempts: 2, reconnect_initial_s: 0.1}}\n")
    p = cli("run", str(cfg), *model_args(assets), "--metrics-port", "-1", timeout=120)
    assert p.returncode == 1, p.stderr
    assert "ERROR" in p.stderr and "gave up after 2 attempts" in one_error_line(p.stderr)
    assert "rtsp://u:***@127.0.0.1/s" in one_error_line(p.stderr)
    assert "SECRET" not in p.stdout + p.stderr and "12?" not in p.stderr


@pytest.mark.parametrize("url", REDIS_URLS)
@pytest.mark.parametrize("command", [["show"], ["status"], ["view", "--port", "0"]])
def test_redis_commands_never_show_a_password_holding_query_characters(url: str, command: list[str]) -> None:
    for args, env in ((command, {"REDIS_URL": url}), ([*command, "--redis", url], {})):
        p = cli(*args, env=env, timeout=60)
        assert p.returncode == 2, p.stderr
        line = one_error_line(p.stderr)
        assert "redis://:***@" in line and "percent-encode" in line
        assert "SECRET" not in p.stdout + p.stderr and "X9" not in p.stderr
