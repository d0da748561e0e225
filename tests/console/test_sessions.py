"""Console sessions, without a server: expiry, sign-out, one key's sessions ended together."""

from tramontane.console.sessions import SessionStore, tokens_match


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_expires_when_idle_and_at_its_lifetime():
    clock = Clock()
    store = SessionStore(idle_s=60, lifetime_s=300, clock=clock)
    session_id, session = store.create("tmt_k_secret", "k")
    assert store.get(session_id) is session
    clock.now += 59
    assert store.get(session_id) is session  # used: the idle clock restarts
    clock.now += 59
    assert store.get(session_id) is session
    clock.now += 61
    assert store.get(session_id) is None  # idle too long
    assert store.get(session_id) is None

    session_id, _ = store.create("tmt_k_secret", "k")
    for _ in range(7):
        clock.now += 50
        store.get(session_id)
    assert store.get(session_id) is None  # used all along, but past its lifetime


def test_sign_out_and_ending_a_keys_sessions():
    store = SessionStore()
    first, _ = store.create("key-a", "a")
    second, _ = store.create("key-a", "a")
    other, _ = store.create("key-b", "b")
    store.end(first)
    assert store.get(first) is None and store.get(second) is not None
    assert store.end_key("a") == 1
    assert store.get(second) is None and store.get(other) is not None
    assert store.get(None) is None and store.get("forged") is None


def test_sessions_are_stored_under_a_digest_and_capped():
    store = SessionStore(max_sessions=3)
    ids = [store.create(f"key-{i}", str(i))[0] for i in range(5)]
    assert len(store) == 3
    assert all(session_id not in store._sessions for session_id in ids)  # noqa: SLF001
    assert store.get(ids[-1]) is not None and store.get(ids[0]) is None


def test_tokens_match():
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd") and not tokens_match("abc", None) and not tokens_match("abc", "")
