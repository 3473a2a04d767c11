"""The run plan: everything decided about a source before its first frame, decided once and carried along.

:func:`plan_source` looks at one source once (a file: one PyAV open up to its first frame and one hash of its first
MiB, see :func:`~pipeline.sources.inspect_file`), checks it against the progress store's resume point and decides
its start frame and saved rule state. :func:`plan_run` plans every configured source and resolves the zones once.
The pipeline, its sinks, the progress bars, shape warm-up and job workers read the frozen plans; nothing opens a
file or resolves zones again. Plans are per source, so a source can be planned later and joined to a running
:class:`~pipeline.runtime.pipeline.Pipeline` (``add_source``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engines import Engine
from pipeline.config import ConfigError, PipelineConfig, SourceConfig
from pipeline.redact import shorten
from pipeline.sinks import ProgressStore, SavedProgress, Sink
from pipeline.sources import FileFacts, SourceIdentity, inspect_file
from pipeline.zones import RuleError, ZonePlan, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourcePlan:
    """One source, decided: its config, what probing it told (``facts``: frames, size in display orientation,
    fps, duration, orientation, identity; files only), the first frame to publish
    (``start_frame``: frames before it were published by an earlier run), the zone rules' debounce state saved
    with the last published frame (``rule_state``), and the network input shape per task for its size."""

    source: SourceConfig
    facts: FileFacts | None = None
    start_frame: int = 0
    rule_state: str | None = None
    network_shapes: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def stream_id(self) -> str:
        return self.source.id

    @property
    def live(self) -> bool:
        return self.source.is_live

    @property
    def size(self) -> tuple[int, int] | None:
        """``(height, width)`` of its frames in display orientation, when known before decoding (files)."""
        if self.facts is None or not (self.facts.width and self.facts.height):
            return None
        return self.facts.height, self.facts.width

    @property
    def total_frames(self) -> int | None:
        """Frames the file declares (for progress bars and job status); None for live, looped or undeclared."""
        if self.facts is None or self.source.loop or not self.facts.frames:
            return None
        return self.facts.frames


@dataclass(frozen=True)
class RunPlan:
    """The run-level decisions: the zones and rules resolved against the loaded checkpoints (empty before the
    engines load), and each configured source's plan."""

    zones: ZonePlan = field(default_factory=ZonePlan)
    sources: tuple[SourcePlan, ...] = ()


def find_progress_store(sinks: Sequence[Sink]) -> ProgressStore | None:
    """The first sink's progress store, if any sink keeps resume points."""
    return next((st for st in (s.progress_store() for s in sinks) if st is not None), None)


def resolve_zones(cfg: PipelineConfig, engines: Mapping[str, Engine]) -> ZonePlan:
    """The config's zones and rules resolved against the loaded checkpoints (class names -> ids; a distance
    rule needs a metric depth checkpoint). A :class:`ConfigError` before any frame is read."""
    if not cfg.zones and not cfg.rules:
        return ZonePlan()
    seg = engines.get("segmentation")
    depth = engines.get("depth")
    labels = dict(seg.spec.labels) if seg is not None else {}
    metric = depth.spec.metric if depth is not None else None
    try:
        return resolve(cfg.zones, cfg.rules, labels, metric, depth.spec.model_id if depth is not None else "")
    except RuleError as e:
        raise ConfigError(str(e)) from e


def warn_unknown_zone_streams(cfg: PipelineConfig) -> None:
    """One warning per zone whose ``streams`` names a stream no source of this run has (a typo, or a zone list
    shared by several runs): legal, but it does nothing for that name. Not for a worker (its sources are its
    jobs, unknown at start)."""
    ids = {s.id for s in cfg.sources}
    for z in cfg.zones if ids else ():
        unknown = [sid for sid in z.streams or () if sid not in ids]
        if unknown:
            log.warning("zone %r names stream(s) %s that no source of this run has (sources: %s): it applies to "
                        "%s", z.name, ", ".join(repr(u) for u in unknown), ", ".join(sorted(ids)),
                        "no stream" if len(unknown) == len(z.streams or ()) else "the others only")


def plan_source(cfg: PipelineConfig, source_cfg: SourceConfig, engines: Mapping[str, Engine] | None,
                store: ProgressStore | None, record: bool, facts: FileFacts | None = None) -> SourcePlan:
    """Decide everything about one source before its first frame.

    A file is probed once (``facts`` reuses an earlier probe: the check before the models load). With a progress
    store, a file resumes after its last published frame only if that was recorded for the same file (size, video
    duration, hash of the first MiB); a different file under the same stream id is refused with a
    :class:`ConfigError`, never silently skipped. With ``record`` the file's identity is written next to the resume
    point (live sources and ``cfg.resume`` off clear it first); without, nothing is written (a check before the
    models load). ``engines`` (None before they load) give the network shape per task for the file's size. A file
    that cannot be read is a :class:`~pipeline.sources.SourceError`."""
    s = source_cfg
    if s.scheme == "file" and not s.is_live and facts is None:
        facts = inspect_file(s)
    shapes: dict[str, tuple[int, int]] = {}
    if facts is not None and engines and facts.width and facts.height:
        shapes = {t: e.spec.network_shape(facts.height, facts.width) for t, e in engines.items()}
    if store is None:
        return SourcePlan(s, facts, network_shapes=shapes)
    if facts is None:  # live: a camera starts afresh every run
        if record:
            store.reset_progress(s.id, SourceIdentity.FIELDS)
        return SourcePlan(s, None, network_shapes=shapes)
    ident = facts.identity
    if not cfg.resume:
        if record:
            store.reset_progress(s.id, SourceIdentity.FIELDS)
            store.record_source(s.id, ident.fields())
        return SourcePlan(s, facts, network_shapes=shapes)
    saved = store.saved_progress(s.id)
    start = _resume_from(s, ident, saved, record)
    if record:
        store.record_source(s.id, ident.fields())
    return SourcePlan(s, facts, start, saved.rule_state if start else None, shapes)


def _resume_from(s: SourceConfig, ident: SourceIdentity, saved: SavedProgress, record: bool) -> int:
    last = saved.last_frame
    before = SourceIdentity.from_fields(dict(saved.identity))
    if last >= 0 and before is not None and not before.same_file(ident):
        raise ConfigError(
            f"stream {s.id!r} was published from {before.describe()}, but {ident.describe()} is a different "
            f"file: give it its own id (--source NEWID={shorten(s.path)}) or publish from frame 0 with "
            "--no-resume")
    if record and last >= 0:
        if before is None:
            log.warning("%s: the resume point has no source identity (written by an older version); resuming "
                        "after frame %d and recording %s as its source", s.id, last, ident.describe())
        log.info("%s: resuming after frame %d (already published)", s.id, last)
    return last + 1


def plan_run(cfg: PipelineConfig, engines: Mapping[str, Engine] | None, store: ProgressStore | None, record: bool,
             earlier: RunPlan | None = None, zones: ZonePlan | None = None) -> RunPlan:
    """Plan every configured source (reusing the probes of ``earlier``, the check made before the models loaded)
    with the resolved ``zones`` (None: resolved here when ``engines`` are given)."""
    known = {p.stream_id: p.facts for p in earlier.sources} if earlier is not None else {}
    if zones is None:
        zones = resolve_zones(cfg, engines) if engines is not None else ZonePlan()
    plans = tuple(plan_source(cfg, s, engines, store, record, known.get(s.id)) for s in cfg.sources)
    return RunPlan(zones, plans)
