"""``dlms-bridge read`` and ``decode`` as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts

FIELD_METER_OBIS = ["1-1:32.7.0", "1-1:31.7.0", "1-1:14.7.0", "1-1:1.7.0", "1-1:1.8.0"]
REPO = Path(__file__).resolve().parents[2]


async def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``dlms-bridge ARGS`` in a child process."""
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "bridge.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=stdin,
            cwd=REPO,
        )


@pytest.fixture
async def meters(nursery: trio.Nursery) -> SimulatorPorts:
    """Two simulated field meters (HDLC) on ephemeral ports, served until the test ends."""
    simulator = Simulator(SimulatorConfig(meters=2, port=0, seed=7))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    return ports


def meter_args(ports: SimulatorPorts, index: int = 0) -> list[str]:
    return ["--host", ports.host, "--port", str(ports.meters[index])]


async def test_read_the_field_meter_registers(meters: SimulatorPorts) -> None:
    result = await cli("read", *meter_args(meters), "--password", "00000000", *FIELD_METER_OBIS)
    assert result.returncode == 0, result.stderr.decode()
    out = json.loads(result.stdout)
    registers = {r["obis"]: r for r in out["registers"]}
    assert list(registers) == FIELD_METER_OBIS
    expected = {
        "1-1:32.7.0": ("V", -2),
        "1-1:31.7.0": ("A", -3),
        "1-1:14.7.0": ("Hz", None),
        "1-1:1.7.0": ("W", 0),
        "1-1:1.8.0": ("Wh", 0),
    }
    for obis, (unit, scaler) in expected.items():
        assert registers[obis]["unit"] == unit
        if scaler is not None:
            assert registers[obis]["scaler"] == scaler
        # The value is the raw value with the scaler applied.
        raw, value = registers[obis]["raw"], registers[obis]["value"]
        assert value == pytest.approx(raw * 10 ** registers[obis]["scaler"], rel=1e-6)
    assert 100 < registers["1-1:32.7.0"]["value"] < 140
    assert 59 < registers["1-1:14.7.0"]["value"] < 61
    assert "multiple-references" in out["negotiated"]["conformance"]


async def test_read_over_the_wrapper(nursery: trio.Nursery) -> None:
    simulator = Simulator(SimulatorConfig(meters=1, port=0, transport="wrapper"))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    result = await cli(
        "read", *meter_args(ports), "--transport", "wrapper", "--server-logical", "1",
        "--password", "00000000", "1-1:1.8.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["registers"][0]["unit"] == "Wh"


async def test_read_with_a_password_file_and_a_trace(
    meters: SimulatorPorts, tmp_path: Path
) -> None:
    secret = tmp_path / "meter.pw"
    secret.write_text("00000000\n")
    result = await cli(
        "read", *meter_args(meters), "--password-file", str(secret), "--trace", "1-1:32.7.0"
    )
    assert result.returncode == 0, result.stderr.decode()
    trace = [json.loads(line) for line in result.stderr.decode().splitlines()]
    kinds = [(t["direction"], t["kind"], t.get("apdu", {}).get("kind")) for t in trace]
    assert kinds[:4] == [
        ("client->meter", "SNRM", None),
        ("meter->client", "UA", None),
        ("client->meter", "I", "aarq"),
        ("meter->client", "I", "aare"),
    ]
    assert ("client->meter", "I", "get-request-with-list") in kinds
    assert ("meter->client", "I", "get-response-with-list") in kinds
    assert kinds[-2:] == [("client->meter", "DISC", None), ("meter->client", "UA", None)]
    # The password never appears in the trace.
    assert b"00000000" not in result.stderr
    assert all(t["fcs_ok"] for t in trace)


async def test_list_objects(meters: SimulatorPorts) -> None:
    result = await cli("read", *meter_args(meters), "--password", "00000000", "--list-objects")
    assert result.returncode == 0, result.stderr.decode()
    objects = {(o["class_id"], o["obis"]) for o in json.loads(result.stdout)["objects"]}
    assert (15, "0-0:40.0.0") in objects
    assert (8, "0-0:1.0.0") in objects
    assert (3, "1-1:32.7.0") in objects
    assert (7, "1-0:99.1.0") in objects


async def test_profile_range(meters: SimulatorPorts) -> None:
    result = await cli(
        "read", *meter_args(meters), "--password", "00000000",
        "--profile", "1-0:99.1.0",
        "--from", "2000-01-01T00:00+00:00", "--to", "2100-01-01T00:00+00:00",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    profile = json.loads(result.stdout)["profile"]
    assert [c["obis"] for c in profile["columns"]][:2] == ["0-0:1.0.0", "1-1:1.8.0"]
    rows = profile["rows"]
    assert len(rows) > 100
    stamps = [row[0] for row in rows]
    assert stamps == sorted(stamps)
    assert stamps[1] > stamps[0]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--password", "12345678", "1-1:32.7.0"], 4, "password"),
        (["--password", "00000000", "1-1:99.99.9"], 5, "object-undefined"),
        (["--password", "00000000", "1-1:99"], 2, "not an OBIS code"),
        (["--password", "00000000"], 2, "nothing to read"),
    ],
)
async def test_read_failures_say_what_went_wrong(
    meters: SimulatorPorts, args: list[str], code: int, words: str
) -> None:
    result = await cli("read", *meter_args(meters), *args)
    assert result.returncode == code, result.stderr.decode()
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("read:")]
    assert len(errors) == 1
    assert words in errors[0]


