"""sd_notify over a real datagram socket, the watchdog settings, and the unit file."""

from __future__ import annotations

import array
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.systemd import notify, watchdog_interval

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "dlms-bridge.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket standing in for systemd's, and the environment that names it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    with sock:
        yield sock, {"NOTIFY_SOCKET": str(path)}


def test_no_socket_no_op() -> None:
    assert notify(ready=True, env={}) is False
    assert notify(ready=True, env={"NOTIFY_SOCKET": ""}) is False
    assert notify(ready=True, env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_ready_and_status(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert notify(ready=True, status="3 meters, 0 queued", env=env) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 meters, 0 queued\n"
    assert notify(watchdog=True, env=env)
    assert sock.recv(4096) == b"WATCHDOG=1\n"
    assert notify(stopping=True, status="line one\nline two", env=env)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=line one line two\n"


def test_nothing_to_say_sends_nothing(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert notify(env=env) is False
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_reloading_carries_the_monotonic_time(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify(reloading=True, env=env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = sock.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace_socket() -> None:
    name = f"dlms-bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert notify(ready=True, env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1\n"


def test_uses_os_environ_by_default(
    notify_socket: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify(status="hello")
    assert sock.recv(4096) == b"STATUS=hello\n"


def test_gone_socket_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        notify(ready=True, env={"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_sent_by_the_main_process(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    """systemd (NotifyAccess=main) checks the sender's PID: it must be the process itself."""
    sock, env = notify_socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    proc = subprocess.run(
        [sys.executable, "-c", "from bridge.systemd import notify; notify(ready=True)"],
        cwd=REPO,
        env={**os.environ, **env},
        timeout=60,
        check=True,
    )
    assert proc.returncode == 0
    creds_size = struct.calcsize("3i")
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
    assert data == b"READY=1\n"
    ((level, kind, payload),) = ancdata
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, uid, _gid = array.array("i", payload[:creds_size])
    assert uid == os.getuid()
    assert pid not in (0, os.getpid())  # the child's own PID, not ours


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "OWN"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    if environ.get("WATCHDOG_PID") == "OWN":
        environ = {**environ, "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(environ) == expected


# --------------------------------------------------------------------------------------------
# The unit file.


def unit_settings() -> list[tuple[str, str]]:
    return [
        tuple(line.split("=", 1))  # type: ignore[misc]
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]


def test_unit_settings() -> None:
    settings = unit_settings()
    values = dict(settings)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "60",
        "Restart": "on-failure",
        "RestartSec": "5",
        "RestartPreventExitStatus": "2",
        "User": "dlms-bridge",
        "StateDirectory": "dlms-bridge",
        "ConfigurationDirectory": "dlms-bridge",
        "ExecStart": "/usr/local/bin/dlms-bridge run --config /etc/dlms-bridge/bridge.toml",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "TimeoutStopSec": "30",
    }
    assert {k: values.get(k) for k in expected} == expected
    assert [v for k, v in settings if k == "ExecReload"] == [
        "/usr/local/bin/dlms-bridge check-config /etc/dlms-bridge/bridge.toml",
        "/bin/kill -HUP $MAINPID",
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that the command exists; point it at a stand-in for the installed one.
    fake = tmp_path / "dlms-bridge"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    unit = tmp_path / "dlms-bridge.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/dlms-bridge", str(fake)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings: any output at all is a failure.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_runtime_needs_no_writable_executable_memory() -> None:
    """What MemoryDenyWriteExecute=yes forbids, checked with the kernel's own MDWE switch."""
    modules = ["trio", "paho.mqtt.client", "sqlite3", "ssl", "bridge.config", "bridge.logs"]
    for extension in ("codec._hdlc_c", "codec._steady_c"):
        if importlib.util.find_spec(extension) is not None:
            modules.append(extension)
    code = f"""
import ctypes, mmap, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    refused = False
except PermissionError:
    refused = True
if not refused:
    sys.exit("MDWE is not enforced: the check would prove nothing")
for name in {modules!r}:
    __import__(name)
import sqlite3, ssl, trio
async def main():
    await trio.sleep(0.001)
trio.run(main)
ssl.create_default_context()
db = sqlite3.connect(":memory:")
db.execute("create table t(x)")
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
