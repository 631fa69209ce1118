"""A command whose output is piped into ``head`` (which closes the pipe early) stops quietly
with the shell's SIGPIPE status, not with an error that blames its input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNRM = "7ea00802232193bd647e"  # tests/data/real-meter-frames.json: snrm-client-to-meter


def test_decode_into_a_closed_pipe(tmp_path: Path) -> None:
    capture = tmp_path / "frames.bin"
    capture.write_bytes(bytes.fromhex(SNRM) * 20_000)  # far more output than a pipe buffers
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "decode", "--file", str(capture)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # what `head -1` does: one line, then close
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == ""
