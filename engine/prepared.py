"""Prepared statements: the tick's own SQL, compiled once and run on the DBAPI connection.

Through `Connection.execute`, SQLAlchemy Core spends ~65 µs of CPU on every statement
(cache key, execution context, result object) around the driver's ~5 µs. On the tick
path that was a quarter of a saturated worker's CPU (py-spy, see benchmarks/README.md).
A `Prepared` keeps the Core statement as the one source of its SQL and lets SQLAlchemy
compile it once per dialect, with SQLAlchemy's own bind and result processors, so values
are written and read back exactly as through Core; only the per-call machinery is
skipped. Driver errors are raised as SQLAlchemy's exceptions (`IntegrityError`, ...).

Only for the few statements every tick runs; everything else stays on Core and the ORM.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.types import TypeEngine

Processor = Callable[[Any], Any]


@dataclass(slots=True)
class _Compiled:
    """A statement as one dialect runs it."""

    sql: str
    order: tuple[str, ...] | None  # bind names in positional order; None: by name
    fixed: Mapping[str, Any]  # values the statement carries itself (literals)
    binds: tuple[tuple[str, Processor], ...]
    types: tuple[TypeEngine[Any], ...]  # of the columns it returns, for this dialect
    keys: tuple[str, ...]  # the names of those columns
    record: Callable[..., tuple[Any, ...]]  # a named tuple of them: `row.status`
    # Result processors, set on first execution: some depend on the driver's column
    # type codes (cursor.description), e.g. PostgreSQL's numerics.
    results: tuple[Processor | None, ...] | None = None


class Prepared:
    """A Core statement, compiled once per dialect, run with `Session` methods.

    `columns` names the columns an INSERT is given on every call (the others keep
    their server defaults).
    """

    def __init__(self, statement: ClauseElement, *, columns: Sequence[str] | None = None):
        self.statement = statement
        self.columns = list(columns) if columns is not None else None
        self._by_dialect: dict[str, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        """The statement for `dialect` (compiled on first use; threads may race to
        compile it, each result is the same)."""
        key = f"{dialect.name}+{dialect.driver}"
        found = self._by_dialect.get(key)
        if found is None:
            found = self._by_dialect[key] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = self.statement.compile(
            dialect=dialect,
            column_keys=self.columns,
            compile_kwargs={"render_postcompile": True},
        )
        binds = compiled.binds
        processors = []
        for name, bind in binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors.append((name, processor))
        fixed = {name: bind.value for name, bind in binds.items() if not bind.required}
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            # Column defaults Core would compute per execution; a constant one is fixed.
            default = column.onupdate if column in compiled.update_prefetch else column.default
            if default is None or not default.is_scalar:
                raise ValueError(f"{self.statement}: give {column.key} on every call")
            fixed[column.key] = default.arg
        returned = getattr(self.statement, "exported_columns", ())
        return _Compiled(
            sql=str(compiled),
            order=tuple(compiled.positiontup) if compiled.positiontup is not None else None,
            fixed=fixed,
            binds=tuple(processors),
            types=tuple(col.type.dialect_impl(dialect) for col in returned),
            keys=tuple(col.key for col in returned),
            record=namedtuple("Record", [col.key for col in returned], rename=True),
        )


class Session:
    """One pooled DBAPI connection, for `Prepared` statements."""

    def __init__(self, db: Engine, raw: Any) -> None:
        self._db = db
        self._dialect = db.dialect
        self._raw = raw

    def rows(self, prepared: Prepared, params: Mapping[str, Any]) -> list[Any]:
        """Every row the statement returns, as named tuples (`row.status`)."""
        compiled, cursor = self._execute(prepared, params)
        try:
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            results = self._results(compiled, cursor)
        finally:
            cursor.close()
        return [_record(compiled, results, row) for row in rows]

    def mappings(self, prepared: Prepared, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row the statement returns, by column name."""
        keys = prepared.compiled(self._dialect).keys
        return [dict(zip(keys, row, strict=True)) for row in self.rows(prepared, params)]

    def first(self, prepared: Prepared, params: Mapping[str, Any]) -> Any:
        """The first row the statement returns (a named tuple), or None."""
        compiled, cursor = self._execute(prepared, params)
        try:
            row: tuple[Any, ...] | None = cursor.fetchone()
            if row is not None:
                cursor.fetchall()  # a DML's RETURNING is complete only once read to the end
            results = self._results(compiled, cursor)
        finally:
            cursor.close()
        return None if row is None else _record(compiled, results, row)

    def scalar(self, prepared: Prepared, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = self.first(prepared, params)
        return None if row is None else row[0]

    def run(self, prepared: Prepared, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; returns how many rows it changed."""
        _, cursor = self._execute(prepared, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def _results(self, compiled: _Compiled, cursor: Any) -> tuple[Processor | None, ...]:
        if compiled.results is None:
            found = tuple(
                kind.result_processor(self._dialect, column[1])
                for kind, column in zip(compiled.types, cursor.description, strict=True)
            )
            compiled.results = found if any(found) else ()
        return compiled.results

    def _execute(self, prepared: Prepared, params: Mapping[str, Any]) -> tuple[_Compiled, Any]:
        compiled = prepared.compiled(self._dialect)
        values = {**compiled.fixed, **params}
        for name, processor in compiled.binds:
            values[name] = processor(values[name])
        bound: Any = values if compiled.order is None else [values[n] for n in compiled.order]
        cursor = self._raw.cursor()
        try:
            cursor.execute(compiled.sql, bound)
        except BaseException as exc:
            cursor.close()
            raise self._wrapped(exc, compiled.sql, bound) from exc
        return compiled, cursor

    def _wrapped(self, exc: BaseException, sql: str, bound: Any) -> BaseException:
        dbapi = self._dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            return exc
        lost = self._dialect.is_disconnect(exc, self._raw.driver_connection, None)
        if lost:
            # The server went away (restarted, or dropped an idle connection): this
            # connection is discarded, and so are the pool's others, which were opened
            # to the same server, as SQLAlchemy's own execute path does.
            self._raw.invalidate(exc)
            self._db.dispose(close=False)
        return DBAPIError.instance(
            sql, bound, exc, dbapi.Error, dialect=self._dialect, connection_invalidated=lost
        )

    def commit(self) -> None:
        """Commit the connection's transaction."""
        try:
            self._raw.commit()
        except BaseException as exc:
            raise self._wrapped(exc, "COMMIT", None) from exc


def _record(
    compiled: _Compiled, processors: tuple[Processor | None, ...], row: tuple[Any, ...]
) -> tuple[Any, ...]:
    if processors:
        return compiled.record(
            *(v if p is None else p(v) for p, v in zip(processors, row, strict=True))
        )
    return compiled.record(*row)


def _checkout(db: Engine) -> Any:
    """A pooled DBAPI connection. A failed connect is raised as SQLAlchemy's exception,
    as through `Engine.connect` (the pool itself raises the driver's own)."""
    dbapi = db.dialect.loaded_dbapi
    try:
        return db.raw_connection()
    except dbapi.Error as exc:
        raise DBAPIError.instance(None, None, exc, dbapi.Error, dialect=db.dialect) from exc


@contextmanager
def reading(db: Engine) -> Iterator[Session]:
    """A pooled connection for reads; returned to the pool afterwards.

    On PostgreSQL the reads run in autocommit: no BEGIN before them and no ROLLBACK
    after, two round trips of the ~3 a single read cost. Each statement sees committed
    data as of its start either way (READ COMMITTED), so no reader sees less."""
    raw = _checkout(db)
    driver = raw.driver_connection
    autocommit = db.dialect.name == "postgresql" and driver is not None
    try:
        if autocommit:
            driver.autocommit = True
        yield Session(db, raw)
    finally:
        if autocommit and not driver.closed:
            driver.autocommit = False
        raw.close()


@contextmanager
def transaction(db: Engine) -> Iterator[Session]:
    """A pooled connection in one transaction: committed when the block ends, rolled
    back when it raises."""
    raw = _checkout(db)
    try:
        session = Session(db, raw)
        yield session
        session.commit()
    finally:
        raw.close()  # the pool rolls back whatever was not committed
