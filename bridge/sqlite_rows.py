"""Many rows into one SQLite table in a few multi-row INSERT statements.

``executemany`` runs its statement once a row: per row a virtual-machine run, a hand-over of
the GIL and, on a table with AUTOINCREMENT, a write of its counter. One ``INSERT ... VALUES
(..), (..), ..`` of many rows does each once per statement: measured ~2.7 us of CPU a row
against ~4.7 (the outbox: 200-row batches, WAL, an index). The rows go in statements of a few
fixed sizes, largest first, so that a connection sees only a handful of statement texts and
keeps them prepared in its statement cache.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence

__all__ = ["insert_rows"]

#: Rows per statement, largest first; a batch of any length is made of these.
ROWS_PER_STATEMENT = (256, 128, 64, 32, 16, 8, 4, 2, 1)
#: Parameters per statement at most: SQLite before 3.32 allowed 999.
MAX_PARAMETERS = 999


@functools.cache
def _statement(head: str, width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * rows)}"


def insert_rows(conn: sqlite3.Connection, head: str, width: int, params: Sequence[object]) -> None:
    """Insert ``len(params) // width`` rows, their values one after another in ``params``,
    with ``head`` (``"INSERT INTO t (a, b)"``, ``width`` columns) in the caller's transaction."""
    if len(params) % width:
        raise ValueError(f"{len(params)} values do not make rows of {width}")
    count, done = len(params) // width, 0
    for rows in ROWS_PER_STATEMENT:
        if rows * width > MAX_PARAMETERS:
            continue
        statement = _statement(head, width, rows)
        while count - done >= rows:
            conn.execute(statement, params[width * done : width * (done + rows)])
            done += rows
