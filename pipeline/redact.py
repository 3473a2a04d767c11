"""Hiding secrets in URIs and text (a URI's password and secret-looking query values become ``***``), and making
text safe for a terminal (:func:`printable`).

Every message that can quote a URI (config errors, logs, metrics labels, web pages) passes through here."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# a URI in free text: its scheme is not the tail of a longer word ("xrtsp://" is "xrtsp://", not "rtsp://")
_URI_START = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://")
_SPACE = re.compile(r"\s")
MIN_BARE_SECRET = 4  # scrub() hides a bare password this long or longer wherever a message holds it


def uri_scheme(uri: str) -> str | None:
    """The lower-case scheme of ``scheme://...``, or None for a plain path (``C:\\x`` or ``a:b`` are paths)."""
    m = _SCHEME_RE.match(uri)
    return m.group(1).lower() if m else None


# query (or fragment) parameters whose value is a secret: redis-py reads ?password=, cameras take ?token= etc.
SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "pass", "token", "access_token", "auth", "key", "api_key",
                           "apikey", "secret", "signature", "sig", "credential", "credentials"})
_SECRET_SUFFIXES = ("password", "passwd", "token", "secret", "apikey", "signature", "credential", "credentials")
_QUERY_PARAM = re.compile(r"(?<=[?&#])([^=&#?\s]+)=([^&#\s\"']*)")


def secret_param(name: str) -> bool:
    """Whether a query parameter's name looks secret: ``password``, ``Token``, ``X-Amz-Signature``, ``apiKey``..."""
    n = unquote(name).lower()
    return n in SECRET_PARAMS or n.endswith(_SECRET_SUFFIXES) or any(
        part in SECRET_PARAMS for part in re.split(r"[-_.]", n))


def userinfo_end(rest: str) -> int:
    """Where the userinfo of a URI ends: the index of its ``@`` in ``rest`` (the URI after ``scheme://``), or -1
    when the URI has no credentials.

    A password may hold any character (``/``, ``?``, ``#``, ``@``, whitespace), so no character before the last
    ``@`` can be trusted to end the authority: the userinfo of a URI with credentials ends at its *last* ``@``.
    A URI has credentials when the parser's authority (up to the first ``/``, ``?`` or ``#``) holds an ``@``, or
    when a ``:`` comes before the last ``@`` (a raw ``/``, ``?`` or ``#`` in the password ended that authority
    early). This errs on the side of hiding: ``http://cam:80/a@b`` shows as ``http://cam:***@b``."""
    at = rest.rfind("@")
    if at < 0:
        return -1
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    return at if "@" in netloc or ":" in rest[:at] else -1


def _secret_spans(uri: str) -> list[tuple[int, int]]:
    """Where the secrets of ``uri`` lie: the userinfo's password (the whole userinfo when the URL cannot be
    parsed) and the values of secret-looking query parameters after it. Empty for anything without ``scheme://``."""
    m = _SCHEME_RE.match(uri)
    if not m:
        return []
    start = m.end()
    rest = uri[start:]
    spans: list[tuple[int, int]] = []
    after = start  # the query is looked for after the userinfo
    at = userinfo_end(rest)
    if at >= 0:
        try:
            urlsplit(uri)
            parsed = True
        except ValueError:  # e.g. an unbalanced "[": the generic syntax only
            parsed = False
        colon = rest.find(":", 0, at)
        if not parsed:
            spans.append((start, start + at))
        elif colon >= 0:
            spans.append((start + colon + 1, start + at))
        after = start + at
    for q in _QUERY_PARAM.finditer(uri, after):
        if secret_param(q.group(1)) and q.group(2):
            spans.append(q.span(2))
    return spans


