"""Hiding secrets in URIs and text: a URI's password and secret-looking query values become ``***``.

Every message that can quote a URI (config errors, logs, metrics labels, web pages) passes through here."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


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


def _secret_spans(uri: str) -> list[tuple[int, int]]:
    """Where the secrets of ``uri`` lie: the userinfo's password (the whole userinfo when the URL cannot be
    parsed) and the values of secret-looking query parameters. Empty for anything without ``scheme://``."""
    m = _SCHEME_RE.match(uri)
    if not m:
        return []
    start = m.end()
    rest = uri[start:]
    try:
        urlsplit(uri)
        parsed = True
    except ValueError:  # e.g. an unbalanced "[": the generic syntax only
        parsed = False
    spans: list[tuple[int, int]] = []
    after = start  # the query is looked for after the userinfo
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:
        authority_end = len(netloc)
    else:
        # no "@" before the first "/": a raw "/" in the password may have ended the parser's authority early
        authority_end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, authority_end)
    if at >= 0 and ("@" in netloc or ":" in rest[:at]):
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

    The userinfo ends at the *last* ``@`` of the authority, so a password holding ``@``, ``:``, ``/``, ``%40`` or
    any other character is hidden whole (a raw ``/`` in a password would end the authority for a URL parser:
    then everything up to the last ``@`` before the query counts as userinfo, erring on the side of hiding).
    A user name without a password (``rediss://writer@host``) is kept; when the URL cannot be parsed (an
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
        found = {uri[a:b] for a, b in _secret_spans(uri)}
        found |= {raw.partition(":")[2] for raw in found}  # the password of a whole hidden userinfo
        return {s for raw in found for s in (raw, unquote(raw)) if s}
    except Exception:
        return set()


def redact_text(text: str) -> str:
    """``text`` with every URI in it redacted (for log lines and error messages of any origin). Never raises."""
    if "://" not in text:
        return text
    return _URI_IN_TEXT.sub(lambda m: redact(m.group(0)), text)  # redact() never raises


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (a 5000-character path stays one short line)."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


def scrub(text: str, uri: str) -> str:
    """``text`` with the URI's credentials hidden (also when FFmpeg echoes the URI or the bare password, and
    whatever other URI the text holds). Never raises, whatever the URI."""
    out = text.replace(uri, redact(uri)) if uri else text
    for secret in sorted(uri_secrets(uri), key=len, reverse=True):
        out = out.replace(secret, "***")
    return redact_text(out)
