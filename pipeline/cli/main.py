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
        if rc == EXIT_INTERRUPTED and interrupted.is_set():
            # typer turns a Ctrl-C (KeyboardInterrupt) into a silent exit 130: say it, as for any other stop
            err("interrupted")
        sys.exit(rc if isinstance(rc, int) else 0)  # click returns typer.Exit's code here instead of raising
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        kind = click_kind(e)
        if kind == "Abort":
            err("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        if kind == "ClickException":
            e.show()  # type: ignore[attr-defined]  # click's own message: usage line, hint, "Error: ..."
            code = getattr(e, "exit_code", EXIT_USAGE)
            sys.exit(code if isinstance(code, int) else EXIT_USAGE)
        if debug:
            raise
        sys.exit(report_error(e))


def _note_interrupts() -> threading.Event:
    """Keep Ctrl-C's KeyboardInterrupt (outside a command's own signal handling), and remember that it came."""
    came = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        came.set()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    return came


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
