"""The sink interface and its error; ``error_reason`` gives the one-line reason of a failed call."""

from __future__ import annotations

from typing import Protocol

from pipeline.frames import EndOfStream, Result


class SinkError(Exception):
    """A sink that cannot be used at all (e.g. Redis unreachable at start)."""


class Sink(Protocol):
    name: str

    def open(self) -> None: ...

    def write(self, results: list[Result]) -> None: ...

    def end_stream(self, eos: EndOfStream) -> None: ...

    def close(self) -> None: ...


def error_reason(e: Exception) -> str:
    s = str(e).strip() or type(e).__name__
    return s.splitlines()[0]
