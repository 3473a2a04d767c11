"""Redaction: a URI's password is hidden whole whatever characters it holds, in a URI, in free text and in
messages that echo the URI or the bare password; the host and path stay readable."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.redact import redact, redact_text, scrub, uri_secrets


@pytest.mark.parametrize("uri, shown", [
    ("rtsp://u:ab?cdSECRET@127.0.0.1:1/s", "rtsp://u:***@127.0.0.1:1/s"),
    ("rtsp://u:12?SECRET@127.0.0.1/s", "rtsp://u:***@127.0.0.1/s"),
    ("redis://:pa?ss#wordSECRET@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://:p@ss:w/rd@X9@h:6379/0", "redis://:***@h:6379/0"),
    ("rtsp://u:a/b?c#d@@e@cam:554/live/1?fps=5", "rtsp://u:***@cam:554/live/1?fps=5"),
    ("rtsp://u:#SECRET@cam/s", "rtsp://u:***@cam/s"),
    ("redis://:SECRET?password=x@h:6379/0", "redis://:***@h:6379/0"),
])
def test_a_password_holding_query_fragment_or_path_characters_is_hidden_whole(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    assert redact_text(f"cannot open '{uri}': refused") == f"cannot open '{shown}': refused"
    assert scrub(f"'{uri}': Server returned 401 Unauthorized", uri) == f"'{shown}': Server returned 401 Unauthorized"
    password = uri.partition("//")[2].partition(":")[2].rpartition("@")[0]
    assert scrub(f"the server said {password!r}", uri) == "the server said '***'"


def test_a_password_holding_whitespace_is_hidden_in_free_text() -> None:
    uri = "rtsp://u:pass word SECRET@cam/s"
    assert redact(uri) == "rtsp://u:***@cam/s"
    assert redact_text(f"camera at {uri}: 401") == "camera at rtsp://u:***@cam/s: 401"


@pytest.mark.parametrize("text", [
    '{"a": "rtsp://cam:554/s", "b": "redis://u:***@r/0"}',
    "sinks: redis://u:***@r1/0, redis://u:***@r2/0",
    "rtsp://cam/live?user=a@b.example",
    "rediss://writer@redis.example:6380/0 and http://cam:80/x",
])
def test_free_text_with_several_uris_keeps_what_is_not_secret(text: str) -> None:
    assert redact_text(text) == text


# -- every password: printable characters, percent escapes, non-ASCII -------------------------------------------
# Characters that end or split a URI are drawn often; the rest of Unicode too (not surrogates, not line breaks:
# free text is redacted line by line).
_SPECIAL = st.sampled_from([*"@:/?#%[]&=;'\" \t+!$*()^~`\\|<>{},.", "://", "%40", "%2F", "%3A", "%", "%zz"])
_ANY = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
_PERCENT = st.integers(0, 255).map(lambda b: f"%{b:02X}")
PASSWORDS = st.lists(st.one_of(_SPECIAL, _ANY, _PERCENT), min_size=1, max_size=24).map("".join)
USERS = st.from_regex(r"[A-Za-z0-9._-]{0,8}", fullmatch=True)
HOSTS = st.sampled_from(["127.0.0.1", "cam-7.example", "[::1]", "10.0.0.5:554", "[fe80::1]:8554", "h:6379"])
PATHS = st.from_regex(r"(/[A-Za-z0-9._-]{0,10}){0,3}(\?fps=[0-9]{1,2})?", fullmatch=True)
SCHEMES = st.sampled_from(["rtsp", "rtsps", "redis", "rediss", "http", "https", "rtmp"])


def _shown(scheme: str, user: str, host_path: str) -> set[str]:
    """What a redacted URI may look like: the password hidden, or the whole userinfo (an unparsable URL)."""
    return {f"{scheme}://{user}:***@{host_path}", f"{scheme}://***@{host_path}"}


def _leaks(out: str, password: str, visible: str) -> list[str]:
    """Runs of 4 password characters (as written or percent-decoded) in ``out`` that the visible text lacks."""
    runs = {p[i:i + 4] for p in (password, unquote(password)) for i in range(len(p) - 3)}
    return sorted(r for r in runs if r in out and r not in visible)


_SETTINGS = settings(max_examples=600, deadline=None, database=None,  # nothing written to the tree
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(scheme=SCHEMES, user=USERS, password=PASSWORDS, host=HOSTS, path=PATHS)
def test_no_password_survives_redact(scheme: str, user: str, password: str, host: str, path: str) -> None:
    uri = f"{scheme}://{user}:{password}@{host}{path}"
    out = redact(uri)
    assert out in _shown(scheme, user, host + path)
    assert not _leaks(out, password, f"{scheme}://{user}:***@{host}{path}")


@_SETTINGS
@given(scheme=SCHEMES, user=USERS, password=PASSWORDS, host=HOSTS, path=PATHS)
def test_no_password_survives_redact_text(scheme: str, user: str, password: str, host: str, path: str) -> None:
    # a password holding whitespace and then "x://" cannot be told from a second URI in free text (scrub, which
    # knows the URI, hides it: see below)
    assume(not (re.search(r"\s", password) and "://" in password))
    uri = f"{scheme}://{user}:{password}@{host}{path}"
    out = redact_text(f"camera 'cam' at {uri}: cannot open the stream (Connection refused)")
    assert any(out == f"camera 'cam' at {s}: cannot open the stream (Connection refused)"
               for s in _shown(scheme, user, host + path))
    assert not _leaks(out, password, f"camera 'cam' at {scheme}://{user}:***@{host}{path}: cannot open the stream "
                                     "(Connection refused)")


@_SETTINGS
@given(scheme=SCHEMES, user=USERS, password=PASSWORDS, host=HOSTS, path=PATHS)
def test_no_password_survives_scrub(scheme: str, user: str, password: str, host: str, path: str) -> None:
    uri = f"{scheme}://{user}:{password}@{host}{path}"
    frame = "[Errno 5] Input/output error: '{}' (server said: {})"
    visible = frame.format(f"{scheme}://{user}:***@{host}{path}", "***")
    # a password that is part of the words around it (or 3 characters or fewer) cannot be told from them
    assume(len(password) >= 4 and all(s not in visible for s in (password, unquote(password))))
    out = scrub(frame.format(uri, password), uri)
    assert not _leaks(out, password, visible)
    assert f"@{host}{path}'" in out


def test_uri_secrets_names_the_whole_password() -> None:
    assert "p@ss:w/rd@X9" in uri_secrets("redis://:p@ss:w/rd@X9@h:6379/0")
    assert "ab?cdSECRET" in uri_secrets("rtsp://u:ab?cdSECRET@127.0.0.1:1/s")


def test_a_health_body_stays_valid_json_and_hides_every_password() -> None:
    import json

    from pipeline.redact import redact_data

    detail = {"fatal": "camera 'a' at rtsp://cam:554/s broke", "streams": ["rtsp://u:pa ss?SECRET@b/s"],
              "note": "mail ops@example.com", "rtsp://x:SECRET2@c/s": 1}
    body = json.dumps(redact_data(detail))
    assert json.loads(body)["fatal"] == detail["fatal"] and "SECRET" not in body
    assert json.loads(body)["streams"] == ["rtsp://u:***@b/s"]


def test_printable_escapes_what_would_drive_a_terminal() -> None:
    from pipeline.redact import printable

    assert printable("w\x1b[31mRED\x07\r\u202eabc\x9b") == "w\\x1b[31mRED\\x07\\r\\u202eabc\\x9b"
    assert printable("a\tb\nc") == "a\tb\nc" and printable("a\tb\nc", lines=False) == "a\\tb\\nc"
    assert printable("ünïcode ☃ 日本") == "ünïcode ☃ 日本"
