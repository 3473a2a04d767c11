"""The end-of-run report of ``dptstream run`` (cli/run.finish): what it says about each stream."""

from __future__ import annotations

import logging

import pytest

from pipeline.cli.run import finish
from pipeline.configfile import load_config
from pipeline.runtime.pipeline import RunReport, StreamReport


def test_skipped_packets_are_reported_and_an_intact_stream_says_nothing_of_them(
        caplog: pytest.LogCaptureFixture) -> None:
    report = RunReport(streams={"cam": StreamReport("cam", decoded=287, bad_packets=1, done=True),
                                "yard": StreamReport("yard", decoded=48, done=True)}, published=335, seconds=1.0)
    with caplog.at_level(logging.INFO):
        assert finish(report, load_config(None, {})) == 0  # every decodable frame was published
    said = [r.getMessage() for r in caplog.records if "packet" in r.getMessage()]
    assert said == ["cam: 1 packet(s) could not be decoded and were skipped (each may have held a frame)"]
    assert [r.levelname for r in caplog.records if "packet" in r.getMessage()] == ["WARNING"]