async def test_read_an_unreachable_meter() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = await cli("read", "--host", "127.0.0.1", "--port", str(port), "1-1:32.7.0")
    assert result.returncode == 3
    assert result.stderr.decode().startswith("read: meter unreachable: cannot connect")


# -- decode ----------------------------------------------------------------------------------------


def vector_hex(vectors: dict[str, Any], name: str) -> str:
    return next(f["hex"] for f in vectors["frames"] if f["name"] == name)


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    from tests.codec.conftest import load_vectors

    return load_vectors()


async def test_decode_frames_and_apdus(vectors: dict[str, Any]) -> None:
    frames = [f["hex"] for f in vectors["frames"]]
    result = await cli("decode", *frames)
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    *decoded, summary = lines
    assert [d["kind"] for d in decoded] == ["SNRM", "UA", "I", "I", "UI", "UI", "I"]
    assert decoded[2]["apdu"]["kind"] == "aare"
    assert decoded[2]["apdu"]["result"] == "accepted"
    assert decoded[3]["apdu"]["kind"] == "data-notification"
    assert decoded[5]["apdu"]["kind"] == "general-block-transfer"
    assert decoded[6]["apdu"]["kind"] == "get-request-normal"
    assert decoded[6]["apdu"]["attribute"] == "1/1-0:32.32.0/1"
    assert summary["summary"]["frames"] == 7
    assert summary["summary"]["bytes_discarded"] == 0


async def test_decode_counts_what_it_skips(vectors: dict[str, Any]) -> None:
    aare = vector_hex(vectors, "aare-iframe")
    garbage = "7ea07e0011 22 7d 7e"
    result = await cli("decode", garbage, aare[:20], aare)
    assert result.returncode == 0, result.stderr.decode()
    *decoded, summary = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(decoded) == 1
    assert decoded[0]["apdu"]["kind"] == "aare"
    assert summary["summary"]["bytes_discarded"] > 0
    assert summary["summary"]["resyncs"] >= 1


async def test_decode_from_stdin_and_from_a_raw_file(
    vectors: dict[str, Any], tmp_path: Path
) -> None:
    raw = bytes.fromhex(vector_hex(vectors, "get-request-normal"))
    from_stdin = await cli("decode", stdin=raw.hex(" ").encode() + b"\n")
    path = tmp_path / "frame.bin"
    path.write_bytes(raw)
    from_file = await cli("decode", "--file", str(path))
    assert from_stdin.returncode == from_file.returncode == 0
    assert from_stdin.stdout == from_file.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["7e", "zz"], "word 2 ('zz') is not hex"),
        (["7ea"], "odd number of hex digits"),
        (["00112233"], "no valid HDLC frame found (4 bytes discarded)"),
        (["--file", "/nonexistent/frames.bin"], "No such file"),
    ],
)
async def test_decode_bad_input(args: list[str], words: str) -> None:
    result = await cli("decode", *args)
    assert result.returncode == 2
    assert words in result.stderr.decode()
