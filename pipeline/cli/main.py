"""``dptstream`` command line: the explicit list of command modules, and the entry point that maps errors to exit
codes. Config is read once, in the command modules (YAML + flags + environment), and passed down."""

from __future__ import annotations

import signal
import sys
import threading
from types import ModuleType
from typing import Any

import typer

from pipeline.cli import alerts, bench, engine, fleet, jobs, run, sample, show, snapshot, view
from pipeline.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, err, report_error

# Every command group, in the order `--help` lists them. Each module has `register(app)`.
COMMANDS: tuple[ModuleType, ...] = (run, show, alerts, sample, engine, bench, jobs, snapshot, view, fleet)


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="Stream video through DPT segmentation + depth and publish results to Redis.")
    for module in COMMANDS:
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    app = build_app()
    interrupted = _note_interrupts()
    try:
        rc = app(args=argv, prog_name="dptstream", standalone_mode=False)
        if rc == EXIT_INTERRUPTED and interrupted.came:
            # typer turns a Ctrl-C (KeyboardInterrupt) into a silent exit 130: say it, as for any other stop
            err(interrupted.line())
        sys.exit(rc if isinstance(rc, int) else 0)  # click returns typer.Exit's code here instead of raising
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err(interrupted.line())
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        kind = click_kind(e)
        if kind == "Abort":
            err(interrupted.line())
            sys.exit(EXIT_INTERRUPTED)
        if kind == "ClickException":
            e.show()  # type: ignore[attr-defined]  # click's own message: usage line, hint, "Error: ..."
            code = getattr(e, "exit_code", EXIT_USAGE)
            sys.exit(code if isinstance(code, int) else EXIT_USAGE)
        if debug:
            raise
        sys.exit(report_error(e))


class _Interrupts:
    """SIGINT and SIGTERM outside a command's own signal handling (model load, sample, bench): raised as
    KeyboardInterrupt, so the command stops where it is and the user gets one line and exit 130, the code a
    run's second signal exits with. Remembers which signal came."""

    def __init__(self) -> None:
        self.signal: str | None = None

    @property
    def came(self) -> bool:
        return self.signal is not None

    def line(self) -> str:
        return "interrupted" if self.signal in (None, "SIGINT") else f"interrupted by {self.signal}"

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        raise KeyboardInterrupt


def _note_interrupts() -> _Interrupts:
    """Install :class:`_Interrupts` for SIGINT and SIGTERM (main thread only: signals are delivered there)."""
    handler = _Interrupts()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)
    return handler


def click_kind(e: BaseException) -> str | None:
    """``"ClickException"`` (usage errors included) or ``"Abort"`` for an exception of click *or* of the click
    that typer bundles (``typer._click``: a separate class hierarchy, so ``isinstance`` against one misses
    the other); None for anything else. Judged by the class names along the MRO."""
    names = {c.__name__ for c in type(e).__mro__}
    for kind in ("Abort", "ClickException"):
        if kind in names and any(c.__module__.split(".")[0] in ("click", "typer") for c in type(e).__mro__
                                 if c.__name__ == kind):
            return kind
    return None


if __name__ == "__main__":
    main()
