"""Progress on a terminal for file jobs: frames published / total, fps, ETA per stream."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pipeline.metrics import Metrics

log = logging.getLogger(__name__)


def counter_value(metrics: Metrics, stream: str, stage: str) -> int:
    return int(metrics.frames.labels(stream=stream, stage=stage)._value.get())


class ProgressView:
    """rich progress bars when ``enabled`` (a terminal), else a quiet log line every ``log_every`` seconds."""

    def __init__(self, metrics: Metrics, totals: dict[str, int | None], report: Any, enabled: bool,
                 log_every: float = 30.0) -> None:
        self.metrics = metrics
        self.totals = totals
        self.report = report
        self.enabled = enabled
        self.log_every = log_every
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_log = time.monotonic()

    def _skipped(self, sid: str) -> int:
        rep = self.report.streams.get(sid)
        return rep.skipped if rep is not None else 0

    def __enter__(self) -> ProgressView:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[fps]:.1f} fps"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False, refresh_per_second=4,
            )
            self._progress.start()
            for sid, total in self.totals.items():
                self._tasks[sid] = self._progress.add_task(sid, total=total, fps=0.0,
                                                           completed=self._skipped(sid))
        return self

    def update(self) -> None:
        now = time.monotonic()
        if self._progress is not None:
            for sid, tid in self._tasks.items():
                done = counter_value(self.metrics, sid, "published") + self._skipped(sid)
                task = self._progress.tasks[tid]
                elapsed = task.elapsed or 0.0
                fps = (done - self._skipped(sid)) / elapsed if elapsed > 0 else 0.0
                self._progress.update(tid, completed=done, fps=fps)
        elif now - self._last_log >= self.log_every:
            self._last_log = now
            parts = []
            for sid, total in self.totals.items():
                done = counter_value(self.metrics, sid, "published") + self._skipped(sid)
                parts.append(f"{sid} {done}/{total}" if total else f"{sid} {done}")
            log.info("progress: %s", ", ".join(parts))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self.update()
            self._progress.stop()
            sys.stderr.flush()
