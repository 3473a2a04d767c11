"""One typed, validated config, :class:`PipelineConfig`: defaults, limits and cross-field checks; unknown keys are
errors. Reading it from YAML, flags and the environment is :mod:`pipeline.configfile`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from engines.base import DEFAULT_MODELS, Task
from pipeline.frames import STREAM_ID_RULE, valid_stream_id
from pipeline.redact import redact, shorten, uri_scheme, userinfo_end
from pipeline.zones import polygon_problem, valid_name

SINK_SCHEMES = ("redis", "rediss", "dir", "video")
# network streams FFmpeg reads here, as live sources (reconnect on end or error); HLS is http(s). No srt://: the
# FFmpeg in PyAV's wheels is built without libsrt.
LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps")
SOURCE_SCHEMES = ("file", *LIVE_SCHEMES)
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than 1 MiB is refused before it is parsed
MAX_MASK_SIDE = 8192
MAX_URI_CHARS = 4096  # PATH_MAX: no longer path can be opened
NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # Redis key prefixes and consumer group names (fullmatch)
MASK_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")


class ConfigError(Exception):
    """A bad config or flag; reported as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SourceConfig(_Strict):
    id: str
    uri: str
    live: bool | None = None  # None: rtsp(s) is live, files are not
    loop: bool = False  # replay a file forever (a file posing as a camera)
    realtime: bool = False  # pace a file at its frame rate
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    open_timeout_s: float = Field(10.0, gt=0, le=3600)
    read_timeout_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not valid_stream_id(v):
            raise ValueError(f"invalid stream id {v!r}: use 1-64 of A-Z a-z 0-9 . _ -")
        return v

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v:
            raise ValueError("empty source URI")
        if len(v) > MAX_URI_CHARS:
            raise ValueError(f"source URI {shorten(redact(v))!r} is {len(v)} characters long "
                             f"(at most {MAX_URI_CHARS}): check the path")
        scheme = uri_scheme(v)
        if scheme is not None and scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme + '://'!r} in source {shorten(redact(v))!r}: use a "
                             f"file path or one of {', '.join(s + '://' for s in SOURCE_SCHEMES)}")
        problem = url_error(v)
        if problem:
            raise ValueError(f"source URI {shorten(redact(v))!r} is not a valid URL ({problem})")
        return v

    @model_validator(mode="after")
    def _network_is_live(self) -> SourceConfig:
        if self.live is False and self.scheme != "file":
            raise ValueError(f"source {self.id!r}: {self.scheme}:// sources are read as live streams "
                             "(reconnect on end or error); live: false is for files only")
        return self

    @property
    def scheme(self) -> str:
        return uri_scheme(self.uri) or "file"

    @property
    def is_live(self) -> bool:
        return self.live if self.live is not None else self.scheme in LIVE_SCHEMES

    @property
    def path(self) -> str:
        """The local path of a file source (``file://`` URIs percent-decoded)."""
        if uri_scheme(self.uri) == "file":
            return unquote(urlsplit(self.uri).path)
        return self.uri


class EngineSection(_Strict):
    backend: Literal["auto", "tensorrt", "openvino", "torch"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0, le=60_000)
    cuda_graphs: bool = True
    compile: bool = False
    cache_dir: str = "~/.cache/dptstream"
    threads: int | None = Field(None, ge=1, le=1024)
    # a checkpoint whose processor does not resize (facebook/dpt-dinov2-*) runs at the source's size: this
    # resizes larger sources to this longest side first (no effect on processors that resize)
    max_side: int | None = Field(None, ge=14, le=8192)


class QueueSection(_Strict):
    decoded: int = Field(8, ge=1, le=100_000)
    prepared: int = Field(16, ge=1, le=100_000)
    inferred: int = Field(16, ge=1, le=100_000)
    results: int = Field(64, ge=1, le=100_000)
    live_policy: Literal["drop_oldest", "block"] = "drop_oldest"


class RedisSection(_Strict):
    prefix: str = "dpt"
    maxlen: int = Field(10000, ge=1, le=1_000_000_000)
    events: bool = True
    ca_file: str | None = None
    retry_max_s: float = Field(5.0, gt=0, le=3600)
    buffer: int = Field(1000, ge=1, le=1_000_000)  # live results held while Redis is away
    cert_file: str | None = None  # client certificate (PEM) for a TLS server that asks for one
    key_file: str | None = None  # its private key (PEM)
    thumbnail: int = Field(0, ge=0, le=1024)  # long side (px) of a JPEG of the frame in each entry; 0 = off
    alerts_maxlen: int = Field(10000, ge=1, le=1_000_000_000)  # {prefix}:alerts is trimmed to about this many entries
    # a 16-bit PNG depth map at the mask size in each entry (field depth_map; the dir: sink writes one per frame):
    # metric depth in millimetres (clipped at 65.535 m), relative depth scaled from depth.min..max to 0..65535
    depth_map: bool = False

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"invalid redis prefix {v!r}: use 1-64 of A-Z a-z 0-9 . _ : -")
        return v


