"""One bridge per data directory, checked with real second processes."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.lock import LOCK_NAME, AlreadyRunning, InstanceLock

REPO = Path(__file__).resolve().parents[2]

# A second bridge: takes the lock, says so, then waits to be killed or told to exit.
HOLDER = """
import sys
from bridge.lock import InstanceLock
lock = InstanceLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""

# A second bridge that only tries.
TRIER = """
import sys
from bridge.lock import AlreadyRunning, InstanceLock
try:
    InstanceLock(sys.argv[1]).acquire()
except AlreadyRunning as exc:
    print(exc)
    sys.exit(3)
print("acquired")
"""


def python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on ``tmp_path/data``."""
    proc = python(HOLDER, str(tmp_path / "data"))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_acquire_writes_pid_and_release_empties(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    lock = InstanceLock(data)
    with lock:
        assert lock.locked
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not lock.locked
    assert (data / LOCK_NAME).read_text() == ""
    lock.release()  # twice is fine
    with InstanceLock(data):  # and it can be taken again
        pass


def test_second_process_is_refused_while_we_hold_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with InstanceLock(data):
        proc = python(TRIER, str(data))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        assert out == f"another dlms-bridge (pid {os.getpid()}) is already using {data}\n"
    proc = python(TRIER, str(data))
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "acquired\n"), err


def test_we_are_refused_while_another_process_holds_it(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    data = tmp_path / "data"
    with pytest.raises(AlreadyRunning) as info:
        InstanceLock(data).acquire()
    assert info.value.pid == holder.pid
    assert str(info.value) == f"another dlms-bridge (pid {holder.pid}) is already using {data}"
    # A clean exit releases it.
    out, _ = holder.communicate("\n", timeout=30)
    assert out == "released\n"
    with InstanceLock(data):
        pass


def test_kill_9_releases_the_lock(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    data = tmp_path / "data"
    with pytest.raises(AlreadyRunning):
        InstanceLock(data).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    # The file still names the dead process, but the kernel dropped its lock.
    assert (data / LOCK_NAME).read_text() == f"{holder.pid}\n"
    with InstanceLock(data):
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_children_do_not_inherit_the_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lock = InstanceLock(data)
    lock.acquire()
    # A child that outlives our release must not keep the lock alive (close_fds=False on purpose).
    # Wait until it runs: until its exec completes, it briefly holds copies of all our descriptors.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        close_fds=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "up\n"
        lock.release()
        with InstanceLock(data):
            pass
    finally:
        child.kill()
        child.communicate(timeout=10)


def test_unknown_pid_when_the_file_is_empty(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # Another process that has locked the file but not yet written its PID.
    with open(data / LOCK_NAME, "w") as f:
        proc = python(
            "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.readline()",
            str(data / LOCK_NAME),
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        try:
            with pytest.raises(AlreadyRunning) as info:
                InstanceLock(data).acquire()
            assert str(info.value) == f"another dlms-bridge (pid unknown) is already using {data}"
            assert info.value.pid is None
        finally:
            proc.communicate("\n", timeout=30)
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once it exited


def test_acquire_twice_is_a_bug(tmp_path: Path) -> None:
    lock = InstanceLock(tmp_path)
    with lock, pytest.raises(RuntimeError, match="already locked by this object"):
        lock.acquire()
