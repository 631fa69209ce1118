"""What the bridge writes is nobody else's: data directory 0700 (0750 at most), the outbox, its
journal and the lock 0600, also when files of an older version were 0644."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

from bridge.lock import InstanceLock
from bridge.outbox import AsyncOutbox, OutboxWriter
from bridge.readings import Reading


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_outbox_and_lock_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask, as under a login shell
    try:
        data = tmp_path / "state" / "data"
        lock = InstanceLock(data)
        lock.acquire()
        box = await AsyncOutbox.open(data)
        writer = OutboxWriter(box)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.put(Reading("m1", 1_700_000_000_000, {"v": 1}))
            nursery.cancel_scope.cancel()
        files = sorted(p.name for p in data.iterdir())
        assert "outbox.sqlite-wal" in files, files  # the journal exists while open
        modes = {name: mode(data / name) for name in files}
        await box.aclose()
        lock.release()
    finally:
        os.umask(old)
    assert mode(data) == 0o700
    assert modes == dict.fromkeys(files, 0o600), {k: oct(v) for k, v in modes.items()}


async def test_files_of_an_older_version_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o757)
    box = await AsyncOutbox.open(data)
    await box.aclose()
    for name in ("outbox.sqlite", "bridge.lock"):
        (data / name).touch()
        os.chmod(data / name, 0o644)
    lock = InstanceLock(data)
    lock.acquire()
    box = await AsyncOutbox.open(data)
    await box.aclose()
    lock.release()
    assert mode(data) == 0o750  # others lose everything, the group keeps reading
    assert mode(data / "outbox.sqlite") == 0o600
    assert mode(data / "bridge.lock") == 0o600
