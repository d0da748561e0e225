"""Console sessions in the database, without a server: expiry, sign-out, one key's
sessions ended together, the cap, survival across a restart (a new store on the
same database), and no usable secret in the database."""

from pathlib import Path

import pytest
from sqlalchemy import select

from tramontane.console.sessions import ConsoleSessionRow, SessionStore, tokens_match
from tramontane.store import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(tmp_path: Path):
    store = open_store(f"sqlite:///{tmp_path / 'console.db'}")
    yield store
    store.close()


def test_a_session_expires_when_idle_and_at_its_lifetime(database):
    clock = Clock()
    store = SessionStore(database, idle_s=60, lifetime_s=300, clock=clock)
    session_id, session = store.create("tmt_k_secret", "k")
    assert store.get(session_id).key == "tmt_k_secret"
    clock.now += 59
    assert store.get(session_id) is not None  # used: the idle clock restarts
    clock.now += 59
    assert store.get(session_id) is not None
    clock.now += 61
    assert store.get(session_id) is None  # idle too long
    assert store.get(session_id) is None

    session_id, _ = store.create("tmt_k_secret", "k")
    for _ in range(7):
        clock.now += 50
        store.get(session_id)
    assert store.get(session_id) is None  # used all along, but past its lifetime


def test_sign_out_and_ending_a_keys_sessions(database):
    store = SessionStore(database)
    first, _ = store.create("key-a", "a")
    second, _ = store.create("key-a", "a")
    other, _ = store.create("key-b", "b")
    store.end(first)
    assert store.get(first) is None and store.get(second) is not None
    assert store.end_key("a") == 1
    assert store.get(second) is None and store.get(other) is not None
    assert store.get(None) is None and store.get("forged") is None


def test_sessions_are_capped(database):
    clock = Clock()
    store = SessionStore(database, max_sessions=3, clock=clock)
    ids = []
    for i in range(5):
        clock.now += 1
        ids.append(store.create(f"key-{i}", str(i))[0])
    assert len(store) == 3
    assert store.get(ids[-1]) is not None and store.get(ids[0]) is None


def test_a_session_survives_a_restart_with_its_flash_and_reveal(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'console.db'}"
    first = open_store(url)
    sessions = SessionStore(first)
    session_id, session = sessions.create("tmt_live_key", "key1")
    session.flash.append(("info", "Deployment created"))
    session.reveal = {"key": "tmt_new_secret", "workspace_id": "ws"}
    sessions.save(session)
    first.close()

    second = open_store(url)  # a new process on the same database
    try:
        restored = SessionStore(second).get(session_id)
        assert restored is not None
        assert (restored.key, restored.key_id, restored.csrf_token) == ("tmt_live_key", "key1", session.csrf_token)
        assert restored.flash == [("info", "Deployment created")] and restored.reveal["key"] == "tmt_new_secret"
        with second.session() as db:
            (row,) = db.scalars(select(ConsoleSessionRow)).all()
        # Neither the cookie's value, nor the API key, nor the new key's secret is in the database.
        stored = repr((row.id, row.sealed_key, row.sealed_reveal, row.flash))
        assert session_id not in stored and "tmt_live_key" not in stored and "tmt_new_secret" not in stored
    finally:
        second.close()


def test_tokens_match():
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd") and not tokens_match("abc", None) and not tokens_match("abc", "")


def test_a_signed_in_browser_stays_signed_in_across_a_server_restart(tmp_path: Path):
    """Two servers, one after the other, on the same home and database: the cookie
    the first one set opens pages on the second."""
    from console_helpers import Platform
    from live_app import serve_in_thread

    from tramontane.inference import ModelRegistry
    from tramontane.platform.app import create_app
    from tramontane.tenancy import Tenancy

    def server():
        tenancy = Tenancy.open(f"sqlite:///{tmp_path / 'tramontane.db'}", home=tmp_path)
        return tenancy, create_app(ModelRegistry(), tenancy)

    tenancy, app = server()
    admin_key = tenancy.bootstrap_admin_key()
    with serve_in_thread(app) as url:
        client = Platform(url, tenancy, admin_key).session(admin_key)
        cookies = dict(client.cookies)
        client.close()
    tenancy.close()

    tenancy, app = server()
    try:
        with serve_in_thread(app) as url:
            import httpx

            with httpx.Client(base_url=url, cookies=cookies, follow_redirects=False, timeout=30) as browser:
                page = browser.get("/usage")
                assert page.status_code == 200, page.headers.get("location")
                browser.cookies.clear()
                assert browser.get("/usage").status_code == 303  # without the cookie: to sign-in
    finally:
        tenancy.close()
