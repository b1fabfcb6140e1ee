"""Set-based writes: many rows in one statement, their columns passed as typed arrays and unnested by PostgreSQL.

One `INSERT … SELECT * FROM unnest(…)` (or `UPDATE … FROM unnest(…)`) runs the executor once for the whole
batch, where asyncpg's `executemany` binds and executes the statement once per row; the rows and the order
they are written in are the same. Each statement's rows must have distinct keys (an `ON CONFLICT DO UPDATE`
cannot touch a row twice), which every caller guarantees by collecting its rows in a dict by key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

_PARAMETER = re.compile(r"\$(\d+)")


@dataclass(frozen=True)
class Column:
    name: str
    type: str


def columns(spec: str) -> tuple[Column, ...]:
    """'a text, b bigint' → the columns, in order."""
    found = []
    for part in spec.split(","):
        name, kind = part.split()
        found.append(Column(name, kind))
    return tuple(found)


def unnest(cols: Sequence[Column], *, ordered: bool = False) -> str:
    """`unnest($1::t1[], …) AS u (c1, …)`: the rows of the arrays passed as parameters, in array order."""
    arrays = ", ".join(f"${n}::{c.type}[]" for n, c in enumerate(cols, 1))
    names = ", ".join(c.name for c in cols)
    if ordered:
        return f"unnest({arrays}) WITH ORDINALITY AS u ({names}, n)"
    return f"unnest({arrays}) AS u ({names})"


def upsert_sql(table: str, cols: Sequence[Column], key: Sequence[str], *, update: bool = True) -> str:
    """INSERT of unnested rows; on a key conflict every other column is overwritten (or, not `update`, skipped)."""
    names = ", ".join(c.name for c in cols)
    conflict = f" ON CONFLICT ({', '.join(key)})"
    if update:
        sets = ", ".join(f"{c.name} = EXCLUDED.{c.name}" for c in cols if c.name not in key)
        conflict += f" DO UPDATE SET {sets}"
    else:
        conflict += " DO NOTHING"
    return f"INSERT INTO {table} ({names}) SELECT {names} FROM {unnest(cols)}{conflict}"


def update_sql(table: str, cols: Sequence[Column], key: Sequence[str], sets: str) -> str:
    """UPDATE `table` AS t from unnested rows `u` matched on `key`; `sets` may use t.<col> and u.<col>."""
    match = " AND ".join(f"t.{k} = u.{k}" for k in key)
    return f"UPDATE {table} AS t SET {sets} FROM {unnest(cols)} WHERE {match}"


def transpose(rows: Sequence[Sequence[object]], width: int) -> list[list[object]]:
    """Rows → one list per column (the statement's array parameters)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


@dataclass(frozen=True)
class Statement:
    sql: str
    args: list[object]


def statement(sql: str, rows: Sequence[Sequence[object]], width: int) -> Statement | None:
    """A statement made by this module bound to `rows`; None when there are none."""
    return Statement(sql, list(transpose(rows, width))) if rows else None


async def write(connection: asyncpg.Connection, sql: str, rows: Sequence[Sequence[object]], width: int) -> None:
    """Run a statement made by this module on `rows` (nothing when there are none)."""
    bound = statement(sql, rows, width)
    if bound is not None:
        await connection.execute(bound.sql, *bound.args)


def combined(parts: Mapping[str, Statement | None], final: str = "SELECT 1") -> Statement:
    """One statement (one round trip) running every part as a data-modifying CTE named after its key, then `final`.

    PostgreSQL runs each part once and to completion, all on the same snapshot: the parts must touch different
    rows (no row written by two of them) and none may read what another writes; `final` may read their RETURNING.
    """
    ctes: list[str] = []
    args: list[object] = []
    for name, part in parts.items():
        if part is None:
            continue
        sql = _PARAMETER.sub(functools.partial(_shifted, offset=len(args)), part.sql)
        ctes.append(f"{name} AS ({sql})")
        args.extend(part.args)
    return Statement(f"WITH {', '.join(ctes)} {final}" if ctes else final, args)


def _shifted(match: re.Match[str], *, offset: int) -> str:
    return f"${int(match.group(1)) + offset}"
