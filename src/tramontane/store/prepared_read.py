"""A SELECT compiled once and run straight on the driver: for the few reads that
every request makes (the API key's row).

Running a Core statement through a SQLAlchemy `Connection` costs ~0.2 ms of CPU on
this project's 2-core reference machine, four times the driver's own work: a
connection object, a transaction with its events, an execution context and a result
proxy per call. Here SQLAlchemy still writes the SQL for the dialect and supplies
each column type's bind and result processors; a call checks a connection out of
the same pool, runs the SQL with one cursor and hands the connection back."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Select
from sqlalchemy.exc import InvalidRequestError


def _result_processor(column_type: Any, dialect: Any) -> Callable[[Any], Any] | None:
    try:
        return column_type.dialect_impl(dialect).result_processor(dialect, None)
    except (TypeError, InvalidRequestError):
        # Numeric types choose by the driver's type code, known only after a query
        # runs; every driver hands a float column over as a Python float already.
        return None


class PreparedRead:
    """`statement` (a Core SELECT with named bind parameters), ready to run on `engine`."""

    def __init__(self, engine: Engine, statement: Select[Any]):
        self._engine = engine
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self._sql = str(compiled)
        self._compiled = compiled
        self._positions = compiled.positiontup if compiled.positional else None
        self._bind_processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._bind_processors[name] = processor
        columns = list(statement.selected_columns)
        self._result_processors = [_result_processor(c.type, dialect) for c in columns]
        self._row = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]

    def first(self, **values: Any) -> Any:
        """The first row for `values` (attributes named as the statement's columns), or None."""
        params = self._compiled.construct_params(values)
        for name, processor in self._bind_processors.items():
            params[name] = processor(params[name])
        args = tuple(params[name] for name in self._positions) if self._positions is not None else params
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, args)
                raw = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            # Back to the pool, which ends any transaction the driver opened.
            connection.close()
        if raw is None:
            return None
        return self._row(*(p(v) if p is not None else v for p, v in zip(self._result_processors, raw, strict=True)))
