"""API key lifecycle: shown once, hashed at rest, revocation and expiry at once."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tenancy_helpers import make_tenant

from tramontane.errors import Unauthorized
from tramontane.platform.schema import metadata
from tramontane.store import ApiKey, AuditEvent, Store
from tramontane.store.types import utcnow
from tramontane.tenancy import Capability, Tenancy
from tramontane.tenancy.keys import parse_key
from tramontane.tenancy.pepper import PEPPER_ENV, load_pepper

ALL_TABLES = metadata()  # the store's tables and every feature's


def _all_text(store: Store) -> str:
    """Every value of every table, as text: what a stolen database would reveal."""
    with store.read() as connection:
        return "\n".join(
            repr(tuple(row)) for table in ALL_TABLES.sorted_tables for row in connection.execute(table.select())
        )


def test_key_shape_and_hash_at_rest(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    assert tenant.key.startswith(f"tmt_{tenant.key_id}_")
    key_id, secret = parse_key(tenant.key) or ("", "")
    with tenancy.store.session() as session:
        row = session.get(ApiKey, tenant.key_id)
        assert row is not None
        expected = hmac.new(tenancy.pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).hexdigest()
        assert row.secret_hash == expected
    stored = _all_text(tenancy.store)
    assert secret not in stored and tenant.key not in stored
    assert tenant.key_id in stored


def test_plaintext_never_reaches_the_sqlite_file(tmp_path: Path) -> None:
    tenancy = Tenancy.open(f"sqlite:///{tmp_path / 'db.sqlite'}", home=tmp_path)
    tenant = make_tenant(tenancy, "a")
    tenancy.authenticate(f"Bearer {tenant.key}")
    tenancy.store.checkpoint()
    _, secret_text = parse_key(tenant.key) or ("", "")
    secret = secret_text.encode()
    assert len(secret) == 43
    for path in tmp_path.glob("db.sqlite*"):
        assert secret not in path.read_bytes(), path
    tenancy.close()


def test_authenticate_returns_the_principal(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a", capabilities=frozenset({Capability.INFERENCE, Capability.SANDBOX}))
    principal = tenancy.authenticate(f"Bearer {tenant.key}")
    assert (principal.key_id, principal.workspace_id) == (tenant.key_id, tenant.workspace_id)
    assert principal.capabilities == {Capability.INFERENCE, Capability.SANDBOX}
    assert principal.key_prefix == f"tmt_{tenant.key_id}"
    assert not principal.platform_admin


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_api_key"),
        ("Basic abc", "missing_api_key"),
        ("Bearer sk-not-ours", "invalid_api_key"),
        ("Bearer tmt_0123456789abcdef_" + "x" * 43, "invalid_api_key"),
    ],
)
def test_bad_headers_are_401(tenancy: Tenancy, header: str | None, code: str) -> None:
    with pytest.raises(Unauthorized) as failure:
        tenancy.authenticate(header)
    assert failure.value.code == code


def test_wrong_secret_is_401_and_audited_without_secret(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a")
    forged = f"tmt_{tenant.key_id}_" + "A" * 43
    with pytest.raises(Unauthorized) as failure:
        tenancy.authenticate(f"Bearer {forged}", where="POST /v1/x")
    assert failure.value.code == "invalid_api_key"
    with tenancy.store.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.failure")).one()
        assert (event.actor, event.workspace_id, event.target) == (
            f"tmt_{tenant.key_id}",
            tenant.workspace_id,
            "POST /v1/x",
        )
        assert event.details == {"reason": "wrong_secret"}
    assert "A" * 43 not in _all_text(tenancy.store)


def test_revocation_takes_effect_on_the_next_request_in_every_process(tenancy: Tenancy, store: Store) -> None:
    tenant = make_tenant(tenancy, "a")
    # A second Tenancy over the same database stands for a second server process.
    other = Tenancy(store, home=tenancy.home, pepper=tenancy.pepper)
    other.authenticate(f"Bearer {tenant.key}")
    with tenancy.store.session() as session:
        key = session.get(ApiKey, tenant.key_id)
        assert key is not None
        key.revoked_at = utcnow()
    for server in (tenancy, other):
        with pytest.raises(Unauthorized) as failure:
            server.authenticate(f"Bearer {tenant.key}")
        assert failure.value.code == "api_key_revoked"


def test_expiry_takes_effect_at_once(tenancy: Tenancy) -> None:
    tenant = make_tenant(tenancy, "a", expires_at=utcnow() + timedelta(hours=1))
    tenancy.authenticate(f"Bearer {tenant.key}")
    with tenancy.store.session() as session:
        key = session.get(ApiKey, tenant.key_id)
        assert key is not None
        key.expires_at = utcnow() - timedelta(seconds=1)
    with pytest.raises(Unauthorized) as failure:
        tenancy.authenticate(f"Bearer {tenant.key}")
    assert failure.value.code == "api_key_expired"


def test_bootstrap_admin_key_is_issued_once(tenancy: Tenancy) -> None:
    key = tenancy.bootstrap_admin_key()
    assert key is not None and key.startswith("tmt_")
    assert tenancy.bootstrap_admin_key() is None
    principal = tenancy.authenticate(f"Bearer {key}")
    assert principal.platform_admin and principal.can(Capability.ADMIN) and principal.can(Capability.INFERENCE)


def test_pepper_from_env_or_a_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PEPPER_ENV, raising=False)
    first = load_pepper(tmp_path)
    assert load_pepper(tmp_path) == first and len(first) == 64
    assert (tmp_path / "key-pepper").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(PEPPER_ENV, "p" * 40)
    assert load_pepper(tmp_path) == b"p" * 40
    monkeypatch.setenv(PEPPER_ENV, "short")
    with pytest.raises(ValueError):
        load_pepper(tmp_path)