def redact(uri: str) -> str:
    """Hide the secrets of a URI of any scheme: ``scheme://user:***@host/...?password=***``. Never raises.

    The userinfo ends at the *last* ``@`` of the URI (:func:`userinfo_end`), so a password holding ``@``, ``:``,
    ``/``, ``?``, ``#``, ``%40``, whitespace or any other character is hidden whole. A user name without a password (``rediss://writer@host``) is kept; when the URL cannot be parsed (an
    unbalanced ``[``) the whole userinfo is hidden. The values of query parameters named like a secret
    (:data:`SECRET_PARAMS`, ``...token``, ``X-Amz-Signature``) are hidden too.
    """
    try:
        out = uri
        for a, b in sorted(_secret_spans(uri), reverse=True):
            out = f"{out[:a]}***{out[b:]}"
        return out
    except Exception:  # never: but a redaction that raises would print what it was hiding
        m = _SCHEME_RE.match(uri) if isinstance(uri, str) else None
        return f"{uri[: m.end()]}***" if m else "***"


def uri_secrets(uri: str) -> set[str]:
    """The secrets of ``uri`` as they are written and percent-decoded (to hide wherever a message echoes them)."""
    try:
        spans = _secret_spans(uri)
        found = {uri[a:b] for a, b in spans}
        scheme_end = m.end() if (m := _SCHEME_RE.match(uri)) else -1
        found |= {uri[a:b].partition(":")[2] for a, b in spans if a == scheme_end}  # of a whole hidden userinfo
        return {s for raw in found for s in (raw, unquote(raw)) if s}
    except Exception:
        return set()


def _uri_end(text: str, i: int) -> int:
    """Where the URI whose authority starts at ``text[i]`` ends: at the first whitespace, unless the userinfo runs
    over whitespace (a password holding a space) to an ``@`` later on the same line, before the next URI."""
    space = _SPACE.search(text, i)
    token_end = space.start() if space else len(text)
    line_end = min((j for j in (text.find("\n", i), text.find("\r", i)) if j >= 0), default=len(text))
    nxt = _URI_START.search(text, token_end, line_end)
    bound = nxt.start() if nxt else line_end
    at = userinfo_end(text[i:bound]) + i
    if at <= token_end:  # no credentials, or they end within the first word
        return token_end
    space = _SPACE.search(text, at)
    return space.start() if space else len(text)


def redact_text(text: str) -> str:
    """``text`` with every URI in it redacted (for log lines and error messages of any origin). Never raises.

    A URI ends at whitespace, except that the userinfo of a URI with credentials runs to the last ``@`` on its line
    before the next URI (a password may hold a space). A password that holds whitespace followed by
    ``scheme://`` cannot be told from a second URI in free text; :func:`scrub`, which knows the URI, hides it."""
    if "://" not in text:
        return text
    try:
        out: list[str] = []
        pos = 0
        while m := _URI_START.search(text, pos):
            end = _uri_end(text, m.end())
            out += [text[pos:m.start()], redact(text[m.start():end])]  # redact() never raises
            pos = end
        out.append(text[pos:])
        return "".join(out)
    except Exception:  # never: but a redaction that raises would print what it was hiding
        return _URI_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every string in it redacted by :func:`redact_text`, keys
    included: a body built from it stays valid JSON, whatever its strings hold."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_ALL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, lines: bool = True) -> str:
    """``text`` safe for a terminal: control characters (ESC, BEL, CR, ...) and bidirectional overrides become
    ``\\x1b``-style escapes, so a name read from Redis cannot move the cursor, recolour or rewrite a line.
    Newlines and tabs are kept unless ``lines`` is False (a table cell, a one-line field)."""
    pattern = _CONTROL if lines else _CONTROL_ALL
    return pattern.sub(lambda m: ascii(m.group(0))[1:-1], text)


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (a 5000-character path stays one short line)."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


def scrub(text: str, uri: str) -> str:
    """``text`` with the URI's credentials hidden (also when FFmpeg echoes the URI or the bare password, and
    whatever other URI the text holds). Never raises, whatever the URI.

    A bare password is hidden wherever it appears when it has at least :data:`MIN_BARE_SECRET` characters; a
    shorter one only inside the URI (replacing every ``1`` of a message would hide the host, not a secret)."""
    out = text.replace(uri, redact(uri)) if uri else text
    for secret in sorted(uri_secrets(uri), key=len, reverse=True):
        if len(secret) >= MIN_BARE_SECRET:
            out = out.replace(secret, "***")
    return redact_text(out)
