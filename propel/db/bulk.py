"""Bulk statements on the hot ingest path, as driver SQL.

SQLAlchemy compiles a multi-row VALUES statement one bound parameter at a time,
which costs more than the database's own work at ingest volumes; these build the
SQL text once per shape and hand tuples straight to the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


@lru_cache(maxsize=64)
def _values_sql(table: str, columns: tuple[str, ...], rows: int, mark: str, tail: str) -> str:
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join([one] * rows) + tail)


def insert_ignore_returning(conn: Connection, table: str, columns: tuple[str, ...],
                            rows: Sequence[tuple], returning: str, chunk: int = 2000
                            ) -> list[Any]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING ``returning``: the values that were new."""
    out: list[Any] = []
    mark = _mark(conn)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        sql = _values_sql(table, columns, len(part), mark,
                          f" ON CONFLICT DO NOTHING RETURNING {returning}")
        params = tuple(value for row in part for value in row)
        out.extend(r[0] for r in conn.exec_driver_sql(sql, params).fetchall())
    return out


def insert_many(conn: Connection, table: str, columns: tuple[str, ...],
                rows: Sequence[tuple]) -> None:
    if rows:
        mark = _mark(conn)
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
               f"({', '.join([mark] * len(columns))})")
        conn.exec_driver_sql(sql, list(rows))


def upsert_many(conn: Connection, table: str, columns: tuple[str, ...], key: tuple[str, ...],
                rows: Sequence[tuple], changing: tuple[str, ...]) -> None:
    """INSERT … ON CONFLICT (``key``) DO UPDATE of the ``changing`` columns only: an
    index over a column left out of the update is not touched."""
    if rows:
        mark = _mark(conn)
        sets = ", ".join(f"{c} = excluded.{c}" for c in changing)
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
               f"({', '.join([mark] * len(columns))}) "
               f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")
        conn.exec_driver_sql(sql, list(rows))


def db_time(conn: Connection, value: Any) -> Any:
    """A UTC datetime as the driver should bind it in raw SQL: SQLite stores the text
    form SQLAlchemy's DateTime reads back; PostgreSQL takes the datetime itself."""
    if value is None or conn.dialect.name != "sqlite":
        return value
    from datetime import UTC

    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
