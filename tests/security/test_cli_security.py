"""``read --security`` and ``simulate --security`` as a user runs them: real processes, sockets."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import trio

from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from codec.acse import AuthenticationMechanism as M
from codec.security import SecurityPolicy as P
from tests.bridge.test_cli_read_decode import REPO, cli
from tests.security.test_secured_simulator import AK, EK, METER_TITLE, SECRET, meter_settings

GMAC = [
    "--security",
    "hls-gmac",
    "--block-cipher-key",
    EK.hex(),
    "--authentication-key",
    AK.hex(),
]


@pytest.fixture
async def secured(nursery: trio.Nursery) -> tuple[Simulator, SimulatorPorts]:
    simulator = Simulator(
        SimulatorConfig(port=0, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED))
    )
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    return simulator, ports


def where(ports: SimulatorPorts, tmp_path: Path) -> list[str]:
    return ["--host", ports.host, "--port", str(ports.meters[0]), "--counter-dir", str(tmp_path)]


async def test_read_hls_gmac_twice_with_ciphered_requests(
    secured: tuple[Simulator, SimulatorPorts], tmp_path: Path
) -> None:
    sim, ports = secured
    for _ in range(2):  # the second run continues the counter kept on disk
        done = await cli("read", *where(ports, tmp_path), *GMAC, "--trace", "1-1:32.7.0")
        assert done.returncode == 0, done.stderr.decode()
        result = json.loads(done.stdout)
        assert 110 < result["registers"][0]["value"] < 130
        assert result["security"]["policy"] == "authenticated-encrypted"
        assert result["security"]["meter_system_title"] == METER_TITLE.hex().upper()
    trace = [json.loads(line) for line in done.stderr.decode().splitlines()]
    kinds = [item["apdu"]["kind"] for item in trace if "apdu" in item]
    assert kinds[:2] == ["aarq", "aare"]
    assert "glo-get-request" in kinds and "glo-get-response" in kinds
    assert "get-request-normal" not in kinds and "get-request-with-list" not in kinds
    aarq = next(i["apdu"] for i in trace if i.get("apdu", {}).get("kind") == "aarq")
    initiate = aarq["ciphered_user_information"]
    assert initiate["kind"] == "glo-initiate-request"
    assert initiate["security"]["policy"] == "authenticated-encrypted"
    assert initiate["content"]["kind"] == "initiate-request"
    request = next(i["apdu"] for i in trace if i.get("apdu", {}).get("kind") == "glo-get-request")
    assert request["content"]["kind"] in ("get-request-normal", "get-request-with-list")
    # The release is ciphered both ways, and deciphered in the trace.
    assert kinds[-2:] == ["rlrq", "rlre"]
    rlrq, rlre = [i["apdu"] for i in trace if i.get("apdu", {}).get("kind") in ("rlrq", "rlre")]
    assert rlrq["ciphered_user_information"]["kind"] == "glo-initiate-request"
    assert rlrq["ciphered_user_information"]["content"]["kind"] == "initiate-request"
    assert rlre["ciphered_user_information"]["kind"] == "glo-initiate-response"
    assert rlre["ciphered_user_information"]["content"]["kind"] == "initiate-response"
    text = done.stderr.decode().lower() + done.stdout.decode().lower()
    assert EK.hex() not in text and AK.hex() not in text
    assert sim.meter(0).counters.associations == 2
    assert list((tmp_path / "counters").glob("*.ic"))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (["--authentication-key", "00" * 16], "association.wrong_authentication_key"),
        (["--block-cipher-key", "00" * 16], "association.wrong_block_cipher_key"),
        (["--security-policy", "authenticated"], "association.policy_mismatch"),
        (["--meter-system-title", "0102030405060708"], "association.wrong_system_title"),
    ],
)
async def test_read_refusals_exit_4_with_a_distinct_message(
    secured: tuple[Simulator, SimulatorPorts], tmp_path: Path, change: list[str], code: str
) -> None:
    args = list(GMAC)
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += change
    done = await cli("read", *where(ports := secured[1], tmp_path), *args, "1-1:32.7.0")
    assert ports
    assert done.returncode == 4, done.stderr.decode()
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"[{code}]" in lines[0]
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--security", "hls-gmac"], "--block-cipher-key: required"),
        ([*GMAC[:3], "0011", *GMAC[4:]], "--block-cipher-key: must be 16 bytes"),
        (["--block-cipher-key", EK.hex()], "--block-cipher-key needs --security"),
        ([*GMAC, "--system-title", "xyz"], "--system-title: not hexadecimal"),
        (["--security", "hls-md5"], "--password: hls-md5 needs the secret"),
    ],
)
async def test_read_bad_security_options_exit_2(args: list[str], words: str) -> None:
    done = await cli("read", "--host", "127.0.0.1", "--port", "1", *args, "1-1:32.7.0")
    assert done.returncode == 2
    assert words in done.stderr.decode()
    assert EK.hex() not in done.stderr.decode()


async def test_simulate_security_then_read(nursery: trio.Nursery, tmp_path: Path) -> None:
    """``simulate --security hls-gmac`` in its own process, read by ``read``."""
    out_path = tmp_path / "sim.out"
    with out_path.open("wb") as out:
        proc = await nursery.start(
            lambda task_status: trio.run_process(
                [
                    sys.executable, "-m", "bridge.cli", "simulate", "--port", "0",
                    "--system-title", METER_TITLE.hex(), *GMAC,
                ],
                task_status=task_status,
                check=False,
                stdout=out,
                cwd=REPO,
            )
        )  # fmt: skip
    try:
        with trio.fail_after(20):
            while b"ready" not in out_path.read_bytes():
                await trio.sleep(0.05)
        port = re.search(rb"port (\d+)", out_path.read_bytes())
        assert port is not None
        where = ["--host", "127.0.0.1", "--port", port[1].decode(), "--counter-dir", str(tmp_path)]
        done = await cli(
            "read", *where, *GMAC, "--meter-system-title", METER_TITLE.hex(), "1-1:1.8.0"
        )
        assert done.returncode == 0, done.stderr.decode()
        wrong = await cli(
            "read", *where, "--security", "hls-gmac", "--block-cipher-key", EK.hex(),
            "--authentication-key", "11" * 16, "1-1:1.8.0",
        )  # fmt: skip
        assert wrong.returncode == 4
        assert "wrong authentication key" in wrong.stderr.decode()
    finally:
        proc.terminate()


async def test_decode_deciphers_a_recorded_capture(nursery: trio.Nursery, tmp_path: Path) -> None:
    simulator = Simulator(
        SimulatorConfig(
            port=0,
            settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED),
            record_dir=str(tmp_path / "pcap"),
        )
    )
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    done = await cli("read", *where(ports, tmp_path), *GMAC, "1-1:32.7.0")
    assert done.returncode == 0, done.stderr.decode()
    with trio.fail_after(10):
        while not list((tmp_path / "pcap").glob("*.pcap")):
            await trio.sleep(0.05)
    (capture,) = (tmp_path / "pcap").glob("*.pcap")
    keys = ["--block-cipher-key", EK.hex(), "--authentication-key", AK.hex()]
    decoded = await cli("decode", "--pcap", str(capture), *keys)
    assert decoded.returncode == 0, decoded.stderr.decode()
    apdus = [json.loads(line).get("apdu") for line in decoded.stdout.decode().splitlines()]
    contents = [
        a["content"]["kind"]
        for a in apdus
        if a
        and a.get("kind", "").startswith("glo-")
        and isinstance(a.get("content"), dict)
        and "kind" in a["content"]
    ]
    assert "get-request-with-list" in contents or "get-request-normal" in contents
    assert "get-response-with-list" in contents or "get-response-normal" in contents
    without = await cli("decode", "--pcap", str(capture))
    kinds = [
        json.loads(line).get("apdu", {}).get("kind")
        for line in without.stdout.decode().splitlines()
    ]
    assert "glo-get-request" in kinds
    assert AK.hex() not in decoded.stdout.decode().lower()


async def test_trace_never_shows_the_hls_secret(nursery: trio.Nursery, tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(port=0, settings=meter_settings(M.HIGH_SHA256, None)))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    secret = SECRET.decode()
    done = await cli(
        "read", *where(ports, tmp_path), "--security", "hls-sha256", "--password", secret,
        "--system-title", "444C420000000009", "--trace", "1-1:32.7.0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    output = (done.stdout + done.stderr).decode()
    assert secret not in output and SECRET.hex() not in output.lower()
    assert '"mechanism":"high-sha256"' in output
    wrong = await cli(
        "read", *where(ports, tmp_path), "--security", "hls-sha256", "--password", "nope-nope",
        "--system-title", "444C420000000009", "1-1:32.7.0",
    )  # fmt: skip
    assert wrong.returncode == 4
    assert "[association.wrong_secret]" in wrong.stderr.decode()


async def test_diagnose_with_security_options(
    secured: tuple[Simulator, SimulatorPorts], tmp_path: Path
) -> None:
    _, ports = secured
    done = await cli("diagnose", *where(ports, tmp_path), *GMAC)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert "every step passed" in done.stdout.decode()
    args = [*GMAC[:5], "00" * 16]
    wrong = await cli("diagnose", *where(ports, tmp_path), *args)
    assert wrong.returncode == 1
    out = wrong.stdout.decode()
    assert "FAIL  association: wrong authentication key" in out
    assert "check authentication_key" in out
    assert AK.hex() not in out.lower() and EK.hex() not in out.lower()


async def test_diagnose_a_configured_secured_meter(
    secured: tuple[Simulator, SimulatorPorts], tmp_path: Path
) -> None:
    _, ports = secured
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[bridge]
data_dir = "{tmp_path / "data"}"
[mqtt]
host = "127.0.0.1"
[[meters]]
name = "secured"
host = "127.0.0.1"
port = {ports.meters[0]}
registers = "field-meter"
security = "hls-gmac"
block_cipher_key = "{EK.hex()}"
authentication_key_file = "{tmp_path / "ak"}"
"""
    )
    (tmp_path / "ak").write_text(AK.hex() + "\n")
    done = await cli("diagnose", "--config", str(config), "--meter", "secured", "--no-mqtt")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    # The service's counter file, shared safely with a running service.
    assert list((tmp_path / "data" / "counters").glob("secured-*.ic"))
