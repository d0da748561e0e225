"""Workspace secrets: values a deployment's replicas get in their environment,
stored encrypted and never shown again after creation.

Values are Fernet tokens (AES-128-CBC with HMAC-SHA256, from `cryptography`)
under a keyring of one or more keys: the first encrypts, any decrypts
(`MultiFernet`). The keys come from `TRAMONTANE_SECRETS_KEY` (comma-separated,
newest first), which servers sharing one database must set alike; otherwise
from the file `secrets.key` in the Tramontane home, created 0600 with one key on
first use, which suits a single host. Rotation puts a new key first and
re-encrypts every stored value with it; `drop_old` then forgets the others.
A running server rereads the key file when it changes, so `tramontane secrets
rotate` needs no restart (an environment keyring does: the environment is read
once, at start).

Rows are workspace-owned, so erasing a workspace deletes its secrets with it.
Names and the fact of a change are audited; values never leave this module
except to a replica's environment (`resolve`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict, NotFound, Unavailable, Unprocessable
from ..store import Store, private_files
from ..tenancy import audit
from ..tenancy.audit import Actor
from .models import SecretRow

KEY_ENV = "TRAMONTANE_SECRETS_KEY"
KEY_FILE = "secrets.key"
# Values are for credentials and certificates, not data.
MAX_VALUE_BYTES = 64 * 1024


class SecretsKeyError(Unavailable):
    """The keyring cannot be read or does not decrypt a stored value: an
    operator's problem (wrong or lost key), not a client's (503). The message
    names no key."""

    def __init__(self, message: str):
        super().__init__(f"Secrets are unavailable: {message}", code="secrets_key_error")


@dataclass(frozen=True)
class SecretInfo:
    name: str
    created_at: datetime
    updated_at: datetime


class Keyring:
    """The Fernet keys, newest first, from the environment or the key file."""

    def __init__(self, home: Path):
        self.home = home
        # Read on first use, so a server that never stores a secret writes no key file.
        self._loaded: list[str] | None = None
        # The key file's identity when read: another process rotating rewrites it.
        self._file_stamp: tuple[int, int] | None = None

    @property
    def _keys(self) -> list[str]:
        if self._loaded is None or (not self.from_env and self._stamp() != self._file_stamp):
            self._loaded = self._load()
        return self._loaded

    @_keys.setter
    def _keys(self, keys: list[str]) -> None:
        self._loaded = keys
        self._file_stamp = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        """The key file's inode and change time: a rewrite (always by rename) changes both."""
        try:
            found = self.path.stat()
        except OSError:
            return None
        return found.st_ino, found.st_mtime_ns

    @property
    def from_env(self) -> bool:
        return bool(os.environ.get(KEY_ENV))

    @property
    def path(self) -> Path:
        return self.home / KEY_FILE

    def fernet(self) -> MultiFernet:
        try:
            return MultiFernet([Fernet(key) for key in self._keys])
        except ValueError as exc:
            raise SecretsKeyError(f"a secrets key is not a valid Fernet key: {exc}") from None

    def add_key(self) -> None:
        """Puts a new key first in the key file (an environment keyring is the
        operator's to change: set the new key first in it)."""
        if self.from_env:
            raise SecretsKeyError(f"the keys come from {KEY_ENV}: put a new key first there to rotate")
        self._keys = [Fernet.generate_key().decode(), *self._keys]
        self._write(self._keys)

    def drop_old(self) -> None:
        if not self.from_env:
            self._keys = self._keys[:1]
            self._write(self._keys)

    def _load(self) -> list[str]:
        configured = os.environ.get(KEY_ENV)
        if configured:
            keys = [k.strip() for k in configured.split(",") if k.strip()]
        else:
            if not self.path.exists():
                private_files.create_once(self.path, Fernet.generate_key().decode() + "\n")
            self._file_stamp = self._stamp()
            try:
                keys = [line.strip() for line in self.path.read_text().splitlines() if line.strip()]
            except OSError as exc:
                raise SecretsKeyError(f"cannot read the key file {self.path}: {exc.strerror}") from None
        if not keys:
            raise SecretsKeyError("no secrets key configured")
        return keys

    def _write(self, keys: list[str]) -> None:
        private_files.replace(self.path, "\n".join(keys) + "\n")


