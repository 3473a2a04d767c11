"""The sink contract (:class:`Sink`: every hook the runtime calls, each with a default), the progress store a sink
may offer (:class:`ProgressStore`: resume point, source identity, rule state), and ``error_reason``, the one-line
reason of a failed call."""

from __future__ import annotations

import collections
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.config import SourceConfig
from pipeline.frames import EndOfStream, Result
from pipeline.zones import ZonePlan


class SinkError(Exception):
    """A sink that cannot be used at all (e.g. Redis unreachable at start)."""


@dataclass(frozen=True)
class SavedProgress:
    """What a progress store holds for one stream: the resume point (the last published frame, -1 when none),
    the identity of the source it was published from (the fields :meth:`ProgressStore.record_source` wrote)
    and the zone rules' debounce state stored with that frame."""

    last_frame: int = -1
    identity: Mapping[str, str] = field(default_factory=dict)
    rule_state: str | None = None


class ProgressStore(ABC):
    """Where a run's progress per stream lives, so that a rerun resumes after the last published frame. The
    runtime plans each source through this interface and never knows how (or under which keys) it is kept."""

    @abstractmethod
    def saved_progress(self, sid: str) -> SavedProgress:
        """The stream's resume point, recorded source identity and rule state (one read)."""

    @abstractmethod
    def last_published(self, sid: str) -> int:
        """Index of the last frame of ``sid`` already published, or -1."""

    @abstractmethod
    def record_source(self, sid: str, fields: dict[str, str]) -> None:
        """Record which source the resume point of ``sid`` belongs to."""

    @abstractmethod
    def reset_progress(self, sid: str, fields: tuple[str, ...] = ()) -> None:
        """Start ``sid`` afresh: no resume point, no rule state (rules a previous run left active end); the
        recorded identity ``fields`` are removed too."""


class Sink(ABC):
    """Where results go. A sink implements :meth:`write`; every other hook has a default that does nothing, and
    the runtime calls each one directly:

    - :meth:`open` before the models load (a sink that cannot work fails early), :meth:`close` at the end;
    - :meth:`describe` once the engines are loaded (class labels, model ids, the resolved zones);
    - :meth:`begin_stream` when a stream joins the run, :meth:`end_stream` when its end marker arrives;
    - :meth:`request_stop` (the run drains: stop waiting for a sink that is away after a bounded retry) and
      :meth:`abandon` (quit at once);
    - :meth:`reachable` for the readiness probe; :meth:`progress_store` when the sink keeps resume points.

    Attributes the runtime reads: ``name`` (for logs), ``published`` / ``published_by`` (frames written, in
    total and per stream id: the sink's own bookkeeping), ``wants_images`` (the pipeline keeps each decoded
    frame for it), ``single_file`` (writes everything to one file, so it cannot serve many jobs)."""

    name: str = "sink"
    wants_images: bool = False
    single_file: bool = False

    def __init__(self) -> None:
        self.published = 0
        self.published_by: collections.Counter[str] = collections.Counter()

    def open(self) -> None:
        """Connect or create what the sink needs; raise :class:`SinkError` when it cannot work at all."""
        return None

    @abstractmethod
    def write(self, results: list[Result]) -> None:
        """Write ``results``, counting them in ``published`` / ``published_by``."""
        return None

    def describe(self, labels: dict[int, str], models: dict[str, str], zones: ZonePlan | None = None) -> None:
        """The class labels, model ids and resolved zones, once the engines are loaded."""
        return None

    def begin_stream(self, source: SourceConfig) -> None:
        """A stream joins the run (at its start, or later with ``Pipeline.add_source``)."""
        return None

    def end_stream(self, eos: EndOfStream) -> None:
        """A stream's end marker: every result of it was written before."""
        return None

    def request_stop(self) -> None:
        """The run is stopping: a write waiting for the sink gives up after a bounded retry."""
        return None

    def abandon(self) -> None:
        """The run is quitting at once: a write waiting for the sink gives up now."""
        return None

    def reachable(self) -> bool:
        """For ``/readyz``: whether the sink can write now."""
        return True

    def progress_store(self) -> ProgressStore | None:
        """Where this sink keeps the resume points, if it does."""
        return None

    def close(self) -> None:
        """Flush and release; called once at the end."""
        return None


