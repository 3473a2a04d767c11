"""Who may look: loopback binds are open, any other bind needs a token (bearer header or ``?token=``)."""

from __future__ import annotations

import hmac
import ipaddress
import socket

from pipeline.config import ConfigError

TOKEN_ENV = "DPTSTREAM_VIEW_TOKEN"


def is_loopback(host: str) -> bool:
    """True when ``host`` only ever means this machine (127.0.0.0/8, ::1, or a name resolving only there).
    ``""`` and ``0.0.0.0`` / ``::`` are every interface: not loopback."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addrs)


MIN_TOKEN = 12  # characters; a guessable token is no protection beyond this machine


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token (one line, a usage error)."""
    if token is not None and not token.strip():
        raise ConfigError(f"the view token is empty: pass --token TOKEN or set {TOKEN_ENV} to a non-empty value")
    if token is not None and len(token) < MIN_TOKEN:
        raise ConfigError(f"the view token is too short ({len(token)} characters): use {MIN_TOKEN} or more, e.g. "
                          "`openssl rand -hex 16`")
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host or '(all interfaces)'} serves the view beyond this machine: pass "
                          f"--token TOKEN or set {TOKEN_ENV} (or bind 127.0.0.1)")


def credential_problem(authorization: str | None, query_token: str | None) -> str | None:
    """Why the credential a request carries is malformed (its bytes are not UTF-8, which the HTTP server hands on
    as lone surrogates), or None. A malformed credential is refused like a wrong one."""
    for where, value in (("the Authorization header", authorization), ("the token parameter", query_token)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where} is not UTF-8"
    return None


def request_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a request carries: ``Authorization: Bearer TOKEN`` first, else ``?token=TOKEN``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (the time taken does not tell how much of a guess was right)."""
    if given is None:
        return False
    # surrogateescape: a header's bytes that are not UTF-8 compare as those bytes (never an exception)
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))
