"""Invocation counters: strictly increasing, reserved ahead, never repeated after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.counters import CounterFileError, PersistentCounter, counter_path

REPO = Path(__file__).resolve().parents[2]


def test_reserves_ahead_and_writes_before_use(tmp_path: Path) -> None:
    path = counter_path(tmp_path, "meter 1/a", b"DLB\x00\x01\x02\x03\x04")
    assert path.parent == tmp_path / "counters" and "/" not in path.name
    counter = PersistentCounter(path, reserve=10)
    assert counter.next() == 1
    assert path.read_text() == "11\n"  # the block was on disk before 1 was handed out
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    values = [counter.next() for _ in range(15)]
    assert values == list(range(2, 17))
    assert path.read_text() == "21\n" and counter.writes == 2
    # A restart (clean or not) continues above everything the last run could have used.
    again = PersistentCounter(path, reserve=10)
    assert again.next() == 21
    again.advance_to(1000)
    assert again.next() == 1000


def test_bad_counter_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.ic"
    path.write_text("not a number")
    counter = PersistentCounter(path)  # construction never fails (a poller must start)
    with pytest.raises(CounterFileError, match="does not hold a counter") as info:
        counter.next()
    assert info.value.code == "security.counter_file"
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    with pytest.raises(CounterFileError, match=r"cannot read .*: Not a directory$"):
        PersistentCounter(unwritable / "sub" / "c.ic").next()


_CHILD = """
import sys
from bridge.counters import PersistentCounter
counter = PersistentCounter(sys.argv[1], reserve=7)
while True:
    print(counter.next(), flush=True)
"""


def _run_and_kill(path: Path, lines: int) -> list[int]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    assert child.stdout is not None
    seen = [int(child.stdout.readline()) for _ in range(lines)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    return seen


def test_counters_never_repeat_across_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "counters" / "m.ic"
    used: list[int] = []
    for lines in (20, 3, 50):
        run = _run_and_kill(path, lines)
        assert run == sorted(run) and len(set(run)) == len(run)
        assert not used or run[0] > max(used)
        used += run


def test_two_processes_counting_for_one_title_never_overlap(tmp_path: Path) -> None:
    path = tmp_path / "c.ic"
    service = PersistentCounter(path, reserve=10)
    used = [service.next(), service.next()]  # block [1, 11)
    diagnose = PersistentCounter(path, reserve=10)
    used += [diagnose.next() for _ in range(3)]  # starts at 11: block [11, 21)
    service.sync()  # before its next association: past the block diagnose took
    used += [service.next() for _ in range(12)]
    used += [diagnose.next() for _ in range(12)]  # its next block starts above the service's
    assert len(used) == len(set(used))
    assert used[:5] == [1, 2, 11, 12, 13]
    assert used[5] == 21
    service.sync()  # diagnose reserved past the service's block again: skip it
    assert service.value > max(used)
    alone = PersistentCounter(tmp_path / "alone.ic", reserve=10)
    alone.next()
    alone.sync()  # only its own block in the file: nothing to skip
    assert alone.next() == 2
