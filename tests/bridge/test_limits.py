"""Process limits of the service: the number of glibc malloc arenas (``bridge.limits``).

Each case runs in a child process (an arena limit cannot be undone): six threads allocate at
once, then glibc's own report (``malloc_info``) tells how many arenas it made.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import ctypes, os, sys, tempfile, threading
from bridge.limits import limit_malloc_arenas
if sys.argv[1] == "limit":
    print("limited", limit_malloc_arenas(), os.environ.get("MALLOC_ARENA_MAX"))
held = []
start = threading.Barrier(6)
def work():
    start.wait()
    held.append([bytes(600 + i % 7) for i in range(2000)])
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
with open(path) as f:
    print("arenas", f.read().count("<heap nr="))
os.unlink(path)
"""


def _glibc() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return hasattr(libc, "malloc_info") and hasattr(libc, "mallopt")


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")


def run_child(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        timeout=60,
    )
    return out.stdout.split()


def test_without_the_limit_threads_get_arenas_of_their_own() -> None:
    # The reason for the limit (and the control that the count below means something).
    words = run_child("none")
    assert int(words[words.index("arenas") + 1]) > 2


def test_the_service_uses_at_most_two_arenas_and_passes_the_limit_on() -> None:
    words = run_child("limit")
    assert words[:3] == ["limited", "True", "2"]  # MALLOC_ARENA_MAX for its worker processes
    assert int(words[words.index("arenas") + 1]) <= 2


def test_an_operators_setting_is_kept() -> None:
    words = run_child("limit", MALLOC_ARENA_MAX="4")
    assert words[:3] == ["limited", "False", "4"]