class LiveSection(_Strict):
    reconnect_initial_s: float = Field(0.5, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=86400)
    stall_timeout_s: float = Field(10.0, gt=0, le=86400)
    frozen_timeout_s: float = Field(0.0, ge=0, le=86400)  # 0 disables the frozen-picture detector
    fail_if_down_at_start: bool = False
    latency_budget_ms: float = Field(0.0, ge=0, le=3_600_000)  # 0 disables degradation
    degrade_order: list[Literal["rate", "skip_depth", "alternate_segmentation"]] = Field(
        default_factory=lambda: ["rate", "skip_depth", "alternate_segmentation"]  # type: ignore[arg-type]
    )
    reconnect_jitter: float = Field(0.5, ge=0, le=1)  # each delay is scaled by U(1 - jitter, 1)
    max_attempts: int = Field(0, ge=0, le=10**9)  # consecutive failed connects before a camera is given up; 0 = never
    frozen_tolerance: float = Field(2.0, gt=0, le=255)  # grey levels a thumbnail block may move and still be "frozen"
    degrade_rate_divisor: int = Field(2, ge=2, le=1000)  # the "rate" level keeps one frame in N
    degrade_recover_s: float = Field(5.0, gt=0, le=86400)  # latency under half the budget this long undoes one level
    rtsps_verify: bool = False  # rtsps://: verify the camera's certificate (most cameras' are self-signed)
    rtsps_ca_file: str | None = None  # rtsps://: verify against this CA (implies rtsps_verify)


class JobsSection(_Strict):
    """Batch jobs (``submit`` / ``worker`` / ``status``): a Redis stream read by a consumer group."""

    group: str = "dptstream-workers"
    claim_idle_s: float = Field(60.0, gt=0, le=7 * 86400)  # a job whose worker is silent this long goes to another worker
    max_attempts: int = Field(3, ge=1, le=1000)  # attempts ending without progress (not hand-backs) before a job fails
    poll_s: float = Field(2.0, gt=0, le=3600)  # how long an idle worker blocks waiting for a job

    @field_validator("group")
    @classmethod
    def _group(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"invalid consumer group name {v!r}: use 1-64 of A-Z a-z 0-9 . _ : -")
        return v


class FleetSection(_Strict):
    """``dptstream node``: this node's share of the camera fleet and the lease timing."""

    max_cameras: int = Field(16, ge=1, le=10_000)  # cameras this node runs at most
    lease_s: float = Field(5.0, ge=0.5, le=3600)  # a camera's lease; renewed every third of it
    reconcile_s: float = Field(1.0, gt=0, le=60)  # periodic reconcile (a registry change wakes it at once)
    node_id: str | None = None  # default: host name and process id

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        if v is not None and not valid_stream_id(v):
            raise ValueError(f"invalid fleet node id {v!r}: {STREAM_ID_RULE}")
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
    # label names of the segmentation checkpoint, or ids (a YAML true is neither)
    classes: list[StrictInt | StrictStr] = Field(default_factory=list)
    min_coverage: float = Field(0.0, ge=0, le=1)  # fraction of the zone's pixels these classes cover
    max_distance_m: float | None = Field(None, gt=0)  # metric depth checkpoints only
    for_frames: int = Field(1, ge=1, le=10**9)  # consecutive frames the condition holds before the rule starts
    clear_frames: int = Field(1, ge=1, le=10**9)  # consecutive frames it fails before the rule ends

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


def _default_models() -> dict[str, str]:
    return dict(DEFAULT_MODELS.items())  # keys are tasks; the config's models may name others (refused)


class PipelineConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=list)
    sinks: list[str] = Field(default_factory=lambda: ["redis://127.0.0.1:6379/0"])
    tasks: list[Task] = Field(default_factory=lambda: ["segmentation", "depth"])  # type: ignore[arg-type]
    models: dict[str, str] = Field(default_factory=_default_models)
    mask_size: str = "default"
    engine: EngineSection = Field(default_factory=EngineSection)
    queues: QueueSection = Field(default_factory=QueueSection)
    redis: RedisSection = Field(default_factory=RedisSection)
    live: LiveSection = Field(default_factory=LiveSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    jobs: JobsSection = Field(default_factory=JobsSection)
    fleet: FleetSection = Field(default_factory=FleetSection)
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
        return {**_default_models(), **v}

    @field_validator("mask_size")
    @classmethod
    def _mask(cls, v: str) -> str:
        if v in ("default", "network", "source"):
            return v
        m = MASK_SIZE_RE.fullmatch(v)
        if m and all(1 <= int(side) <= MAX_MASK_SIDE for side in m.groups()):
            return v
        raise ValueError(f"invalid mask size {shorten(v)!r}: use WxH (each side 1..{MAX_MASK_SIDE}), network, "
                         "source or default")

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, v: list[str]) -> list[str]:
        out = []
        for uri in v:
            scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
            if scheme not in SINK_SCHEMES:
                raise ValueError(
                    f"unknown sink {shorten(redact(uri))!r}: use redis://, rediss://, dir:PATH or video:PATH"
                )
            uri = scheme + uri[len(scheme):]  # REDIS://... works as redis://... (clients want it lower-case)
            if scheme in ("redis", "rediss"):
                check_redis_url(uri)
            out.append(uri)
        return out

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


