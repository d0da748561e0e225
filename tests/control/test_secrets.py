"""Workspace secrets: encrypted at rest, never shown again, injected into replicas'
environment, refused when missing, rotated, and erased with the workspace."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from control_helpers import Env, spec
from cryptography.fernet import Fernet
from sqlalchemy import select

from tramontane.control.backends import LocalBackend, secret_files
from tramontane.control.models import SecretRow
from tramontane.control.secrets import KEY_ENV, KEY_FILE, Keyring, SecretStore
from tramontane.control.spec import DeploymentSpec
from tramontane.errors import Unprocessable
from tramontane.store import AuditEvent
from tramontane.tenancy.audit import CLI

VALUE = "s3cr3t-Value-that-must-not-leak-9f27"


async def test_secret_reaches_the_replica_and_nothing_else(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    created = await env.client.post("/v1/secrets", json={"name": "DB_PASSWORD", "value": VALUE})
    assert created.status_code == 201, created.text
    assert VALUE not in created.text and created.json()["name"] == "DB_PASSWORD"
    assert (await env.client.post("/v1/secrets", json={"name": "DB_PASSWORD", "value": "x"})).status_code == 409

    listed = await env.client.get("/v1/secrets")
    assert [s["name"] for s in listed.json()["data"]] == ["DB_PASSWORD"]
    assert VALUE not in listed.text

    body = spec("uses-secret", env={"PASSWORD": {"secret": "DB_PASSWORD"}, "PLAIN": "visible"})
    deployed = await env.client.post("/v1/deployments", json=body)
    assert deployed.status_code == 201, deployed.text
    answer = await env.client.get("/serve/uses-secret/env", params={"name": "PASSWORD"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == VALUE
    plain = await env.client.get("/serve/uses-secret/env", params={"name": "PLAIN"})
    assert plain.json()["value"] == "visible"

    shown = await env.client.get("/v1/deployments/uses-secret")
    assert shown.json()["spec"]["env"]["PASSWORD"] == {"secret": "DB_PASSWORD"}
    for route in ("/v1/deployments", "/v1/deployments/uses-secret/revisions", "/v1/deployments/uses-secret/events"):
        assert VALUE not in (await env.client.get(route)).text, route
    assert VALUE not in caplog.text
    assert VALUE not in (await env.client.get("/v1/deployments/uses-secret/logs")).text
    with env.store.session() as session:
        details = [str((e.action, e.target, e.details)) for e in session.scalars(select(AuditEvent))]
        token = session.scalars(select(SecretRow.ciphertext)).one()
    assert any("secret.create" in d and "DB_PASSWORD" in d for d in details)
    assert not any(VALUE in d for d in details)
    assert VALUE not in token
    # Nor in the database's files, in any form the value was written.
    env.store.checkpoint()
    for path in env.home.glob("db.sqlite*"):
        assert VALUE.encode() not in path.read_bytes(), path

    # In use: deleting it would break the next replica start.
    in_use = await env.client.delete("/v1/secrets/DB_PASSWORD")
    assert in_use.status_code == 409 and "uses-secret" in in_use.json()["error"]["message"]
    assert (await env.client.delete("/v1/deployments/uses-secret")).status_code == 200
    assert (await env.client.delete("/v1/secrets/DB_PASSWORD")).status_code == 200
    assert (await env.client.get("/v1/secrets")).json()["data"] == []
    assert (await env.client.delete("/v1/secrets/DB_PASSWORD")).status_code == 404


async def test_a_missing_secret_refuses_the_spec_before_anything_starts(env: Env) -> None:
    body = spec("needs-missing", env={"TOKEN": {"secret": "nope"}})
    refused = await env.client.post("/v1/deployments", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "secret_not_found" and "nope" in refused.json()["error"]["message"]
    assert (await env.client.get("/v1/deployments")).json()["data"] == []

    assert (await env.client.post("/v1/deployments", json=spec("plain"))).status_code == 201
    update = await env.client.patch("/v1/deployments/plain", json={"env": {"TOKEN": {"secret": "nope"}}})
    assert update.status_code == 422, update.text
    revisions = (await env.client.get("/v1/deployments/plain/revisions")).json()["data"]
    assert [r["number"] for r in revisions] == [1]


async def test_bad_secret_input_is_a_clear_4xx(env: Env) -> None:
    assert (await env.client.post("/v1/secrets", json={"name": "has space", "value": "x"})).status_code == 422
    big = await env.client.post("/v1/secrets", json={"name": "big", "value": "x" * (64 * 1024 + 1)})
    assert big.status_code == 422
    assert (await env.client.put("/v1/secrets/absent", json={"value": "x"})).status_code == 404


def test_key_file_is_private_and_rotation_reencrypts(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    home = env.home / "rotation"
    secrets = SecretStore(env.store, Keyring(home))
    secrets.create(env.workspace_id, "api-token", VALUE, CLI)
    key_file = home / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    with env.store.session() as session:
        before = session.scalars(select(SecretRow.ciphertext)).one()
    assert secrets.rotate(CLI) == 1
    with env.store.session() as session:
        after = session.scalars(select(SecretRow.ciphertext)).one()
    assert after != before
    assert len(key_file.read_text().split()) == 2 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Only the new key is needed from now on.
    secrets.rotate(CLI, drop_old=True)
    assert len(key_file.read_text().split()) == 1
    fresh = SecretStore(env.store, Keyring(home))
    assert fresh.resolve(env.workspace_id, {"api-token"}) == {"api-token": VALUE}


async def test_a_running_server_follows_a_rotation_and_a_bad_key_is_a_503(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert (await env.client.post("/v1/secrets", json={"name": "tok", "value": VALUE})).status_code == 201
    # `tramontane secrets rotate --drop-old`, run beside the server: the server's
    # keyring no longer holds the key that encrypts the values, until it rereads the file.
    assert SecretStore(env.store, Keyring(env.home)).rotate(CLI, drop_old=True) == 1
    assert env.plane.secrets.resolve(env.workspace_id, {"tok"}) == {"tok": VALUE}
    body = spec("after-rotation", env={"TOKEN": {"secret": "tok"}})
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    assert (await env.client.get("/serve/after-rotation/env", params={"name": "TOKEN"})).json()["value"] == VALUE

    (env.home / KEY_FILE).write_text("not a key\n")
    refused = await env.client.post("/v1/secrets", json={"name": "other", "value": "x"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "secrets_key_error", refused.text
    assert "not a key" not in refused.text


def test_key_from_the_environment(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, old)
    SecretStore(env.store, Keyring(tmp_path)).create(env.workspace_id, "k", VALUE, CLI)
    assert not (tmp_path / KEY_FILE).exists()
    # The operator puts a new key first, rotates, then drops the old one.
    monkeypatch.setenv(KEY_ENV, f"{new},{old}")
    SecretStore(env.store, Keyring(tmp_path)).rotate(CLI)
    monkeypatch.setenv(KEY_ENV, new)
    assert SecretStore(env.store, Keyring(tmp_path)).resolve(env.workspace_id, {"k"}) == {"k": VALUE}
    with pytest.raises(Unprocessable):
        SecretStore(env.store, Keyring(tmp_path)).resolve(env.workspace_id, {"k", "absent"})


async def test_erasing_the_workspace_erases_its_secrets(env: Env) -> None:
    assert (await env.client.post("/v1/secrets", json={"name": "gone", "value": VALUE})).status_code == 201
    env.tenancy.erase_workspace(env.workspace_id, CLI)
    with env.store.session() as session:
        assert session.scalars(select(SecretRow)).all() == []


async def test_a_secret_as_a_file_is_private_to_its_replica_and_goes_with_it(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert (await env.client.post("/v1/secrets", json={"name": "db", "value": VALUE})).status_code == 201
    body = spec("files", files={"db/password": {"secret": "db"}})
    deployed = await env.client.post("/v1/deployments", json=body)
    assert deployed.status_code == 201, deployed.text
    read = (await env.client.get("/serve/files/file", params={"path": "db/password"})).json()
    assert read["value"] == VALUE and read["mode"] == 0o400 and read["dir_mode"] == 0o700
    directory = Path(read["dir"])
    assert (directory / "db" / "password").stat().st_uid == os.getuid()
    # Not in the environment, the API, the replica's logs or the server's.
    assert (await env.client.get("/serve/files/env", params={"name": "db"})).json()["value"] is None
    shown = await env.client.get("/v1/deployments/files")
    assert shown.json()["spec"]["files"] == {"db/password": {"secret": "db"}} and VALUE not in shown.text
    assert VALUE not in (await env.client.get("/v1/deployments/files/logs")).text
    assert VALUE not in caplog.text
    in_use = await env.client.delete("/v1/secrets/db")
    assert in_use.status_code == 409 and "files" in in_use.json()["error"]["message"]

    # A replica that crashes is started again with a directory of its own; the old one goes.
    deployment = env.plane.get(env.workspace_id, "files")
    (replica,) = deployment.replicas.values()
    os.kill(replica.handle.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while directory.exists() or replica.restarts < 1 or not replica.ready:
        assert time.monotonic() < deadline, "the crashed replica's files stayed, or it did not restart"
        await asyncio.sleep(0.05)
    again = (await env.client.get("/serve/files/file", params={"path": "db/password"})).json()
    assert again["value"] == VALUE and Path(again["dir"]).exists()

    assert (await env.client.delete("/v1/deployments/files")).status_code == 200
    # Removed by a task that sees the process end, an instant after the stop.
    deadline = time.monotonic() + 10
    while Path(again["dir"]).exists():
        assert time.monotonic() < deadline, "the stopped replica's files stayed"
        await asyncio.sleep(0.02)


async def test_secret_file_paths_and_references_are_checked(env: Env) -> None:
    assert (await env.client.post("/v1/secrets", json={"name": "db", "value": VALUE})).status_code == 201
    for path in ("/run/secrets/db", "../db", "a/./b", "a//b", "a,b", "", "a/"):
        refused = await env.client.post("/v1/deployments", json=spec("bad", files={path: {"secret": "db"}}))
        assert refused.status_code == 422, (path, refused.text)
    nested = {"a": {"secret": "db"}, "a/b": {"secret": "db"}}
    assert (await env.client.post("/v1/deployments", json=spec("bad", files=nested))).status_code == 422
    missing = await env.client.post("/v1/deployments", json=spec("bad", files={"x": {"secret": "nope"}}))
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "secret_not_found"
    assert (await env.client.get("/v1/deployments")).json()["data"] == []


async def test_reaping_a_dead_planes_replica_removes_its_secret_files(tmp_path: Path) -> None:
    """A control plane SIGKILLed leaves its replicas and their files: the next one,
    reaping the replicas, removes the files too."""
    backend = LocalBackend()
    orphan = DeploymentSpec.model_validate(spec("orphan", files={"key": {"secret": "key"}}))
    handle = await backend.launch("rep_orphan", orphan, tmp_path / "orphan.log", {}, {"key": VALUE})
    try:
        [directory] = secret_files.directories_of("rep_orphan")
        assert (directory / "key").read_text() == VALUE
        assert backend.reap(handle.pid, handle.pid_start)
        assert not directory.exists()
    finally:
        await handle.stop(1.0)
        await backend.close()
    assert secret_files.directories_of("rep_orphan") == []
