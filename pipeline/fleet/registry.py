"""The desired cameras: ``{prefix}:cameras`` maps a camera id to the JSON of a ``sources:`` entry.

Entries are validated by the same :class:`~pipeline.config.SourceConfig` as the config file, but stored as
given: a ``${VAR}`` in a URI stays unexpanded in Redis and each node expands it from its own environment, so
camera passwords need not be stored. What is shown of an entry (``cameras list``, logs, the view) is redacted.

The hash always holds the field :data:`MARKER`, so "the key is gone" (a flushed or restarted Redis without
persistence) is told apart from "no cameras": only ``cameras remove`` stops a camera.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.config import ConfigError, SourceConfig, first_error
from pipeline.configfile import expand_env
from pipeline.fleet.keys import FleetKeys
from pipeline.frames import STREAM_ID_RULE, valid_stream_id
from pipeline.redact import redact, shorten

MARKER = "#"  # not a valid camera id
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# KEYS: the registry hash. ARGV: replace ("1"/"0"), marker field, marker value, then id/entry pairs.
# Returns the first id already there (nothing written), or false when all were written.
ADD_LUA = """
if ARGV[1] == '0' then
  for i = 4, #ARGV, 2 do
    if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then return ARGV[i] end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return false
"""


def parse_options(options: Iterable[str]) -> dict[str, Any]:
    """``key=value`` flags -> the fields of a ``sources:`` entry (values read as YAML scalars: ``live=true``)."""
    out: dict[str, Any] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--option {shorten(redact(opt))!r}: use key=value (e.g. rtsp_transport=udp)")
        if key in ("id", "uri"):
            raise ConfigError(f"--option {key}=...: the camera's {key} is given as an argument")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        out[key] = parsed if isinstance(parsed, str | int | float | bool) else value
    return out


def validate_entry(raw: Any, where: str = "camera") -> dict[str, Any]:
    """A ``sources:`` entry checked as the config checks it; returned as it will be stored (``${VAR}`` kept)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: an entry is a mapping with id and uri (got {type(raw).__name__})")
    cam = raw.get("id")
    if not isinstance(cam, str) or not valid_stream_id(cam):
        shown = shorten(str(cam)) if cam is not None else "none"
        raise ConfigError(f"{where}: invalid camera id {shown!r}: {STREAM_ID_RULE}")
    uri = raw.get("uri")
    if not isinstance(uri, str):
        raise ConfigError(f"camera {cam!r}: give its uri (a file path or rtsp://...)")
    try:
        # ${VAR} is checked as a plain word; the node checks the expanded URI again
        SourceConfig.model_validate({**raw, "uri": _ENV_REF.sub("x", uri)})
    except ValidationError as e:
        raise ConfigError(f"camera {cam!r}: {first_error(e)}") from e
    return dict(raw)


def expand(entry: Mapping[str, Any]) -> SourceConfig:
    """The node's view of a stored entry: ``${VAR}`` from this process's environment, validated."""
    cam = str(entry.get("id", "?"))
    data = dict(entry)
    if isinstance(data.get("uri"), str) and "${" in data["uri"]:
        data["uri"] = expand_env(data["uri"], f"camera {cam!r}")
    try:
        return SourceConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"camera {cam!r}: {first_error(e)}") from e


def shown(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as it may be displayed: its URI redacted (a literal password never leaves Redis)."""
    out = dict(entry)
    if isinstance(out.get("uri"), str):
        out["uri"] = redact(out["uri"])
    return out


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class CameraRegistry:
    def __init__(self, client: Any, keys: FleetKeys) -> None:
        self.client = client
        self.keys = keys

    def entries(self) -> dict[str, dict[str, Any]] | None:
        """Camera id -> stored entry; None when the registry key is gone (not the same as no cameras).
        An unreadable entry (not JSON) is left out."""
        raw = self.client.hgetall(self.keys.cameras)
        if not raw:
            return None
        out: dict[str, dict[str, Any]] = {}
        for k, v in raw.items():
            cam = _text(k)
            if cam == MARKER:
                continue
            try:
                e = json.loads(v)
            except ValueError:
                continue
            if isinstance(e, dict):
                out[cam] = e
        return out

    def _notify(self) -> None:
        self.client.publish(self.keys.changed, "1")

    def add(self, entries: list[dict[str, Any]], replace: bool = False) -> None:
        """Store validated ``entries`` (all or none, in one script: two adds of one id cannot both win); an id
        already there needs ``replace``."""
        args: list[str] = ["1" if replace else "0", MARKER, json.dumps({"schema": 1})]
        for e in entries:
            args += [e["id"], json.dumps(e, sort_keys=True)]
        taken = self.client.eval(ADD_LUA, 1, self.keys.cameras, *args)
        if taken:
            raise ConfigError(f"camera {_text(taken)!r} is already in the registry: pass --replace to replace it")
        self._notify()

    def remove(self, cam: str) -> bool:
        gone = bool(self.client.hdel(self.keys.cameras, cam))
        if gone:
            self._notify()
        return gone
