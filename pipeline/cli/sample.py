"""``dptstream sample``: the generated sample clip and tiny random-weight checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import DebugOpt, setup_logging


def sample(
    out: Annotated[Path, typer.Argument(help="Directory for the sample clip and checkpoints.")] = Path("sample"),
    frames: Annotated[int, typer.Option(help="Frames in the clip.")] = 48,
    width: int = 1280,
    height: int = 720,
    debug: DebugOpt = False,
) -> None:
    """Generate a real-content 1280x720 H.264 clip and small random-weight DPT checkpoints (no model hub)."""
    setup_logging(debug)
    from pipeline.sample import make_sample

    paths = make_sample(out, frames=frames, width=width, height=height)
    for k, v in paths.items():
        print(f"{k}: {v}")


def register(app: typer.Typer) -> None:
    app.command()(sample)
