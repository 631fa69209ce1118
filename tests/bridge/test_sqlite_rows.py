"""Many rows in a few multi-row INSERT statements (bridge.sqlite_rows)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from bridge.sqlite_rows import MAX_PARAMETERS, ROWS_PER_STATEMENT, insert_rows


class Recording(sqlite3.Connection):
    """A connection that keeps the text of every statement executed through it."""

    executed: list[str]

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.executed.append(sql)
        return super().execute(sql, parameters)


@pytest.mark.parametrize("width", [1, 3, 4, 7])
def test_every_row_goes_in_once_in_order_in_few_statements(width: int) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None, factory=Recording)
    executed = conn.executed = []
    columns = ", ".join(f"c{i}" for i in range(width))
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, {columns})")
    statements: set[str] = set()
    expected: list[tuple[object, ...]] = []
    for count in [0, 1, 2, 3, 255, 256, 257, 511, 600]:
        rows = [
            tuple(f"{count}.{r}.{c}" if c % 2 else r * 10 + c for c in range(width))
            for r in range(count)
        ]
        executed.clear()
        conn.execute("BEGIN")
        insert_rows(conn, f"INSERT INTO t ({columns})", width, [v for row in rows for v in row])
        conn.execute("COMMIT")
        statements.update(executed)
        expected += rows
        # One statement per size taken, largest first: never more than the sizes there are
        # (plus the repeats of the largest that fits).
        inserts = [sql for sql in executed if sql.startswith("INSERT")]
        largest = max(n for n in ROWS_PER_STATEMENT if n * width <= MAX_PARAMETERS)
        assert len(inserts) <= count // largest + len(ROWS_PER_STATEMENT)
        assert all(sql.count("?") <= MAX_PARAMETERS for sql in inserts)
    stored = conn.execute(f"SELECT {columns} FROM t ORDER BY id").fetchall()
    assert stored == expected
    inserts = {sql for sql in statements if sql.startswith("INSERT")}
    assert 1 < len(inserts) <= len(ROWS_PER_STATEMENT)


def test_values_that_do_not_make_whole_rows_are_refused() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b)")
    with pytest.raises(ValueError, match="5 values do not make rows of 2"):
        insert_rows(conn, "INSERT INTO t (a, b)", 2, [1, 2, 3, 4, 5])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
