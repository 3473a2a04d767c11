"""One typed, validated config: YAML -> defaults merged -> :class:`PipelineConfig`. Unknown keys are errors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.frames import valid_stream_id
from pipeline.zones import polygon_problem, valid_name

Task = Literal["segmentation", "depth"]
DEFAULT_MODELS: dict[str, str] = {"segmentation": "Intel/dpt-large-ade", "depth": "Intel/dpt-large"}
SINK_SCHEMES = ("redis", "rediss", "dir", "video")
SOURCE_SCHEMES = ("file", "rtsp", "rtsps")


class ConfigError(Exception):
    """A bad config or flag; reported as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    id: str
    uri: str
    live: bool | None = None  # None: rtsp(s) is live, files are not
    loop: bool = False  # replay a file forever (a file posing as a camera)
    realtime: bool = False  # pace a file at its frame rate
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not valid_stream_id(v):
            raise ValueError(f"invalid stream id {v!r}: use 1-64 of A-Z a-z 0-9 . _ -")
        return v

    @property
    def scheme(self) -> str:
        s = urlsplit(self.uri).scheme.lower()
        return s if s in SOURCE_SCHEMES else "file"

    @property
    def is_live(self) -> bool:
        return self.live if self.live is not None else self.scheme in ("rtsp", "rtsps")

    @property
    def path(self) -> str:
        if self.uri.startswith("file://"):
            return urlsplit(self.uri).path
        return self.uri


class EngineSection(_Strict):
    backend: Literal["auto", "tensorrt", "torch"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0)
    cuda_graphs: bool = True
    compile: bool = False
    cache_dir: str = "~/.cache/dptstream"
    threads: int | None = Field(None, ge=1)


class QueueSection(_Strict):
    decoded: int = Field(8, ge=1)
    prepared: int = Field(16, ge=1)
    inferred: int = Field(16, ge=1)
    results: int = Field(64, ge=1)
    live_policy: Literal["drop_oldest", "block"] = "drop_oldest"


class RedisSection(_Strict):
    prefix: str = "dpt"
    maxlen: int = Field(10000, ge=1)
    events: bool = True
    ca_file: str | None = None
    retry_max_s: float = Field(5.0, gt=0)
    buffer: int = Field(1000, ge=1)  # live results held while Redis is away
    cert_file: str | None = None  # client certificate (PEM) for a TLS server that asks for one
    key_file: str | None = None  # its private key (PEM)
    thumbnail: int = Field(0, ge=0, le=1024)  # long side (px) of a JPEG of the frame in each entry; 0 = off
    alerts_maxlen: int = Field(10000, ge=1)  # {prefix}:alerts is trimmed to about this many entries
    # a 16-bit PNG depth map at the mask size in each entry (field depth_map; the dir: sink writes one per frame):
    # metric depth in millimetres (clipped at 65.535 m), relative depth scaled from depth.min..max to 0..65535
    depth_map: bool = False

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9._:-]{1,64}$", v):
            raise ValueError(f"invalid redis prefix {v!r}")
        return v


class LiveSection(_Strict):
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    stall_timeout_s: float = Field(10.0, gt=0)
    frozen_timeout_s: float = Field(0.0, ge=0)  # 0 disables the frozen-picture detector
    fail_if_down_at_start: bool = False
    latency_budget_ms: float = Field(0.0, ge=0)  # 0 disables degradation
    degrade_order: list[Literal["rate", "skip_depth", "alternate_segmentation"]] = Field(
        default_factory=lambda: ["rate", "skip_depth", "alternate_segmentation"]  # type: ignore[arg-type]
    )
    reconnect_jitter: float = Field(0.5, ge=0, le=1)  # each delay is scaled by U(1 - jitter, 1)
    max_attempts: int = Field(0, ge=0)  # consecutive failed connects before a camera is given up; 0 = never
    frozen_tolerance: float = Field(2.0, gt=0)  # grey levels a thumbnail block may move and still be "frozen"
    degrade_rate_divisor: int = Field(2, ge=2)  # the "rate" level keeps one frame in N
    degrade_recover_s: float = Field(5.0, gt=0)  # latency under half the budget this long undoes one level
    rtsps_verify: bool = False  # rtsps://: verify the camera's certificate (most cameras' are self-signed)
    rtsps_ca_file: str | None = None  # rtsps://: verify against this CA (implies rtsps_verify)