class SecretStore:
    def __init__(self, store: Store, keyring: Keyring):
        self.store = store
        self.keyring = keyring

    def create(self, workspace_id: str, name: str, value: str, actor: Actor) -> SecretInfo:
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise Unprocessable(f"A secret's value is at most {MAX_VALUE_BYTES} bytes", param="value")
        token = self.keyring.fernet().encrypt(value.encode()).decode()
        row = SecretRow(workspace_id=workspace_id, name=name, ciphertext=token)
        try:
            with self.store.write_session() as session:
                session.add(row)
                audit.record(session, "secret.create", actor, workspace_id=workspace_id, target=name)
        except IntegrityError:
            raise Conflict(f"A secret named '{name}' already exists", code="secret_exists") from None
        return SecretInfo(row.name, row.created_at, row.updated_at)

    def update(self, workspace_id: str, name: str, value: str, actor: Actor) -> SecretInfo:
        """Replaces the value; replicas started from now on get the new one."""
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise Unprocessable(f"A secret's value is at most {MAX_VALUE_BYTES} bytes", param="value")
        with self.store.write_session() as session:
            row = self._row(session, workspace_id, name)
            row.ciphertext = self.keyring.fernet().encrypt(value.encode()).decode()
            audit.record(session, "secret.update", actor, workspace_id=workspace_id, target=name)
            session.flush()
            return SecretInfo(row.name, row.created_at, row.updated_at)

    def list(self, workspace_id: str) -> list[SecretInfo]:
        with self.store.session() as session:
            rows = session.scalars(
                select(SecretRow).where(SecretRow.workspace_id == workspace_id).order_by(SecretRow.name)
            )
            return [SecretInfo(r.name, r.created_at, r.updated_at) for r in rows]

    def delete(self, workspace_id: str, name: str, actor: Actor) -> None:
        with self.store.write_session() as session:
            row = self._row(session, workspace_id, name)
            session.execute(delete(SecretRow).where(SecretRow.id == row.id))
            audit.record(session, "secret.delete", actor, workspace_id=workspace_id, target=name)

    def resolve(self, workspace_id: str, names: set[str]) -> dict[str, str]:
        """The values of `names`; a missing one is the caller's mistake (422), named."""
        if not names:
            return {}
        with self.store.session() as session:
            rows = {
                r.name: r.ciphertext
                for r in session.scalars(
                    select(SecretRow).where(SecretRow.workspace_id == workspace_id, SecretRow.name.in_(names))
                )
            }
        if missing := sorted(names - rows.keys()):
            raise Unprocessable(
                f"The spec references secrets that do not exist: {', '.join(missing)}",
                code="secret_not_found",
                param="env",
            )
        fernet = self.keyring.fernet()
        try:
            return {name: fernet.decrypt(token.encode()).decode() for name, token in rows.items()}
        except InvalidToken:
            raise SecretsKeyError("a stored secret does not decrypt with the configured keys") from None

    def rotate(self, actor: Actor, *, drop_old: bool = False) -> int:
        """Re-encrypts every stored value with the newest key (after adding one to a
        key file); returns how many. Old keys stay usable unless `drop_old`."""
        if not self.keyring.from_env:
            self.keyring.add_key()
        fernet = self.keyring.fernet()
        with self.store.write_session() as session:
            rows = list(session.scalars(select(SecretRow)))
            try:
                for row in rows:
                    row.ciphertext = fernet.rotate(row.ciphertext.encode()).decode()
            except InvalidToken:
                raise SecretsKeyError("a stored secret does not decrypt with the configured keys") from None
            audit.record(session, "secrets.rotate", actor, details={"count": len(rows)})
        if drop_old:
            self.keyring.drop_old()
        return len(rows)

    @staticmethod
    def _row(session: Session, workspace_id: str, name: str) -> SecretRow:
        row = session.scalars(
            select(SecretRow).where(SecretRow.workspace_id == workspace_id, SecretRow.name == name)
        ).one_or_none()
        if row is None:
            raise NotFound(f"No secret named '{name}'", code="secret_not_found")
        return row
