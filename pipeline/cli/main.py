"""``dptstream`` command line: the explicit list of command modules, and the entry point that maps errors to exit
codes. Config is read once, in the command modules (YAML + flags + environment), and passed down."""

from __future__ import annotations

import sys
from types import ModuleType

import typer

from pipeline.cli import alerts, bench, engine, jobs, run, sample, show, snapshot, view
from pipeline.cli.common import EXIT_INTERRUPTED, err, report_error

# Every command group, in the order `--help` lists them. Each module has `register(app)`.
COMMANDS: tuple[ModuleType, ...] = (run, show, alerts, sample, engine, bench, jobs, snapshot, view)


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
    try:
        rc = app(args=argv, prog_name="dptstream", standalone_mode=False)
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
        import click

        if isinstance(e, click.exceptions.Abort):
            err("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        sys.exit(report_error(e))


if __name__ == "__main__":
    main()
