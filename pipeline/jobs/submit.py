"""Submitting jobs: expand paths and globs into job specs, queue them once each (Lua, atomic)."""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from pipeline.config import ConfigError, id_from_name, url_error
from pipeline.frames import STREAM_ID_RULE, valid_stream_id
from pipeline.jobs.keys import JobKeys
from pipeline.redact import redact, shorten

GLOB_CHARS = re.compile(r"[*?\[]")


# KEYS: job hash, queue stream, index zset. ARGV: id, uri, now.
_SUBMIT_LUA = """
local uri = redis.call('HGET', KEYS[1], 'uri')
if uri and uri ~= ARGV[2] then return {'conflict', uri} end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' or state == 'done' then return {'exists', state} end
redis.call('DEL', KEYS[1])
local eid = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'uri', ARGV[2], 'state', 'queued', 'submitted', ARGV[3],
           'attempts', 0, 'entry', eid)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if state == 'failed' then return {'requeued', ''} end
return {'queued', ''}
"""


@dataclass(frozen=True)
class JobSpec:
    id: str
    uri: str  # absolute path of the file


def job_id_for(path: str, id_from: str = "stem") -> str:
    """The job's (= stream's) id for a file: its stem, or (``path``) its path relative to the working
    directory with separators as ``_``. Ids longer than 64 characters keep their tail and a hash."""
    p = Path(path)
    if id_from == "path":
        try:
            rel = p.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            rel = p.resolve()
        raw = str(rel.with_suffix("")).strip("/")
    else:
        raw = p.stem
    return id_from_name(raw)


def expand_inputs(args: Iterable[str], id_from: str = "stem", check: bool = True) -> list[JobSpec]:
    """``FILE``, ``GLOB``, ``file://URI`` or ``ID=FILE`` arguments -> jobs (absolute paths, validated ids)."""
    if id_from not in ("stem", "path"):
        raise ConfigError(f"--id-from {id_from!r}: use stem or path")
    jobs: list[JobSpec] = []
    for arg in args:
        sid: str | None = None
        target = arg
        head, sep, tail = arg.partition("=")
        if sep and "/" not in head and ":" not in head and not GLOB_CHARS.search(head):
            sid, target = head, tail
        if not target:
            raise ConfigError(f"empty job argument {arg!r}")
        problem = url_error(target)
        if problem:
            raise ConfigError(f"job URI {shorten(redact(target))!r} is not a valid URL ({problem})")
        scheme = urlsplit(target).scheme.lower()
        if scheme in ("rtsp", "rtsps"):
            raise ConfigError(f"{redact(target)} is a live stream; batch jobs take files (use dptstream run)")
        if scheme == "file":
            target = urlsplit(target).path
        elif len(scheme) > 1:  # a one-letter scheme is a Windows drive
            raise ConfigError(f"unsupported job URI {redact(target)!r}: use a file path, a glob or file://")
        target = os.path.expanduser(target)
        if GLOB_CHARS.search(target):
            if sid is not None:
                raise ConfigError(f"{arg!r}: ID= names one file, not a glob")
            matches = sorted(m for m in glob.glob(target, recursive=True) if os.path.isfile(m))
            if not matches:
                raise ConfigError(f"no file matches {target!r}")
            paths = matches
        else:
            if check and not os.path.exists(target):
                raise ConfigError(f"file not found: {target} (pass --no-check if only the workers can see it)")
            if os.path.isdir(target):
                raise ConfigError(f"{target} is a directory: pass a glob such as '{target.rstrip('/')}/*.mp4'")
            paths = [target]
        for p in paths:
            jid = sid if sid is not None else job_id_for(p, id_from)
            if not valid_stream_id(jid):
                raise ConfigError(f"invalid job id {jid!r} for {p}: {STREAM_ID_RULE}")
            jobs.append(JobSpec(jid, os.path.abspath(p)))
    seen: dict[str, str] = {}
    for j in jobs:
        if j.id in seen and seen[j.id] != j.uri:
            raise ConfigError(f"two files get the job id {j.id!r} ({seen[j.id]} and {j.uri}): "
                              "give one an explicit ID=PATH, or use --id-from path")
        seen[j.id] = j.uri
    unique = {j.id: j for j in jobs}  # the same file twice is one job
    return list(unique.values())


def ensure_group(client: Any, keys: JobKeys, group: str) -> None:

    try:
        client.xgroup_create(keys.queue, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


@dataclass
class SubmitReport:
    queued: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)  # failed before, queued again
    skipped: dict[str, str] = field(default_factory=dict)  # id -> state it is in (queued, running, done)


def submit(client: Any, keys: JobKeys, group: str, jobs: list[JobSpec]) -> SubmitReport:
    """Queue ``jobs``. Nothing is queued if an id already belongs to another file (one clear error)."""
    pipe = client.pipeline(transaction=False)
    for j in jobs:
        pipe.hget(keys.job(j.id), "uri")
    for j, uri in zip(jobs, pipe.execute(), strict=True):
        if uri is not None and uri.decode() != j.uri:
            raise ConfigError(f"job id {j.id!r} already belongs to {uri.decode()} (not {j.uri}): "
                              "give an explicit ID=PATH, or use --id-from path")
    ensure_group(client, keys, group)
    script = client.register_script(_SUBMIT_LUA)
    rep = SubmitReport()
    now = f"{time.time():.3f}"
    pipe = client.pipeline(transaction=False)
    for j in jobs:
        script(keys=[keys.job(j.id), keys.queue, keys.index], args=[j.id, j.uri, now], client=pipe)
    for j, (what, other) in zip(jobs, pipe.execute(), strict=True):
        what = what.decode()
        if what == "conflict":
            raise ConfigError(f"job id {j.id!r} already belongs to {other.decode()} (submitted meanwhile)")
        if what == "queued":
            rep.queued.append(j.id)
        elif what == "requeued":
            rep.requeued.append(j.id)
        else:
            rep.skipped[j.id] = other.decode()
    return rep
