"""The pieces of signed port links that need no server: the token's signature and
expiry, the secret's file, and how the credentials are taken off a request."""

from __future__ import annotations

import logging
import stat

import pytest

from tramontane.errors import Unauthorized
from tramontane.sandbox.port_links import (
    COOKIE,
    SECRET_ENV,
    SECRET_FILE,
    LinkSigner,
    RedactLinkTokens,
    _take_cookie_tokens,
    _take_query_tokens,
    load_secret,
)

SECRET = b"s" * 32


def test_a_token_opens_its_sandbox_port_until_it_expires() -> None:
    now = [1_000_000.0]
    signer = LinkSigner(SECRET, clock=lambda: now[0])
    token = signer.sign("abc123", 8000, "keyid", 1_000_060)
    assert signer.verify(token, "abc123", 8000).key_id == "keyid"
    for sandbox_id, port in (("abc124", 8000), ("abc123", 8001)):
        with pytest.raises(Unauthorized, match="not valid"):
            signer.verify(token, sandbox_id, port)
    with pytest.raises(Unauthorized, match="not valid"):
        LinkSigner(b"t" * 32).verify(token, "abc123", 8000)
    key_id, expires, mac = token.split(".")
    with pytest.raises(Unauthorized, match="not valid"):
        signer.verify(f"otherkey.{expires}.{mac}", "abc123", 8000)
    with pytest.raises(Unauthorized, match="malformed"):
        signer.verify(f"{key_id}.{expires}.{mac}.x", "abc123", 8000)
    now[0] = 1_000_060
    with pytest.raises(Unauthorized) as expired:
        signer.verify(token, "abc123", 8000)
    assert expired.value.code == "link_expired"


def test_the_secret_is_created_once_readable_by_its_owner_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = load_secret(tmp_path)
    assert len(first) == 64 and load_secret(tmp_path) == first
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    monkeypatch.setenv(SECRET_ENV, "x" * 40)
    assert load_secret(tmp_path) == b"x" * 40
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ValueError):
        load_secret(tmp_path)


def test_the_token_leaves_the_query_and_the_rest_stays_byte_for_byte() -> None:
    t1, t2 = "k1." + "1" * 10 + "." + "A" * 43, "k2.5." + "-" * 43
    query = f"a=%2F1&token={t1}&tokens=x&%74oken={t2}&b&token=jupyters-own".encode()
    assert _take_query_tokens(query) == (b"a=%2F1&tokens=x&b&token=jupyters-own", [t1, t2])
    assert _take_query_tokens(b"") == (b"", [])


def test_the_link_cookie_leaves_the_headers_and_other_cookies_stay() -> None:
    headers = [(b"host", b"h"), (b"cookie", f"a=1; {COOKIE}=t1".encode()), (b"cookie", f"{COOKIE}=t2".encode())]
    kept, tokens = _take_cookie_tokens(headers)
    assert kept == [(b"host", b"h"), (b"cookie", b"a=1")] and tokens == ["t1", "t2"]


def test_access_log_lines_never_show_a_token() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("1.2.3.4", "GET", "/v1/x/ports/80/?a=1&token=k.1.sig&b=2", "1.1", 200), None)  # fmt: skip
    assert RedactLinkTokens().filter(record)
    assert "k.1.sig" not in record.getMessage() and "token=[redacted]&b=2" in record.getMessage()
