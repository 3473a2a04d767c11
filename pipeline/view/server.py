"""The view's HTTP side (aiohttp): the wall page, ``latest.jpg``, ``/api/streams`` and the live event stream.

Routes (all but ``/healthz`` need the token when one is set):
  ``/``                           the wall (one tile per stream; a click opens it large with a class legend)
  ``/streams/{id}/latest.jpg``    the stream's latest rendering (``snapshot``'s picture plus zones) as a JPEG
  ``/api/streams``                JSON: per stream frame, age, fps, latency, classes, active alerts
  ``/api/events``                 server-sent events: the same JSON whenever it changes (at least once a second)
  ``/healthz``                    ``ok`` (for probes; says nothing about Redis)
  ``/api/cameras``                the fleet's cameras: GET, POST (writes need a token), ``DELETE /api/cameras/{id}``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

from aiohttp import web

from pipeline.frames import STREAM_ID_RULE, valid_stream_id
from pipeline.view.cameras import add_routes
from pipeline.view.hub import UNREACHABLE, Hub, ViewSettings
from pipeline.view.logs import quiet_server_logs
from pipeline.view.security import check_bind, credential_problem, request_token, token_matches

log = logging.getLogger(__name__)

HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
TOKEN: web.AppKey[str] = web.AppKey("token", str)
PAGE: web.AppKey[bytes] = web.AppKey("page", bytes)
UNAUTHORIZED = "unauthorized: send the view token as 'Authorization: Bearer TOKEN' or ?token=TOKEN\n"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ViewError(Exception):
    """The view cannot serve (e.g. its port is taken)."""


def text(status: int, line: str, **headers: str) -> web.Response:
    """A one-line plain-text answer."""
    return web.Response(status=status, text=line.rstrip("\n") + "\n", content_type="text/plain", headers=headers)


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app.get(TOKEN)
    if expected and request.path != "/healthz":
        authorization, query_token = request.headers.get("Authorization"), request.query.get("token")
        problem = credential_problem(authorization, query_token)
        if problem is not None:  # refused like a wrong token; one line, never what was sent
            log.warning("bad credential from %s: %s", request.remote, problem)
        given = None if problem else request_token(authorization, query_token)
        if not token_matches(given, expected):
            return text(401, UNAUTHORIZED, **{"WWW-Authenticate": 'Bearer realm="dptstream view"'})
    return await handler(request)


@web.middleware
async def no_store(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as e:  # aiohttp's own 404/405: one line too
        return text(e.status, f"{e.status}: {e.reason}")
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp


async def page(request: web.Request) -> web.Response:
    return web.Response(body=request.app[PAGE], content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                   "script-src 'self' 'unsafe-inline'"})


async def healthz(request: web.Request) -> web.Response:
    return text(200, "ok")


async def api_streams(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await hub.ready.wait()
    return web.Response(text=hub.payload_json, content_type="application/json")


async def latest_jpg(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    sid = request.match_info["id"]
    if not valid_stream_id(sid):
        return text(400, f"invalid stream id {sid[:80]!r}: {STREAM_ID_RULE}")
    await hub.ready.wait()
    tile = hub.tiles.get(sid)
    if tile is None:
        if not hub.redis_ok and not hub.tiles:
            return text(503, f"{UNREACHABLE}: cannot tell whether stream {sid!r} exists")
        known = sorted(hub.tiles)
        hint = f"; known streams: {', '.join(known[:10])}" + (" ..." if len(known) > 10 else "") if known else ""
        return text(404, f"unknown stream {sid!r} under prefix {hub.settings.prefix}{hint}")
    if tile.read_error and hub.redis_ok:
        return text(503, f"stream {sid!r}: {tile.read_error}")
    pic = tile.picture or await hub.wait_picture(sid, 5.0)
    if pic is None:
        why = tile.render_error or ("no entries yet" if tile.last_id is None else "not rendered yet")
        return text(503, f"stream {sid!r}: {why if hub.redis_ok else UNREACHABLE}")
    headers = {"ETag": f'"{pic.entry_id}.{pic.version}"', "X-Dptstream-Frame": str(pic.frame),
               "X-Dptstream-State": "ok" if hub.redis_ok else "unreachable"}
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    return web.Response(body=pic.jpeg, content_type="image/jpeg", headers=headers)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the /api/streams JSON on every change (and once a second for the ages).

    A viewer never gets a queue: each wake-up sends the current state. A viewer whose connection does not take
    one update within ``write_timeout_s`` (its socket buffers full) is dropped."""
    hub = request.app[HUB]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    if request.transport is not None:
        request.transport.set_write_buffer_limits(high=256 * 1024)  # what a slow viewer may hold here
    await hub.ready.wait()
    hub.viewers += 1
    try:
        await asyncio.wait_for(resp.write(b"retry: 1000\n\n"), hub.settings.write_timeout_s)
        while not hub.closed:
            seen = hub.version
            body = f"event: state\ndata: {hub.payload_json}\n\n".encode()
            try:
                await asyncio.wait_for(resp.write(body), hub.settings.write_timeout_s)
            except TimeoutError:
                log.info("dropping a slow viewer (%s): an update waited over %.0fs", request.remote,
                         hub.settings.write_timeout_s)
                if request.transport is not None:
                    request.transport.abort()
                break
            await hub.wait_change(seen, 1.0)
    except (TimeoutError, ConnectionError):
        pass  # the viewer went away (or never took the first line)
    finally:
        hub.viewers -= 1
    return resp


def build_app(hub: Hub, token: str | None) -> web.Application:
    app = web.Application(middlewares=[no_store, require_token])
    app[HUB] = hub
    if token:
        app[TOKEN] = token
    app[PAGE] = files("pipeline.view").joinpath("page.html").read_bytes()
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/streams", api_streams)
    app.router.add_get("/api/events", events)
    app.router.add_get("/streams/{id}/latest.jpg", latest_jpg)
    add_routes(app, hub.settings)
    return app


async def serve(settings: ViewSettings, stop: asyncio.Event, on_ready: Callable[[int], Any] | None = None) -> None:
    """Serve the view until ``stop`` is set. Refuses a non-loopback bind without a token (ConfigError)."""
    check_bind(settings.host, settings.token)
    with quiet_server_logs(settings.token):  # a bad request: one line, never the token
        hub = Hub(settings)
        hub.start()
        runner = web.AppRunner(build_app(hub, settings.token), access_log=None, shutdown_timeout=2.0,
                               handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            try:
                await site.start()
            except OSError as e:
                raise ViewError(f"cannot listen on {settings.host}:{settings.port} ({e.strerror or e})") from e
            port = settings.port
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                port = int(server.sockets[0].getsockname()[1])
            if on_ready is not None:
                on_ready(port)
            await stop.wait()
        finally:
            await hub.close()
            with contextlib.suppress(Exception):
                await runner.cleanup()
