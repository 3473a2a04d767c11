"""The fleet's cameras over HTTP: ``GET /api/cameras`` (as ``dptstream cameras list --json``: URIs redacted),
``POST /api/cameras`` (a JSON ``sources:`` entry, plus ``"replace": true`` to replace one) and
``DELETE /api/cameras/{id}``. Writes need the view's token: a view started without one refuses them (403),
whatever address it listens on. Errors are one line, as the CLI says them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from engines.base import error_reason
from pipeline.config import ConfigError
from pipeline.fleet.keys import FleetKeys
from pipeline.fleet.registry import CameraRegistry, validate_entry
from pipeline.fleet.status import camera_rows
from pipeline.frames import STREAM_ID_RULE, valid_stream_id
from pipeline.sinks import redis_client
from pipeline.view.hub import UNREACHABLE, ViewSettings

SETTINGS: web.AppKey[ViewSettings] = web.AppKey("camera-settings", ViewSettings)
WRITES: web.AppKey[bool] = web.AppKey("camera-writes", bool)
NO_TOKEN = "camera changes need the view's token: start the view with --token or DPTSTREAM_VIEW_TOKEN"
MAX_BODY = 64 * 1024


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _error(status: int, line: str) -> web.Response:
    return _json(status, {"error": line})


def _registry(s: ViewSettings) -> CameraRegistry:
    client = redis_client(s.redis_url, s.ca_file, timeout=s.redis_timeout_s, cert_file=s.cert_file,
                          key_file=s.key_file)
    return CameraRegistry(client, FleetKeys(s.prefix))


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def list_cameras(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]

    def read() -> list[dict[str, Any]]:
        reg = _registry(s)
        try:
            return [r.as_json() for r in camera_rows(reg.client, s.prefix)]
        finally:
            reg.client.close()

    try:
        return _json(200, {"cameras": await _in_thread(read)})
    except Exception as e:  # Redis away: one line
        return _error(503, f"{UNREACHABLE} ({error_reason(e)})")


async def add_camera(request: web.Request) -> web.Response:
    if not request.app[WRITES]:
        return _error(403, NO_TOKEN)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return _error(413, "a camera entry is a small JSON object (at most 64 KiB)")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        return _error(400, 'the body is not JSON: send {"id": ..., "uri": ..., ...}')
    replace = False
    if isinstance(body, dict):
        body = dict(body)
        replace = body.pop("replace", False) is True
    s = request.app[SETTINGS]
    try:
        entry = validate_entry(body)
    except ConfigError as e:
        return _error(400, str(e))

    def write() -> None:
        reg = _registry(s)
        try:
            reg.add([entry], replace)
        finally:
            reg.client.close()

    try:
        await _in_thread(write)
    except ConfigError as e:  # already there without replace
        return _error(409, str(e))
    except Exception as e:
        return _error(503, f"{UNREACHABLE} ({error_reason(e)})")
    return _json(201 if not replace else 200, {"id": entry["id"], "replaced": replace})


async def remove_camera(request: web.Request) -> web.Response:
    if not request.app[WRITES]:
        return _error(403, NO_TOKEN)
    cam = request.match_info["id"]
    if not valid_stream_id(cam):
        return _error(400, f"invalid camera id {cam[:80]!r}: {STREAM_ID_RULE}")
    s = request.app[SETTINGS]

    def delete() -> bool:
        reg = _registry(s)
        try:
            return bool(reg.remove(cam))
        finally:
            reg.client.close()

    try:
        gone = await _in_thread(delete)
    except Exception as e:
        return _error(503, f"{UNREACHABLE} ({error_reason(e)})")
    if not gone:
        return _error(404, f"no camera {cam!r} in the registry")
    return _json(200, {"id": cam, "removed": True})


def add_routes(app: web.Application, settings: ViewSettings) -> None:
    app[SETTINGS] = settings
    app[WRITES] = bool(settings.token)
    app.router.add_get("/api/cameras", list_cameras)
    app.router.add_post("/api/cameras", add_camera)
    app.router.add_delete("/api/cameras/{id}", remove_camera)
