"""Opening the database: URL resolution, engine set-up and sessions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .migrate import upgrade
from .prepared_read import PreparedRead

URL_ENV = "TRAMONTANE_DATABASE_URL"
HOME_ENV = "TRAMONTANE_HOME"

# A custom execution option: transactions opened through `Store.write*` take
# SQLite's write lock up front (BEGIN IMMEDIATE). A deferred transaction that
# reads and then writes can fail at once with "database is locked" when
# another process wrote in between; an immediate one waits its turn instead.
_BEGIN_OPTION = "tramontane_sqlite_begin"


def tramontane_home() -> Path:
    """Where Tramontane keeps its state: `$TRAMONTANE_HOME`, else `~/.tramontane`."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".tramontane").expanduser()


def database_url(url: str | None = None) -> str:
    """`url`, else `$TRAMONTANE_DATABASE_URL`, else an SQLite file in the home directory."""
    chosen = url or os.environ.get(URL_ENV)
    if not chosen:
        return f"sqlite:///{tramontane_home() / 'tramontane.db'}"
    parsed = make_url(chosen)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database.startswith("~"):
        return parsed.set(database=str(Path(parsed.database).expanduser())).render_as_string(hide_password=False)
    return chosen


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below emit BEGIN, instead of the driver
        # guessing when a transaction starts (it would skip DDL and reads).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer. NORMAL sync is durable across
        # application crashes, and in WAL mode it only risks the last commits on
        # power loss. secure_delete zeroes deleted rows so erasure leaves no bytes.
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL", "secure_delete=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        # Straight to the driver: every request's key check opens a transaction, and
        # SQLAlchemy's statement machinery costs more than the BEGIN itself.
        connection.connection.driver_connection.execute(f"BEGIN {mode}")


class Store:
    """An engine plus session factories over one database."""

    def __init__(self, url: str | None = None):
        self.url = database_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                raise ValueError("the store needs an SQLite file, not an in-memory database")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # 30 s busy timeout: writers queue behind each other instead of failing.
            self.engine = create_engine(self.url, connect_args={"timeout": 30})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        self._write_engine = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(self._write_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        return Path(make_url(self.url).database or "") if self.is_sqlite else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session in a transaction, committed on success: for reads. One that
        writes must be a `write_session`, or on SQLite it can fail at its first write."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """Like `session`, holding SQLite's write lock from the start."""
        with self._write_sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A Core connection for hot-path reads (cheaper than an ORM session)."""
        with self.engine.begin() as connection:
            yield connection

    def prepare(self, statement: Select[Any]) -> PreparedRead:
        """`statement` compiled once, to run straight on the driver: for reads on every
        request's path, where a `read()` connection costs more than the query."""
        return PreparedRead(self.engine, statement)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A Core connection in a write transaction, committed on success."""
        with self._write_engine.begin() as connection:
            yield connection

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log back into the file and empty it, so deleted
        rows' old pages do not linger in the -wal file."""
        if not self.is_sqlite:
            return
        # Outside any transaction: a checkpoint cannot complete inside one.
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        finally:
            raw.close()

    def close(self) -> None:
        self.engine.dispose()


def open_store(url: str | None = None, *, migrate: bool = True) -> Store:
    """Opens the database and, by default, brings its schema to the newest migration."""
    store = Store(url)
    if migrate:
        upgrade(store)
    return store
