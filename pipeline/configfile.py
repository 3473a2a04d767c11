"""Reading a config: the YAML file (size-capped, no aliases, no duplicate keys), CLI overrides, ``${NAME}``
environment references and ``REDIS_URL``, validated once into a :class:`~pipeline.config.PipelineConfig`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engines.base import error_reason
from pipeline.config import MAX_CONFIG_BYTES, ConfigError, PipelineConfig, first_error, parse_source
from pipeline.redact import shorten, uri_scheme


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a few hundred bytes of nested aliases expand to
    gigabytes (the "billion laughs"), and a config never needs them. Duplicate keys are refused too."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a config", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key given twice is an error, not a silent override of the first."""
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {str(key)[:80]!r} is given twice", key_node.start_mark)
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep)


def read_yaml(p: Path) -> Any:
    """The YAML document in ``p``: at most 1 MiB, text, no aliases; every problem is one ConfigError line."""
    shown = shorten(str(p))
    try:
        if not p.is_file():
            raise ConfigError(f"config file not found: {shown}")
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {shown} ({e.strerror or type(e).__name__})") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {shown} is larger than 1 MiB: a config is a short YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {shown} is not a text YAML file (binary data at byte {e.start}): "
                          "pass the config first, sources with --source") from e
    if "\x00" in text:
        raise ConfigError(f"config file {shown} is not a text YAML file (it holds NUL bytes)")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or error_reason(e)
        raise ConfigError(f"config file {shown} is not valid YAML: {problem}{where}") from e


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read YAML (optional), apply CLI overrides (already nested), validate once."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml(p) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {shorten(str(p))} must be a mapping of keys")
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
    env_cache = os.environ.get("DPTSTREAM_CACHE_DIR")  # where compiled engines live (tests share one per session)
    engine = data.get("engine")
    if env_cache and (engine is None or (isinstance(engine, dict) and "cache_dir" not in engine)):
        data["engine"] = {**(engine or {}), "cache_dir": env_cache}
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(first_error(e)) from e


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(uri: str, where: str = "source") -> str:
    """Replace ``${NAME}`` in a URI with the environment variable (camera credentials stay out of configs).

    In a URL the value is percent-encoded whole (a password holding ``@``, ``:`` or ``/`` stays in the userinfo);
    in a ``file://`` URI every character but ``/`` is (the path is percent-decoded again when opened); in a plain
    path, or a URI that is all one variable, it is put as it is."""
    from urllib.parse import quote

    scheme = uri_scheme(uri)

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise ConfigError(f"{where}: environment variable {m.group(1)} is not set (the URI refers to it)")
        if scheme is None:
            return value
        return quote(value, safe="/" if scheme == "file" else "")

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
