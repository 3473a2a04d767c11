"""Live view in the browser (``dptstream view``): a wall of every stream in Redis, rendered as ``snapshot``
renders it, with zones and active alerts. Reads only Redis. Library code: the command is pipeline/cli's.

    settings = ViewSettings(redis_url="redis://127.0.0.1:6379/0")
    asyncio.run(serve(settings, stop_event))
"""

from pipeline.view.hub import Hub, Picture, ViewSettings
from pipeline.view.render import render_tile
from pipeline.view.security import TOKEN_ENV, check_bind, is_loopback
from pipeline.view.server import ViewError, build_app, serve

__all__ = ["TOKEN_ENV", "Hub", "Picture", "ViewError", "ViewSettings", "build_app", "check_bind", "is_loopback",
           "render_tile", "serve"]