class JobsSection(_Strict):
    """Batch jobs (``submit`` / ``worker`` / ``status``): a Redis stream read by a consumer group."""

    group: str = "dptstream-workers"
    claim_idle_s: float = Field(60.0, gt=0)  # a job whose worker is silent this long goes to another worker
    max_attempts: int = Field(3, ge=1)  # deliveries of one job before it is marked failed
    poll_s: float = Field(2.0, gt=0)  # how long an idle worker blocks waiting for a job

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9._:-]{1,64}$", v):
            raise ValueError(f"invalid consumer group name {v!r}")
        return v


class MetricsSection(_Strict):
    port: int | None = Field(9108, ge=0, le=65535)
    host: str = "0.0.0.0"


def _name(v: str, what: str) -> str:
    if not valid_name(v):
        raise ValueError(f"invalid {what} name {v!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return v


class ZoneConfig(_Strict):
    """A region of the frame: a polygon of ``[x, y]`` fractions (0..1), for some streams or all."""

    name: str
    streams: list[str] | None = None  # None: every stream
    polygon: list[list[float]]

    @field_validator("name")
    @classmethod
    def _zname(cls, v: str) -> str:
        return _name(v, "zone")

    @field_validator("streams")
    @classmethod
    def _streams(cls, v: list[str] | None) -> list[str] | None:
        for sid in v or []:
            if not valid_stream_id(sid):
                raise ValueError(f"invalid stream id {sid!r}: use 1-64 of A-Z a-z 0-9 . _ -")
        return v

    @model_validator(mode="after")
    def _polygon(self) -> ZoneConfig:
        problem = polygon_problem(self.polygon)
        if problem:
            raise ValueError(f"zone {self.name!r}: polygon {problem}")
        return self


class RuleConfig(_Strict):
    """A debounced condition on a zone: class coverage and/or (metric depth) distance."""

    name: str
    zone: str
    classes: list[str | int] = Field(default_factory=list)  # label names of the segmentation checkpoint, or ids
    min_coverage: float = Field(0.0, ge=0, le=1)  # fraction of the zone's pixels these classes cover
    max_distance_m: float | None = Field(None, gt=0)  # metric depth checkpoints only
    for_frames: int = Field(1, ge=1)  # consecutive frames the condition holds before the rule starts
    clear_frames: int = Field(1, ge=1)  # consecutive frames it fails before the rule ends

    @field_validator("name")
    @classmethod
    def _rname(cls, v: str) -> str:
        return _name(v, "rule")

    @model_validator(mode="after")
    def _something(self) -> RuleConfig:
        if not self.classes and self.max_distance_m is None:
            raise ValueError(f"rule {self.name!r} tests nothing: give classes (with min_coverage) "
                             "and/or max_distance_m")
        return self


class PipelineConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=list)
    sinks: list[str] = Field(default_factory=lambda: ["redis://127.0.0.1:6379/0"])
    tasks: list[Task] = Field(default_factory=lambda: ["segmentation", "depth"])  # type: ignore[arg-type]
    models: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MODELS))
    mask_size: str = "default"
    engine: EngineSection = Field(default_factory=EngineSection)
    queues: QueueSection = Field(default_factory=QueueSection)
    redis: RedisSection = Field(default_factory=RedisSection)
    live: LiveSection = Field(default_factory=LiveSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    jobs: JobsSection = Field(default_factory=JobsSection)
    depth_grid: int = Field(4, ge=1, le=32)
    progress: bool | None = None  # None: only on a terminal
    resume: bool = True  # file jobs skip frames already published
    zones: list[ZoneConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one task is needed")
        return list(dict.fromkeys(v))

    @field_validator("models")
    @classmethod
    def _models(cls, v: dict[str, str]) -> dict[str, str]:
        for task in v:
            if task not in DEFAULT_MODELS:
                raise ValueError(f"unknown task {task!r} in models: use segmentation or depth")
        return {**DEFAULT_MODELS, **v}

    @field_validator("mask_size")
    @classmethod
    def _mask(cls, v: str) -> str:
        if v in ("default", "network", "source") or re.match(r"^\d{1,5}x\d{1,5}$", v):
            return v
        raise ValueError(f"invalid mask size {v!r}: use WxH, network, source or default")

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, v: list[str]) -> list[str]:
        for uri in v:
            scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
            if scheme not in SINK_SCHEMES:
                raise ValueError(
                    f"unknown sink {redact(uri)!r}: use redis://, rediss://, dir:PATH or video:PATH"
                )
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> PipelineConfig:
        seen: set[str] = set()
        for s in self.sources:
            if s.id in seen:
                raise ValueError(f"two sources share the id {s.id!r}: give one an explicit ID=")
            seen.add(s.id)
        return self

    @model_validator(mode="after")
    def _zones_rules(self) -> PipelineConfig:
        zones: set[str] = set()
        for z in self.zones:
            if z.name in zones:
                raise ValueError(f"two zones share the name {z.name!r}")
            zones.add(z.name)
        rules: set[str] = set()
        for r in self.rules:
            if r.name in rules:
                raise ValueError(f"two rules share the name {r.name!r}")
            rules.add(r.name)
            if r.zone not in zones:
                known = ", ".join(sorted(zones)) or "none defined"
                raise ValueError(f"rule {r.name!r}: unknown zone {r.zone!r} (zones: {known})")
            if r.classes and "segmentation" not in self.tasks:
                raise ValueError(f"rule {r.name!r} tests classes, which needs the segmentation task")
            if r.max_distance_m is not None and "depth" not in self.tasks:
                raise ValueError(f"rule {r.name!r} has max_distance_m, which needs the depth task")
        return self


def redact(uri: str) -> str:
    """Hide the password in a URI (``redis://user:***@host``)."""
    return re.sub(r"(?<=://)([^:/@]*):([^@/]*)@", lambda m: f"{m.group(1)}:***@", uri)


def parse_source(arg: str) -> SourceConfig:
    """``[ID=]URI`` -> a source; the id defaults to the file stem or the RTSP path."""
    sid: str | None = None
    uri = arg
    head, sep, tail = arg.partition("=")
    if sep and "/" not in head:  # "ID=URI"; a path or URI has a "/" before any "="
        sid, uri = head, tail
    if not uri:
        raise ConfigError(f"empty source in {arg!r}")
    if sid is None:
        parts = urlsplit(uri)
        if parts.scheme.lower() in ("rtsp", "rtsps"):
            sid = re.sub(r"[^A-Za-z0-9._-]", "_", parts.path.strip("/")) or parts.hostname or "camera"
        else:
            sid = Path(parts.path if parts.scheme == "file" else uri).stem or "source"
            sid = re.sub(r"[^A-Za-z0-9._-]", "_", sid)
        sid = sid[:64]
    try:
        return SourceConfig(id=sid, uri=uri)
    except ValidationError as e:
        raise ConfigError(first_error(e)) from e


def first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown config key {loc!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read YAML (optional), apply CLI overrides (already nested), validate once."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must be a mapping of keys")
        data = loaded
        if isinstance(data.get("sources"), list):
            data["sources"] = [_source_entry(s) for s in data["sources"]]
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    if isinstance(data.get("sources"), list):
        data["sources"] = [_expand_source_env(s) for s in data["sources"]]
    env_url = os.environ.get("REDIS_URL")
    if env_url and "sinks" not in (overrides or {}) and "sinks" not in data:
        data["sinks"] = [env_url]
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(first_error(e)) from e


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(uri: str, where: str = "source") -> str:
    """Replace ``${NAME}`` in a URI with the environment variable (camera credentials stay out of configs)."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ConfigError(f"{where}: environment variable {m.group(1)} is not set (the URI refers to it)")
        from urllib.parse import quote

        return quote(value, safe="")

    return _ENV_REF.sub(sub, uri)


def _expand_source_env(s: Any) -> Any:
    if isinstance(s, dict) and isinstance(s.get("uri"), str) and "${" in s["uri"]:
        return {**s, "uri": expand_env(s["uri"], f"source {s.get('id', '?')!r}")}
    return s


def _source_entry(s: Any) -> Any:
    if isinstance(s, str):
        return parse_source(s).model_dump()
    if isinstance(s, dict) and "uri" in s and "id" not in s:
        return {**parse_source(str(s["uri"])).model_dump(include={"id"}), **s}
    return s
