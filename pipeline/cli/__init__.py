"""The command line: the only layer that knows typer/click, exit codes and signals. Entry point: ``main``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from pipeline.cli.main import main as _main

    _main(argv)
