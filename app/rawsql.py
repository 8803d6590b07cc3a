"""SQL plumbing of the callback path: Core statements compiled once, run on a DBAPI cursor.

The statements are SQLAlchemy Core constructs, compiled once per dialect and run on the DBAPI
cursor with the column types' own bind and result processors (``Prepared``): the same SQL and
type handling as ``Connection.execute``, without its per-execution machinery, which cost more
CPU than the database work itself (bench/results). ``RawTx`` is one write transaction on a
pooled DBAPI connection (``db_setup.write_transaction``) with those statements.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from .db_setup import lock_for_write


class Prepared:
    """A Core statement compiled once for one dialect, executed on a DBAPI cursor.

    Parameters go through ``construct_params`` and each bind's ``bind_processor`` (UTC
    datetimes, booleans, JSON), selected columns through their ``result_processor``, exactly
    as SQLAlchemy would. Statements whose compiled form needs Python-side column defaults are
    refused: every value must be given."""

    __slots__ = ("sql", "_compiled", "_order", "_binds", "_results", "_fields")

    def __init__(self, statement: Executable, dialect: Dialect, keys: tuple[str, ...] | None):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
        if compiled.insert_prefetch or compiled.update_prefetch:
            missing = [c.key for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
            raise ValueError(f"Prepared statements take every value explicitly: {missing}")
        self.sql = compiled.string
        self._compiled = compiled
        self._order = compiled.positiontup  # None for named paramstyles (psycopg)
        self._binds = [
            (name, process)
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        if hasattr(statement, "selected_columns"):
            columns = [(c.key, c.type) for c in statement.selected_columns]
        else:  # INSERT/UPDATE ... RETURNING
            columns = [
                (d["name"], d["type"])
                for d in getattr(statement, "returning_column_descriptions", ())
            ]
        self._fields = tuple(name for name, _type in columns)
        self._results = [
            (i, process)
            for i, (_name, type_) in enumerate(columns)
            if (process := type_.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def execute(self, cursor, params: dict[str, Any]):
        values = self._compiled.construct_params(params)
        for name, process in self._binds:
            values[name] = process(values[name])
        cursor.execute(
            self.sql, values if self._order is None else [values[name] for name in self._order]
        )
        return cursor

    def _record(self, row) -> Record:
        if self._results:
            row = list(row)
            for i, process in self._results:
                row[i] = process(row[i])
        return Record(zip(self._fields, row, strict=True))

    def first(self, cursor, params: dict[str, Any]) -> Record | None:
        row = self.execute(cursor, params).fetchone()
        return None if row is None else self._record(row)

    def all(self, cursor, params: dict[str, Any]) -> list[Record]:
        return [self._record(row) for row in self.execute(cursor, params).fetchall()]


class Record(dict):
    """A fetched row: columns by name as attributes."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_PREPARED: dict[tuple, Prepared] = {}


class RawTx:
    """A DBAPI connection inside a write transaction, and its dialect's prepared statements.

    ``statements`` counts the statements that completed: while it is 0 the server has done
    nothing for this transaction. ``webhooks``: the transaction's webhook subscriptions,
    once read (``webhooks.outbox``)."""

    __slots__ = ("cursor", "dialect", "statements", "webhooks", "_key")

    def __init__(self, dbapi_connection, dialect: Dialect):
        self.cursor = dbapi_connection.cursor()
        self.dialect = dialect
        self.statements = 0
        self.webhooks = None
        self._key = (dialect.name, dialect.driver, dialect.paramstyle)

    def prepared(self, statement: Executable, keys: tuple[str, ...] | None = None) -> Prepared:
        key = (statement, keys, *self._key)
        found = _PREPARED.get(key)
        if found is None:
            found = _PREPARED[key] = Prepared(statement, self.dialect, keys)
        return found

    def first(
        self, statement: Executable, params: dict[str, Any], keys: tuple[str, ...] | None = None
    ) -> Record | None:
        row = self.prepared(statement, keys).first(self.cursor, params)
        self.statements += 1
        return row

    def all(self, statement: Executable, params: dict[str, Any]) -> list[Record]:
        rows = self.prepared(statement).all(self.cursor, params)
        self.statements += 1
        return rows

    def run(self, statement: Executable, params: dict[str, Any]):
        """Execute with exactly ``params``' keys as the statement's values (INSERT/UPDATE)."""
        cursor = self.prepared(statement, tuple(params)).execute(self.cursor, params)
        self.statements += 1
        return cursor

    @classmethod
    def of(cls, target: Session | Connection | RawTx) -> RawTx:
        """The raw transaction of a session or connection, started as a writer."""
        if isinstance(target, RawTx):
            return target
        conn = lock_for_write(target)
        return cls(conn.connection.dbapi_connection, conn.dialect)
