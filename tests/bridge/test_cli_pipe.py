"""Every command piped into a reader that stops early (``| head``) exits quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: 141 = 128 + SIGPIPE, as a Unix tool ended by the closed pipe; argparse's own --help exits 0.
COMMANDS = [
    (["check-config", "--json", str(REPO / "deploy" / "bridge.example.toml")], {141}),
    (["decode", "--pcap", str(REPO / "benchmarks" / "captures" / "clean.pcap")], {141}),
    (["--help"], {0, 141}),
    (["read", "--help"], {0, 141}),
]


@pytest.mark.parametrize(("argv", "codes"), COMMANDS, ids=[" ".join(a[:2]) for a, _ in COMMANDS])
def test_a_closed_pipe_ends_the_command_without_a_traceback(
    argv: list[str], codes: set[int]
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bridge.cli", *argv],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "STATE_DIRECTORY": "/tmp"},
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode in codes
