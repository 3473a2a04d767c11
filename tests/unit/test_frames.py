"""Stream id validation."""

from __future__ import annotations

import pytest

from pipeline.frames import valid_stream_id


@pytest.mark.parametrize("sid, ok", [("cam-1", True), ("a.b_c", True), ("x" * 64, True), ("x" * 65, False),
                                     ("", False), ("a b", False), ("a:b", False), ("../x", False), ("..", False)])
def test_stream_id_validation(sid: str, ok: bool) -> None:
    assert valid_stream_id(sid) is ok
