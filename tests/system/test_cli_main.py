"""The entry point as a user meets it (subprocess): usage errors are click's own message and exit 2; Ctrl-C
outside a run is one line and exit 130 (the unit tests cover the exception mapping in-process)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.servers import cli, cli_process, one_error_line

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args, message", [
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["show", "-n", "-5"], "Invalid value for '--count' / '-n'"),
])
def test_usage_errors_exit_2_with_clicks_message(args: list[str], message: str) -> None:
    p = cli(*args)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "unexpected" not in p.stderr and "Traceback" not in p.stderr


def test_ctrl_c_outside_a_run_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """typer turns a KeyboardInterrupt into a silent exit 130; the user gets the same line as elsewhere."""
    with cli_process("sample", str(tmp_path / "s"), "--frames", "3000", stdout=subprocess.PIPE) as proc:
        time.sleep(4)  # well inside the clip's generation (3000 frames take minutes)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert one_error_line(err) == "dptstream: error: interrupted", err
    assert "Traceback" not in err
