"""A config "file" that never ends (a device, a pipe) or is huge gets exit 2, in bounded memory."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from bridge.config import CONFIG_FILE_MAX

REPO = Path(__file__).resolve().parents[2]


def _limit_memory() -> None:
    limit = 512 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _check_config(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-config", path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_memory,
    )


def test_endless_device_is_refused() -> None:
    done = _check_config("/dev/zero")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "larger than" in done.stderr


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b"# padding\n" * (CONFIG_FILE_MAX // 10 + 1))
    done = _check_config(str(path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "larger than" in done.stderr
