"""Hostile meters on real TCP sockets (127.0.0.1) against ``dlms-bridge read``, and ``decode``
of large input: bounded time, bounded RSS (read from /proc while the child runs), one line.

The peers are raw sockets served by threads (:func:`tests.bridge.hostile.serve_socket`); the
bounds asserted are generous multiples of the configured deadlines, not timings of this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge.hostile import PASSWORD, serve_socket

REPO = Path(__file__).resolve().parents[2]
#: RSS no `read` may reach (the unbounded client reached 4.6 GB within 40 s).
RSS_LIMIT_KB = 150 * 1024


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(args: list[str], limit: float) -> tuple[int, str, float, int]:
    """Run ``dlms-bridge ARGS``; (exit code, stderr, seconds, peak RSS in KiB from /proc)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    peak = 0
    try:
        while proc.poll() is None:
            peak = max(peak, _rss_kb(proc.pid))
            if time.monotonic() - start > limit or peak > RSS_LIMIT_KB:
                pytest.fail(f"still running after {time.monotonic() - start:.1f} s, RSS {peak} KiB")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(), time.monotonic() - start, peak


def read_args(port: int, *extra: str) -> list[str]:
    return [
        "read", "--host", "127.0.0.1", "--port", str(port),
        "--password", PASSWORD.decode(), *extra, "1-1:32.7.0",
    ]  # fmt: skip


@pytest.fixture
def hostile() -> Iterator[object]:
    listeners = []

    def start(mode: str, **kwargs: object) -> int:
        listener = serve_socket(mode, **kwargs)  # type: ignore[arg-type]
        listeners.append(listener)
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def test_endless_segments_end_as_a_protocol_error(hostile: object) -> None:
    port = hostile("endless")  # type: ignore[operator]
    code, err, took, peak = run_measured(read_args(port, "--timeout", "2"), limit=60)
    assert code == 6, err  # protocol error
    assert "exceeds the negotiated maximum PDU size" in err and "1088 accepted" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert took < 30
    assert peak < RSS_LIMIT_KB, f"peak RSS {peak} KiB"
    print(f"read peak RSS {peak} KiB, {took:.1f} s")


def test_a_peer_that_stops_reading_and_answering_is_left(hostile: object) -> None:
    port = hostile("deaf")  # type: ignore[operator]
    code, err, took, peak = run_measured(
        read_args(port, "--timeout", "1", "--retries", "1"), limit=60
    )
    assert code == 3, err  # stopped answering
    assert "stopped answering" in err and "Traceback" not in err
    assert took < 30
    assert peak < RSS_LIMIT_KB


@pytest.mark.slow
def test_one_segment_every_2s_ends_at_the_overall_deadline(hostile: object) -> None:
    port = hostile("drip", drip_every=2.0)  # type: ignore[operator]
    # Each segment comes within the 3 s reply timeout; the deadline is 3 x (0 + 2) = 6 s.
    code, err, took, peak = run_measured(
        read_args(port, "--timeout", "3", "--retries", "0"), limit=120
    )
    assert code == 3, err
    assert "overall deadline of 6 s" in err and "Traceback" not in err
    assert 6 <= took < 60
    assert peak < RSS_LIMIT_KB


def _frames() -> tuple[bytes, int]:
    """The real-meter frames back to back, and how many they are."""
    vectors = json.loads((REPO / "tests" / "data" / "real-meter-frames.json").read_text())
    frames = [bytes.fromhex(f["hex"]) for f in vectors["frames"]]
    return b"".join(frames), len(frames)


def _decode_peak(args: list[str], stdin: Path | None = None) -> tuple[int, dict[str, int], int]:
    """Run ``decode`` in a child; (exit code, its summary, its peak RSS in KiB)."""
    code = (
        "import resource, sys\n"
        "from bridge.cli import main\n"
        f"rc = main({args!r})\n"
        "sys.stderr.write(f'peak={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
        "sys.exit(rc)\n"
    )
    with open(stdin or "/dev/null", "rb") as source:
        result = subprocess.run(
            [sys.executable, "-c", code],
            stdin=source,
            capture_output=True,
            cwd=REPO,
            timeout=300,
            check=False,
        )
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    peak = int(err.rpartition("peak=")[2].split()[0])
    return result.returncode, summary, peak


def test_decode_a_600_kib_capture_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    frames, count = _frames()
    copies = 600 * 1024 // len(frames) + 1
    capture = tmp_path / "capture.bin"
    capture.write_bytes(frames * copies)
    assert capture.stat().st_size > 600 * 1024
    expected = copies * count
    code, summary, _ = _decode_peak(["decode", "--file", str(capture)])
    assert code == 0
    assert summary["decoded"] == summary["frames"] == expected
    assert summary["bytes_discarded"] == 0 and summary["bytes_received"] == len(frames) * copies
    # The same bytes as hex on stdin: spaced words, and one single word.
    spaced = tmp_path / "spaced.hex"
    spaced.write_text((frames * copies).hex(" ") + "\n")
    word = tmp_path / "word.hex"
    word.write_text("0x" + (frames * copies).hex())
    for source in (spaced, word):
        code, summary, _ = _decode_peak(["decode"], stdin=source)
        assert code == 0 and summary["decoded"] == expected, source


@pytest.mark.slow
def test_decode_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    frames, _ = _frames()
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    copies = 512 * 1024 // len(frames)
    small.write_bytes(frames * copies)
    large.write_bytes(frames * (16 * copies))
    _, small_summary, small_peak = _decode_peak(["decode", "--no-apdu", "--file", str(small)])
    _, large_summary, large_peak = _decode_peak(["decode", "--no-apdu", "--file", str(large)])
    assert large_summary["decoded"] == 16 * small_summary["decoded"]
    # 16 times the input, 7.5 MiB more of it: the peak moves by less than 4 MiB.
    assert large_peak - small_peak < 4 * 1024, (small_peak, large_peak)
