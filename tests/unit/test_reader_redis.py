"""pipeline/cli/common.py reader_redis: the one check of --redis and --redis-prefix that show and alerts share."""

from __future__ import annotations

import pytest

from pipeline.cli.common import reader_redis
from pipeline.cli.main import main
from pipeline.config import ConfigError


def test_the_flag_wins_then_the_environment_then_the_local_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert reader_redis(None, "dpt") == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.2:6380/1")
    assert reader_redis(None, "dpt") == "redis://10.0.0.2:6380/1"
    assert reader_redis("rediss://h:6390/2", "dpt") == "rediss://h:6390/2"


@pytest.mark.parametrize("url, prefix, says", [
    ("redis://h:6379/0", "a\nb", "invalid --redis-prefix"),
    ("http://u:pw123@h/x", "dpt", "is not a Redis URL"),
    ("redis://h:99999/0", "dpt", "port"),
])
def test_bad_urls_and_prefixes_are_usage_errors_without_the_password(url: str, prefix: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as e:
        reader_redis(url, prefix)
    assert "pw123" not in str(e.value)


@pytest.mark.parametrize("command", ["show", "alerts"])
def test_show_and_alerts_refuse_a_bad_prefix_before_reaching_redis(command: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--redis", "redis://127.0.0.1:1/0", "--redis-prefix", "a\nb"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dptstream: error: invalid --redis-prefix"), lines
