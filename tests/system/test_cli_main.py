"""The entry point as a user meets it (subprocess): usage errors are click's own message and exit 2; Ctrl-C
or SIGTERM outside a run is one line and exit 130 (the unit tests cover the exception mapping in-process)."""

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


@pytest.mark.parametrize("sig, line", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "interrupted by SIGTERM")])
def test_a_signal_outside_a_run_is_one_line_and_exit_130(sig: signal.Signals, line: str, tmp_path: Path) -> None:
    """Outside a run's own signal handling (model load, sample, bench): typer turned Ctrl-C into a silent exit
    130, and SIGTERM ended the process with 143 and no word. Both say so in one line and exit 130, the code a
    run's second signal exits with."""
    with cli_process("sample", str(tmp_path / "s"), "--frames", "3000", stdout=subprocess.PIPE) as proc:
        time.sleep(4)  # well inside the clip's generation (3000 frames take minutes)
        assert proc.poll() is None
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert one_error_line(err) == f"dptstream: error: {line}", err
    assert "Traceback" not in err
