"""The engine cache directory a user points at (engine.cache_dir, DPTSTREAM_CACHE_DIR, bench --cache-dir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engines import EngineUsageError
from engines.cache import usable_cache_root
from pipeline.cli.common import report_error


@pytest.mark.parametrize("given", ["", "   "])
def test_an_empty_cache_dir_is_a_usage_error_not_the_working_directory(
        given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EngineUsageError, match="engine cache directory is empty") as e:
        usable_cache_root(given)
    assert report_error(e.value) == 2 and "DPTSTREAM_CACHE_DIR" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # nothing written where the user happens to stand


def test_a_missing_cache_dir_is_created_and_a_file_is_refused(tmp_path: Path) -> None:
    assert usable_cache_root(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(EngineUsageError, match="is a file, or under one"):
        usable_cache_root(tmp_path / "f" / "sub")
