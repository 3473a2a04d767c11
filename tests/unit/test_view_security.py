"""pipeline/view/security.py: who may bind where, and how tokens are read and compared."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.view.security import check_bind, credential_problem, is_loopback, request_token, token_matches


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)  # no token needed


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "192.168.0.10", "no-such-host.invalid"])
def test_other_hosts_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="serves the view beyond this machine: pass --token TOKEN or set "
                                          "DPTSTREAM_VIEW_TOKEN"):
        check_bind(host, None)
    check_bind(host, "a-long-token")


def test_empty_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="the view token is empty"):
        check_bind("127.0.0.1", "  ")


@pytest.mark.parametrize("token", ["x", "hunter2", "a" * 11])
def test_short_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match=r"the view token is too short \(\d+ characters\): use 12 or more"):
        check_bind("0.0.0.0", token)
    check_bind("0.0.0.0", token + "b" * 12)


def test_request_token_from_header_or_query() -> None:
    assert request_token("Bearer abc", None) == "abc"
    assert request_token("bearer  abc ", "q") == "abc"
    assert request_token("Basic abc", "q") == "q"  # not a bearer token: the query's, if any
    assert request_token(None, "q") == "q"
    assert request_token(None, None) is None and request_token("Bearer ", "") is None


def test_token_matches() -> None:
    assert token_matches("s3cret", "s3cret")
    assert not token_matches("s3cre", "s3cret") and not token_matches("s3cretX", "s3cret")
    assert not token_matches(None, "s3cret") and not token_matches("", "s3cret")
    assert token_matches("ünïcode", "ünïcode")


def test_a_credential_whose_bytes_are_not_utf8_is_malformed_never_an_exception() -> None:
    bad = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")  # what the HTTP server hands on
    assert credential_problem(bad, None) == "the Authorization header is not UTF-8"
    assert credential_problem(None, "\udcff") == "the token parameter is not UTF-8"
    assert credential_problem("Bearer ünïcode", "x") is None and credential_problem(None, None) is None
    assert not token_matches(request_token(bad, None), "s3cret-s3cret")
