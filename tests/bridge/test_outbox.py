"""The durable outbox (and the Reading JSON form it stores)."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import outbox as outbox_module
from bridge.outbox import FILENAME, AsyncOutbox, Outbox, OutboxError, OutboxWriter
from bridge.readings import Reading

REPO = Path(__file__).resolve().parents[2]


def reading(i: int, meter: str = "m1", **values: object) -> Reading:
    return Reading(meter=meter, ts_ms=1_700_000_000_000 + i, values=values or {"i": i})


# -- Reading ---------------------------------------------------------------------------------

values_st = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    ),
    max_size=6,
)


@given(meter=st.text(min_size=1, max_size=10), ts=st.integers(0, 2**48), values=values_st)
def test_reading_json_round_trip(meter: str, ts: int, values: dict[str, object]) -> None:
    r = Reading(meter=meter, ts_ms=ts, values=values)  # type: ignore[arg-type]
    data = r.to_json()
    assert Reading.from_json(data) == r
    # Stable: the same reading always gives the same bytes, whatever the dict order.
    again = Reading(meter=meter, ts_ms=ts, values=dict(reversed(list(values.items()))))  # type: ignore[arg-type]
    assert again.to_json() == data


def test_reading_json_is_compact_and_sorted() -> None:
    r = Reading(meter="Zähler 1", ts_ms=5, values={"b": 1.5, "a": None, "c": True})
    assert (
        r.to_json() == '{"meter":"Zähler 1","ts":5,"values":{"a":null,"b":1.5,"c":true}}'.encode()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meter": "", "ts_ms": 1, "values": {}}, "meter must be a non-empty string"),
        ({"meter": "m", "ts_ms": -1, "values": {}}, "ts_ms must be a non-negative int"),
        ({"meter": "m", "ts_ms": True, "values": {}}, "ts_ms must be a non-negative int"),
        ({"meter": "m", "ts_ms": 1, "values": {"v": float("nan")}}, "'v': nan, which JSON"),
        ({"meter": "m", "ts_ms": 1, "values": {"v": [1, {}]}}, "'v': unsupported type dict"),
        (
            {"meter": "m", "ts_ms": 1, "values": {"v": [[float("inf")]]}},
            "'v': inf, which JSON cannot carry",
        ),
        (
            {"meter": "m", "ts_ms": 1, "values": {"v": 1}, "errors": {"v": {"code": "x"}}},
            "error key 'v' is empty or also has a value",
        ),
        (
            {"meter": "m", "ts_ms": 1, "values": {}, "quality": {"v": "nan"}},
            "quality 'nan' of 'v' names no value",
        ),
        ({"meter": "m", "ts_ms": 1, "values": {"": 1}}, "key '' is not a non-empty string"),
    ],
)
def test_reading_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reading(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be an object"),
        (b'{"meter":"m","ts":1}', "lacks values"),
        (b'{"meter":"m","ts":1,"values":{},"x":1}', "unexpected keys x"),
        (b'{"meter":"m","ts":"1","values":{}}', "ts_ms must be"),
    ],
)
def test_reading_from_bad_json(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reading.from_json(data)


# -- Outbox core -----------------------------------------------------------------------------


def test_append_peek_delete_in_order(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        assert box.path == tmp_path / FILENAME
        ids = box.append([reading(i, meter="a" if i % 2 else "b") for i in range(10)])
        assert ids == sorted(ids)
        assert len(set(ids)) == 10
        rows = box.peek(100)
        assert [r.id for r in rows] == ids
        assert [r.reading.ts_ms for r in rows] == [reading(i).ts_ms for i in range(10)]
        assert box.depth() == (10, sum(r.size for r in rows))

        assert [r.reading.ts_ms % 100 for r in box.peek(100, meter="a")] == [1, 3, 5, 7, 9]
        assert [r.id for r in box.peek(3, after_id=ids[4])] == ids[5:8]
        # The byte limit stops before the row that would exceed it, but never returns nothing.
        size = rows[0].size
        assert len(box.peek(100, limit_bytes=size * 3)) == 3
        assert len(box.peek(100, limit_bytes=1)) == 1

        assert box.delete([*ids[:4], 999999]) == 4
        assert [r.id for r in box.peek(100)] == ids[4:]
        assert box.depth()[0] == 6
        assert box.pending_meters() == ["a", "b"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 600)),
            st.tuples(st.just("delete"), st.lists(st.integers(0, 700), max_size=40)),
            st.tuples(st.just("delete_range"), st.integers(0, 700), st.integers(0, 300)),
            # A few ids one apart: few runs, with rows between them that must stay.
            st.tuples(st.just("delete_stride"), st.integers(0, 700), st.integers(1, 6)),
        ),
        max_size=12,
    )
)
def test_batches_of_any_size_and_deletes_of_any_shape_keep_the_counts_true(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[object, ...]],
) -> None:
    """Batches go in as multi-row statements of several sizes and deletes go by runs of
    consecutive ids or by lists: whatever the shape (duplicates, ids gone or never made, out
    of order), the rows left, their order and the counted rows and bytes are what a plain
    model of the outbox says, and what the database itself counts."""
    directory = tmp_path_factory.mktemp("outbox")
    model: dict[int, bytes] = {}
    made = 0
    with Outbox(directory) as box:
        for op in ops:
            if op[0] == "append":
                count = int(str(op[1]))
                batch = [reading(made + i, meter=f"m{(made + i) % 7}") for i in range(count)]
                made += count
                ids = box.append(batch)
                assert ids == list(range(ids[0], ids[0] + count)) if count else ids == []
                model.update((i, r.to_json()) for i, r in zip(ids, batch, strict=True))
                continue
            if op[0] == "delete":
                asked = [int(str(i)) for i in op[1]]  # type: ignore[attr-defined]
            elif op[0] == "delete_range":
                start, length = int(str(op[1])), int(str(op[2]))
                asked = list(range(start, start + length))[::-1]
            else:
                start, length = int(str(op[1])), int(str(op[2]))
                asked = list(range(start, start + 2 * length, 2))
            gone = {i for i in asked if i in model}
            assert box.delete(asked) == len(gone)
            for i in gone:
                del model[i]
        assert [r.id for r in box.peek(10_000)] == sorted(model)
        assert box.depth() == (len(model), sum(len(p) for p in model.values()))
        assert (
            box._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox"
            ).fetchone()
            == box.depth()
        )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=25), st.integers(1, 6))
def test_ids_split_into_runs_of_consecutive_ids(ids: list[int], limit: int) -> None:
    """The runs cover exactly the ids asked for (a gap of one id is a gap), in order; more
    runs than the limit allows give None."""
    runs = outbox_module._runs(ids, limit)
    wanted = sorted(set(ids))
    gaps = sum(1 for a, b in itertools.pairwise(wanted) if b != a + 1)
    if gaps + 1 > limit:
        assert runs is None
        return
    assert runs is not None
    assert [i for lo, hi in runs for i in range(lo, hi + 1)] == wanted
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))


def test_survives_reopen_and_ids_never_repeat(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        first = box.append([reading(i) for i in range(5)])
        box.delete(first)
        second = box.append([reading(i) for i in range(5, 8)])
    with Outbox(tmp_path / FILENAME) as box:
        assert [r.id for r in box.peek(10)] == second
        assert [r.reading for r in box.peek(10)] == [reading(i) for i in range(5, 8)]
        assert box.depth()[0] == 3
        third = box.append([reading(9)])
        # AUTOINCREMENT: a fresh id even after every earlier row was deleted.
        assert third[0] > second[-1] > first[-1]


def test_drop_oldest_when_full_is_counted_and_persisted(tmp_path: Path) -> None:
    with Outbox(tmp_path, max_rows=10) as box:
        ids = box.append([reading(i) for i in range(25)])
        assert box.depth()[0] == 10
        assert [r.id for r in box.peek(100)] == ids[15:]
        assert box.dropped_rows == 15
        assert box.alarms == {"outbox.overflow"}
        box.append([reading(25)])
        assert box.dropped_rows == 16
        assert [r.reading.ts_ms for r in box.peek(1)] == [reading(16).ts_ms]
        # Alarm clears once below 90% of the bound.
        box.delete([r.id for r in box.peek(2)])
        assert box.alarms == frozenset()
    with Outbox(tmp_path, max_rows=10) as box:
        assert box.dropped_rows == 16


def test_byte_bound(tmp_path: Path) -> None:
    one = len(reading(0).to_json())
    with Outbox(tmp_path, max_bytes=one * 5 + one // 2) as box:
        box.append([reading(i) for i in range(3)])
        box.append([reading(i) for i in range(3, 8)])
        rows, nbytes = box.depth()
        assert rows == 5
        assert nbytes <= one * 5 + one // 2
        assert [r.reading.ts_ms % 100 for r in box.peek(10)] == [3, 4, 5, 6, 7]
        assert box.dropped_rows == 3
        with pytest.raises(ValueError, match="larger than the whole outbox"):
            box.append([reading(0, big="x" * one * 6)])
        assert box.depth()[0] == 5


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(OutboxError, match=str(path)) as info:
        Outbox(tmp_path)
    assert "corrupt or not an SQLite file" in str(info.value)


def test_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="does not exist"):
        Outbox(tmp_path / "nope" / FILENAME)


def test_second_user_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.append([reading(1)])
        with pytest.raises(OutboxError, match="in use by another process"):
            Outbox(tmp_path)


def spoil_row(data_dir: Path, ts_ms: int) -> None:
    """Overwrite the stored payload of the row taken at ``ts_ms`` with bytes that are no
    reading (``{{``), behind the outbox's back."""
    conn = sqlite3.connect(data_dir / FILENAME)
    conn.execute("UPDATE outbox SET payload = x'7b7b' WHERE ts_ms = ?", (ts_ms,))
    conn.commit()
    conn.close()


def test_unreadable_row_is_removed_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.append([reading(1), reading(2)])
    spoil_row(tmp_path, reading(1).ts_ms)
    with Outbox(tmp_path) as box:
        assert [r.reading for r in box.peek(10)] == [reading(2)]
        assert box.corrupt_rows == 1
        assert box.depth()[0] == 1


def test_recent_readings_are_peeked_without_parsing_and_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows committed moments ago come back as the very readings committed (no JSON parsed);
    older ones, and every row after a reopen, are parsed from the file - and equal."""
    monkeypatch.setattr(outbox_module, "RECENT_READINGS", 10)
    parsed: list[bytes] = []
    real = Reading.from_json
    monkeypatch.setattr(Reading, "from_json", lambda data: parsed.append(data) or real(data))
    taken = [reading(i) for i in range(25)]
    with Outbox(tmp_path) as box:
        box.append(taken[:5])
        box.append(taken[5:25])
        assert len(box._recent) == 10  # the bound
        rows = box.peek(100)
        assert [r.reading for r in rows] == taken
        assert len(parsed) == 15  # only the 15 rows no longer held were parsed
        assert all(rows[i].reading is taken[i] for i in range(15, 25))
        box.delete([r.id for r in rows[20:]])
        assert len(box._recent) == 5  # deleted rows are let go
    parsed.clear()
    with Outbox(tmp_path) as box:
        assert [r.reading for r in box.peek(100)] == taken[:20]
        assert len(parsed) == 20


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(0, 30)),
            st.tuples(st.just("delete"), st.lists(st.integers(0, 200), max_size=20)),
            st.tuples(st.just("delete_peeked"), st.integers(1, 30)),
        ),
        max_size=15,
    ),
    st.integers(1, 40),
    st.sampled_from([None, 1, 150, 600]),
)
def test_peek_from_memory_is_the_databases_answer(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[object, ...]],
    max_rows: int,
    limit_bytes: int | None,
) -> None:
    """`peek` answers from the readings kept in memory while they are every row stored, else
    from the database: either way, for any limits, meter and cursor, the rows (ids, readings,
    sizes) the database gives, through appends, deletes, the oldest rows dropped by the bound
    and the memory's own trim."""
    directory = tmp_path_factory.mktemp("outbox")
    made = 0
    with pytest.MonkeyPatch.context() as mp, Outbox(directory, max_rows=max_rows) as box:
        mp.setattr(outbox_module, "RECENT_READINGS", 25)
        for op in ops:
            if op[0] == "append":
                count = int(str(op[1]))
                box.append([reading(made + i, meter=f"m{(made + i) % 3}") for i in range(count)])
                made += count
            elif op[0] == "delete":
                box.delete([int(str(i)) for i in op[1]])  # type: ignore[attr-defined]
            else:
                box.delete([r.id for r in box.peek(int(str(op[1])))])
            ids = [r.id for r in box._peek(10_000, None, None, 0)]
            for meter in (None, "m1"):
                for after in {0, *ids[:3], *ids[-2:]}:
                    for limit in (1, 4, 10_000):
                        stored = box._peek(limit, limit_bytes, meter, after)
                        assert box.peek(limit, limit_bytes, meter=meter, after_id=after) == stored


def test_a_steady_outbox_is_peeked_without_a_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows appended and delivered in turn, as a steady fleet's are: no peek asks SQLite;
    once the memory no longer holds every row (after a reopen, or a backlog past its bound)
    the database answers."""
    monkeypatch.setattr(outbox_module, "RECENT_READINGS", 10)
    queried: list[int] = []
    real = Outbox._peek
    monkeypatch.setattr(Outbox, "_peek", lambda self, *a: queried.append(1) or real(self, *a))
    with Outbox(tmp_path) as box:
        for n in range(5):
            box.append([reading(10 * n + i) for i in range(4)])
            rows = box.peek(100)
            assert [r.reading for r in rows] == [reading(10 * n + i) for i in range(4)]
            box.delete([r.id for r in rows])
        assert queried == []
        box.append([reading(100 + i) for i in range(12)])  # more than the memory keeps
        assert len(box.peek(100)) == 12
        assert queried == [1]
        box.append([reading(200)])
    with Outbox(tmp_path) as box:
        assert len(box.peek(100)) == 13
        assert len(queried) == 2


def test_rows_dropped_for_room_leave_the_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows dropped by the bound (some of them of the very batch appended) are no longer
    held, so the memory still holds exactly the rows stored and answers alone."""
    queried: list[int] = []
    real = Outbox._peek
    monkeypatch.setattr(Outbox, "_peek", lambda self, *a: queried.append(1) or real(self, *a))
    with Outbox(tmp_path, max_rows=5) as box:
        box.append([reading(i) for i in range(3)])
        box.append([reading(i) for i in range(3, 11)])  # 6 dropped: 3 old, 3 of this batch
        assert [r.reading for r in box.peek(100)] == [reading(i) for i in range(6, 11)]
        assert list(box._recent) == [r.id for r in box.peek(100)]
        assert queried == []


def test_a_corrupt_row_is_found_even_when_its_reading_was_recent(tmp_path: Path) -> None:
    """A row spoiled on disk after a reopen is still detected (the memory starts empty)."""
    with Outbox(tmp_path) as box:
        box.append([reading(1), reading(2)])
        assert [r.reading for r in box.peek(10)] == [reading(1), reading(2)]
    spoil_row(tmp_path, reading(2).ts_ms)
    with Outbox(tmp_path) as box:
        assert [r.reading for r in box.peek(10)] == [reading(1)]
        assert box.corrupt_rows == 1


def test_synchronous_setting(tmp_path: Path) -> None:
    with Outbox(tmp_path, synchronous="normal") as box:
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Outbox(tmp_path) as box:
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(tmp_path, synchronous="off")  # type: ignore[arg-type]


CHILD = """
import sys
from bridge.outbox import Outbox
from bridge.readings import Reading
box = Outbox(sys.argv[1])
i = 0
while True:
    batch = [Reading(meter="m%d" % (j % 3), ts_ms=i + j, values={"n": i + j}) for j in range(50)]
    ids = box.append(batch)
    i += 50
    # Reported only after append() returned, i.e. after COMMIT.
    print(i, ids[-1], flush=True)
"""


def test_kill_9_loses_no_committed_reading(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert proc.stdout is not None
    committed = 0
    deadline = time.monotonic() + 20
    while committed < 2000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "child died"
        committed = int(line.split()[0])
    os.kill(proc.pid, signal.SIGKILL)  # mid-append: the child never stops writing
    proc.wait()
    assert committed >= 2000
    with Outbox(tmp_path) as box:
        rows = box.peek(1_000_000)
    stored = {r.reading.ts_ms for r in rows}
    assert set(range(committed)) <= stored
    # Whatever else survived is whole batches in order, nothing torn.
    assert sorted(stored) == list(range(len(stored)))
    assert len(stored) % 50 == 0


# -- async facade and group commit -----------------------------------------------------------


async def test_async_outbox_wakes_waiters(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path)
    with trio.fail_after(10):
        event = box.appended
        assert await box.peek(10) == []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.append, [reading(1)])
            await event.wait()
        rows = await box.peek(10)
        assert [r.reading for r in rows] == [reading(1)]
        assert await box.delete([rows[0].id]) == 1
        assert box.depth() == (0, 0)
        await box.aclose()


async def test_writer_group_commit(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path)
    writer = OutboxWriter(box)
    n_tasks, per_task = 100, 30
    ids: list[int] = []

    async def producer(k: int) -> None:
        for i in range(per_task):
            ids.append(await writer.put(reading(k * per_task + i, meter=f"m{k}")))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            start = time.perf_counter()
            async with trio.open_nursery() as producers:
                for k in range(n_tasks):
                    producers.start_soon(producer, k)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    total = n_tasks * per_task
    assert len(set(ids)) == total
    assert box.depth()[0] == total
    assert writer.stats.readings == total
    # Group commit: far fewer transactions than readings.
    assert writer.stats.batches <= total // 10, writer.stats
    print(f"group commit: {total} readings in {elapsed:.2f} s, {writer.stats.batches} batches")
    # Per meter, row ids follow the order of put() calls.
    rows = await box.peek(total)
    for k in range(n_tasks):
        seq = [r.reading.ts_ms for r in rows if r.reading.meter == f"m{k}"]
        assert seq == sorted(seq)
    # After the writer stopped, put fails clearly instead of waiting forever.
    with pytest.raises(OutboxError, match="stopped"):
        await writer.put(reading(0))
    await box.aclose()


async def test_writer_rejects_oversize_reading_alone(tmp_path: Path) -> None:
    box = await AsyncOutbox.open(tmp_path, max_bytes=200)
    writer = OutboxWriter(box)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            with pytest.raises(ValueError, match="larger than the whole outbox"):
                await writer.put(reading(1, big="x" * 300))
            assert await writer.put(reading(2)) > 0
            nursery.cancel_scope.cancel()
    await box.aclose()


@pytest.mark.parametrize("linger_s", [0.02, 0.0])
async def test_writer_lets_a_trickle_of_readings_share_a_transaction(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, linger_s: float
) -> None:
    """Readings 5 ms apart (virtual time): one transaction within the linger; without it the
    first reading is committed alone (virtual time may pass while a commit runs, so how the
    others group is not fixed)."""
    box = await AsyncOutbox.open(tmp_path)
    writer = OutboxWriter(box, linger_s=linger_s)
    ids: list[int] = []

    async def producer(i: int) -> None:
        await trio.sleep(0.005 * i)
        ids.append(await writer.put(reading(i)))

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as producers:
            for i in range(4):
                producers.start_soon(producer, i)
        nursery.cancel_scope.cancel()
    assert sorted(ids) == [1, 2, 3, 4]
    if linger_s:
        assert writer.stats.batches == 1
    else:
        assert writer.stats.batches >= 2
    assert [r.reading for r in await box.peek(10)] == [reading(i) for i in range(4)]
    await box.aclose()


@pytest.mark.parametrize("gathered", [True, False])
async def test_a_gathered_batch_is_committed_without_the_linger(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, gathered: bool
) -> None:
    """A polling engine's hand-over (gathered by the engine already) is committed at once, a
    reading of a poller's own cycle waiting in the queue with it too; without ``gathered`` the
    writer lets the batch wait its linger for more."""
    box = await AsyncOutbox.open(tmp_path)
    writer = OutboxWriter(box, linger_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        single: list[float] = []

        async def one() -> None:
            await writer.put(reading(100))
            single.append(trio.current_time())

        start = trio.current_time()
        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()  # the single reading lingers now
        ids = await writer.put_many([reading(i) for i in range(3)], gathered=gathered)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert len(ids) == 3 and None not in ids
    assert writer.stats.batches == 1  # the single reading and the batch, together
    if gathered:
        assert took < 0.5  # not after the linger
        assert single and single[0] - start < 0.5
    else:
        assert took >= 0.5
    await box.aclose()


def test_writer_linger_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="linger_s"):
        OutboxWriter(None, linger_s=5)  # type: ignore[arg-type]