def _url_problem(uri: str) -> str:
    """Why ``urlsplit`` refuses ``uri``, in our words (its own message may quote the host and userinfo)."""
    netloc = re.split(r"[/?#]", uri.partition("://")[2], maxsplit=1)[0]
    if netloc.count("[") != netloc.count("]"):
        return "an unbalanced '[' or ']' in the host"
    if "[" in netloc:
        return "the host in '[...]' is not an IPv6 address"
    return "its host cannot be parsed"


RAW_IN_PASSWORD = "its password holds a raw '/', '?' or '#': percent-encode them (%2F, %3F, %23)"


def _password_cut(uri: str) -> bool:
    """Whether a URL parser would end the authority of ``uri`` before its userinfo does: a raw ``/``, ``?`` or
    ``#`` in the password (a URL client then reads part of the password as the host, port or path)."""
    rest = uri.partition("://")[2]
    return userinfo_end(rest) > len(re.split(r"[/?#]", rest, maxsplit=1)[0])


def url_error(uri: str) -> str | None:
    """Why a ``scheme://`` URI cannot be parsed as a URL, or None when it can (a plain path: None)."""
    problem = _url_error(uri)
    return RAW_IN_PASSWORD if problem and _password_cut(uri) else problem


def _url_error(uri: str) -> str | None:
    if uri_scheme(uri) is None:
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _url_problem(uri)
    if parts.scheme.lower() == "file":
        return None
    if not parts.hostname:
        return "it names no host"
    try:
        port = parts.port
    except ValueError:
        return "its port is not a number in 1..65535"
    if port == 0:
        return "its port is not a number in 1..65535"
    return None


def check_redis_url(url: str) -> None:
    """A ``redis://`` / ``rediss://`` URL a client can use: host, port 1..65535, integer database."""
    safe = shorten(redact(url))
    if _password_cut(url):  # the path of a Redis URL is a database number: an "@" after it ends a password
        raise ValueError(f"sink {safe!r}: {RAW_IN_PASSWORD}")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"sink {safe!r} is not a valid URL ({_url_problem(url)})") from None
    if not parts.hostname:
        raise ValueError(f"sink {safe!r}: name the host (redis://host:6379/0)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"sink {safe!r}: the port must be a number in 1..65535") from None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"sink {safe!r}: the port must be a number in 1..65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"sink {safe!r}: the database must be a number (redis://host:port/0)")


def id_from_name(raw: str) -> str:
    """A stream id made from a file name (its stem) or a path: characters outside A-Z a-z 0-9 . _ - become ``_``;
    a name that keeps no letter or digit that way (``日本.mp4``), or is longer than 64, gets a hash of the
    original so that different names stay different ids. ``run`` and ``submit`` both name streams with it."""
    import hashlib

    sid = re.sub(r"[^A-Za-z0-9._-]", "_", raw)
    digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if not re.search(r"[A-Za-z0-9]", sid):
        return f"id-{digest}"
    if len(sid) > 64:
        sid = sid[-55:].lstrip("._-") + "-" + digest
    return sid


def parse_source(arg: str) -> SourceConfig:
    """``[ID=]URI`` -> a source; the id defaults to the file stem or the RTSP path."""
    sid: str | None = None
    uri = arg
    head, sep, tail = arg.partition("=")
    if sep and "/" not in head:  # "ID=URI"; a path or URI has a "/" before any "="
        sid, uri = head, tail
    if not uri:
        raise ConfigError(f"empty source in {arg!r}")
    if sid is None and url_error(uri):
        sid = "camera"  # the URI's own check below refuses it, in one line
    if sid is None:
        parts = urlsplit(uri)
        if parts.scheme.lower() in LIVE_SCHEMES:
            sid = re.sub(r"[^A-Za-z0-9._-]", "_", parts.path.strip("/")) or parts.hostname or "camera"
        else:
            sid = id_from_name(Path(unquote(parts.path) if parts.scheme.lower() == "file" else uri).stem or "source")
        sid = sid[:64]
    try:
        return SourceConfig(id=sid, uri=uri)
    except ValidationError as e:
        raise ConfigError(first_error(e)) from e


def first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown config key {shorten(loc)!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
