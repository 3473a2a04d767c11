"""What the view's HTTP server may log: a bad request is one WARNING line that names the client and the reason
(never the request line, which may hold ``?token=``), and the view token is hidden in every log record."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from aiohttp import http_exceptions as hx

# the loggers aiohttp's server side logs through (aiohttp.log)
AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal")

# most specific first: each names what was wrong, never what was sent
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (hx.LineTooLong, "a request line or header is too long"),
    (hx.BadHttpMethod, "not an HTTP request (an unknown method)"),
    (hx.InvalidURLError, "an invalid URL"),
    (hx.BadStatusLine, "a malformed request line"),
    (hx.InvalidHeader, "an invalid header"),
    (hx.PayloadEncodingError, "a malformed body"),
    (hx.BadHttpMessage, "a malformed request"),
)


def bad_request_reason(exc: BaseException) -> str | None:
    """Why aiohttp refused a request, in our words, or None when ``exc`` is no HTTP parsing error."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, hx.HttpProcessingError):
        return f"HTTP error {exc.code}"
    return None


def _hide(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


class ServerErrors(logging.Filter):
    """On aiohttp's loggers: a request aiohttp could not parse becomes ``bad HTTP request from ADDR: REASON``
    (WARNING, no traceback); any other server error is one ERROR line. With ``debug`` the traceback stays."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        addr = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = bad_request_reason(exc)
        if reason is not None:
            record.msg, record.args = "bad HTTP request from %s: %s", (addr, reason)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        else:
            record.msg, record.args = "error handling a request from %s: %s", (addr, type(exc).__name__)
        if not self.debug:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class HideSecrets(logging.Filter):
    """On a handler: ``secrets`` (the view token) become ``***`` in the message and the traceback of every record,
    whichever logger it came from."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        clean = _hide(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = _hide(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = _hide(record.stack_info, self.secrets)
        return True


@contextlib.contextmanager
def quiet_server_logs(token: str | None, debug: bool | None = None) -> Iterator[None]:
    """While serving: :class:`ServerErrors` on aiohttp's loggers and :class:`HideSecrets` (the token) on every
    handler of the root logger; both removed on exit. ``debug`` defaults to the root logger being at DEBUG."""
    if debug is None:
        debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    errors = ServerErrors(debug)
    hide = HideSecrets(*([token] if token else []))
    loggers = [logging.getLogger(name) for name in AIOHTTP_LOGGERS]
    handlers = list(logging.getLogger().handlers)
    for lg in loggers:
        lg.addFilter(errors)
    for h in handlers:
        h.addFilter(hide)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(errors)
        for h in handlers:
            h.removeFilter(hide)
