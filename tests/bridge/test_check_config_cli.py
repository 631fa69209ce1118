"""``dlms-bridge check-config``: the summary, every error on stderr with exit 2, ``--json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "bridge.example.toml"

BAD = """
[mqtt]
host = "b"
qos = 2
[[meters]]
name = "m1"
host = "h"
port = "abc"
registers = "field-meter"
[[meters]]
name = "m2"
host = "h"
port = 1
intervall = 3
registers = [{ key = "v", obis = "1-1:99" }]
"""


def test_ok_summary(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert main(["check-config", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == "OK: 3 meters (3 enabled), publish mode gateway, broker 127.0.0.1:1883\n"
    assert err == ""


def test_summary_counts_disabled_meters_and_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text().replace('name = "sim-2"', 'name = "sim-2"\nenabled = false')
    text = text.replace('host = "127.0.0.1"\n\n# Default: 1883', 'host = "::1"\ntls = true\n#')
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out == "OK: 3 meters (2 enabled), publish mode gateway, broker [::1]:8883 (TLS)\n"


def test_every_error_on_stderr_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(BAD)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: mqtt.qos: expected one of 0, 1, got 2",
        f"{path}: meters[0].port: expected an int, got 'abc'",
        f"{path}: meters[1].registers[0].obis: not an OBIS code: '1-1:99' "
        "(expected A-B:C.D.E, A-B:C.D.E*F or A.B.C.D.E.F, groups 0..255)",
        f"{path}: meters[1].intervall: unknown key (did you mean 'interval_s'?)",
        f"{path}: 4 errors, config not usable",
    ]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert main(["check-config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert err.splitlines()[0] == f"{path}: cannot read {path}: No such file or directory"


def test_json_is_resolved_and_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("very-secret-password\n")
    text = EXAMPLE.read_text().replace('password = "00000000"', 'password_file = "pw"')
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert main(["check-config", "--json", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert "very-secret-password" not in out
    assert "demo-gateway-token" not in out
    data = json.loads(out)
    assert data["bridge"]["data_dir"] == str(tmp_path / "state")
    assert data["mqtt"]["token"] == "***"
    assert data["mqtt"]["password"] is None
    assert [m["password"] for m in data["meters"]] == ["***"] * 3
    assert data["meters"][0]["registers"][0] == {
        "key": "voltage_l1",
        "obis": "1-1:32.7.0",
        "class_id": 3,
        "attribute": 2,
    }
    assert data["meters"][2]["port"] == 4063


def test_real_command_exit_status(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(BAD)
    for args, status in (([str(EXAMPLE)], 0), ([str(path)], 2)):
        done = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "check-config", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == status, done.stderr
    assert "meters[0].port: expected an int, got 'abc'" in done.stderr
