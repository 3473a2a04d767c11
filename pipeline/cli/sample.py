"""``dptstream sample``: the generated sample clip and tiny random-weight checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import DebugOpt, setup_logging


def sample(
    out: Annotated[Path, typer.Argument(help="Directory for the sample clip and checkpoints.")] = Path("sample"),
    frames: Annotated[int, typer.Option(help="Frames in the clip.", min=1, max=100_000)] = 48,
    width: Annotated[int, typer.Option(help="Clip width (even, 64..7680).", min=64, max=7680)] = 1280,
    height: Annotated[int, typer.Option(help="Clip height (even, 64..4320).", min=64, max=4320)] = 720,
    debug: DebugOpt = False,
) -> None:
    """Generate a real-content 1280x720 H.264 clip and small random-weight DPT checkpoints (no model hub)."""
    setup_logging(debug)
    if width % 2 or height % 2:  # H.264 in 4:2:0 needs even sides
        raise typer.BadParameter(f"{width}x{height}: use even sides (H.264 4:2:0)", param_hint="'--width' / '--height'")
    from pipeline.sample import make_sample

    paths = make_sample(out, frames=frames, width=width, height=height)
    for k, v in paths.items():
        print(f"{k}: {v}")


def register(app: typer.Typer) -> None:
    app.command()(sample)
