"""Secrets in traces and captures: ``read --trace`` and ``decode`` mask authentication values,
every capture file is 0600."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import trio

from bridge.pcap import PcapWriter
from bridge.session import MeterEndpoint, MeterSession
from bridge.simulator.meter import MeterSettings
from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorPorts
from codec import acse
from codec.acse import AARQ, AuthenticationMechanism, InitiateRequest
from codec.apdu import (
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    InvokeId,
    MethodDescriptor,
    encode_apdu,
)
from codec.axdr import Data
from codec.client import RegisterSpec
from codec.decoder import StreamDecoder, apdu_secret_spans
from codec.hdlc import FrameKind, HdlcAddress, encode_frame
from codec.obis import Obis
from tests.bridge.test_cli_read_decode import REPO, cli

PASSWORD = "Zq7-s3cr3t-PW!"


def leaks(output: bytes, secret: str = PASSWORD) -> list[str]:
    """The forms of ``secret`` found in ``output``: ASCII, hex (either case), spaced hex."""
    raw = secret.encode()
    forms = {
        "ascii": raw,
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "spaced hex": raw.hex(" ").encode(),
    }
    # A secret split over frames still leaves its middle in one of them: look for halves too.
    forms["hex half"] = raw[: len(raw) // 2].hex().encode()
    forms["hex tail"] = raw[len(raw) // 2 :].hex().encode()
    return [name for name, form in forms.items() if form in output]


@pytest.mark.parametrize(
    ("transport", "extra"),
    [("hdlc", []), ("hdlc", ["--max-info", "32"]), ("wrapper", ["--server-logical", "1"])],
    ids=["hdlc", "hdlc-segmented-aarq", "wrapper"],
)
async def test_read_trace_never_shows_the_password(
    nursery: trio.Nursery, tmp_path: Path, transport: str, extra: list[str]
) -> None:
    settings = MeterSettings(password=PASSWORD.encode())
    simulator = Simulator(
        SimulatorConfig(meters=1, port=0, transport=transport, settings=settings)  # type: ignore[arg-type]
    )
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    result = await cli(
        "read", "--host", ports.host, "--port", str(ports.meters[0]), "--transport", transport,
        "--password-file", str(secret), "--trace", *extra, "1-1:32.7.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    trace = [json.loads(line) for line in result.stderr.decode().splitlines()]
    aarq = [t for t in trace if t.get("apdu", {}).get("kind") == "aarq"]
    assert aarq and aarq[0]["apdu"]["password_length"] == len(PASSWORD)
    assert leaks(result.stderr + result.stdout) == []
    # The masked bytes are shown as such, and the checksum over them is withheld.
    hex_field = "payload" if transport == "wrapper" else "info"
    masked = [t for t in trace if "**" in t.get(hex_field, "")]
    assert masked and all(t["direction"] == "client->meter" for t in masked)
    if transport == "hdlc":
        assert all(t["fcs"] == "masked" for t in masked)
        if extra:
            assert len(masked) >= 2  # the password spans two segments of 32 bytes


def test_secret_spans_find_lls_and_hls_values() -> None:
    aarq = acse.encode_acse(
        AARQ(
            mechanism=AuthenticationMechanism.LOW,
            password=PASSWORD.encode(),
            initiate=InitiateRequest(),
        )
    )
    ((start, end),) = acse.secret_spans(aarq)
    assert PASSWORD.encode() in aarq[start:end]
    # Partial data (a first segment) still gives the span, running past its end.
    assert acse.secret_spans(aarq[: start + 3]) == [(start, end)]
    # The AARE's responding-authentication-value (an HLS challenge) is a secret as well.
    challenge = b"\x80\x10" + b"C" * 16
    aare = bytes([0x61, 4 + len(challenge), 0xAA, len(challenge)]) + challenge
    assert acse.secret_spans(aare) == [(4, 4 + len(challenge))]
    assert acse.mask_secrets(aare, acse.secret_spans(aare)).endswith("**" * len(challenge))
    # Nothing else is masked.
    assert acse.secret_spans(b"\xc0\x01\x81\x00\x03") == []
    assert acse.secret_spans(b"") == []


def test_decode_masks_a_password_even_in_a_malformed_aarq() -> None:
    aarq = acse.encode_acse(
        AARQ(
            mechanism=AuthenticationMechanism.LOW,
            password=PASSWORD.encode(),
            initiate=InitiateRequest(),
        )
    )
    broken = aarq[:-3]  # user-information cut short: the APDU does not decode
    frame = encode_frame(
        FrameKind.I, HdlcAddress.server(0, 1), HdlcAddress.client(1), info=b"\xe6\xe6\x00" + broken
    )
    (described,) = StreamDecoder().feed(frame)
    assert "error" in described["apdu"]
    assert leaks(json.dumps(described).encode()) == []
    assert "**" in described["apdu"]["hex"]


async def test_decode_cli_masks_the_password(tmp_path: Path) -> None:
    aarq = acse.encode_acse(
        AARQ(
            mechanism=AuthenticationMechanism.LOW,
            password=PASSWORD.encode(),
            initiate=InitiateRequest(),
        )
    )
    frame = encode_frame(
        FrameKind.I, HdlcAddress.server(0, 1), HdlcAddress.client(1), info=b"\xe6\xe6\x00" + aarq
    )
    result = await cli("decode", frame.hex())
    assert result.returncode == 0, result.stderr.decode()
    assert leaks(result.stdout + result.stderr) == []
    assert json.loads(result.stdout.splitlines()[0])["apdu"]["kind"] == "aarq"


def test_pcap_writer_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fresh = tmp_path / "fresh.pcap"
        PcapWriter(fresh).close()
        existing = tmp_path / "existing.pcap"
        existing.write_bytes(b"old")
        existing.chmod(0o666)
        PcapWriter(existing).close()
    finally:
        os.umask(old)
    for path in (fresh, existing):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_simulator_records_are_0600(nursery: trio.Nursery, tmp_path: Path) -> None:
    record = tmp_path / "records"
    simulator = Simulator(SimulatorConfig(meters=2, port=0, record_dir=str(record)))
    ports: SimulatorPorts = await nursery.start(simulator.serve)
    with trio.fail_after(20):
        session = MeterSession(MeterEndpoint(ports.host, ports.meters[0], password=b"00000000"))
        await session.open()
        await session.read_registers([RegisterSpec("1-1:32.7.0")])
        await session.release()
    files = sorted(record.iterdir())
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(record.stat().st_mode) == 0o700


async def test_capture_cli_writes_0600(tmp_path: Path) -> None:
    out = tmp_path / "session.pcap"
    out.write_bytes(b"")
    out.chmod(0o644)
    # The proxy writes its file header as soon as it starts.
    async with trio.open_nursery() as nursery:
        simulator = Simulator(SimulatorConfig(meters=1, port=0))
        ports: SimulatorPorts = await nursery.start(simulator.serve)
        proc = await nursery.start(
            lambda task_status: trio.run_process(
                [
                    sys.executable, "-m", "bridge.cli", "capture", "--listen", "0",
                    "--meter", f"127.0.0.1:{ports.meters[0]}", "--out", str(out),
                ],
                check=False, capture_stdout=True, capture_stderr=True, cwd=REPO,
                task_status=task_status,
            )
        )  # fmt: skip
        with trio.fail_after(30):
            while out.stat().st_size == 0:
                await trio.sleep(0.05)
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_reply_to_an_hls_challenge_is_masked() -> None:
    digest = b"f(StoC)-digest!!"
    reply = encode_apdu(
        ActionRequestNormal(
            InvokeId(1, confirmed=True, high_priority=True),
            MethodDescriptor(15, Obis(0, 0, 40, 0, 0, 255), 1),
            Data.octet_string(digest),
        )
    )
    frame = encode_frame(
        FrameKind.I, HdlcAddress.server(0, 1), HdlcAddress.client(1), info=b"\xe6\xe6\x00" + reply
    )
    (described,) = StreamDecoder().feed(frame)
    text = json.dumps(described).encode()
    assert leaks(text, digest.decode()) == []
    assert described["apdu"]["parameters"] == "masked"
    # Another method of the same object keeps its parameters visible.
    other = encode_apdu(
        ActionRequestNormal(
            InvokeId(1, confirmed=True, high_priority=True),
            MethodDescriptor(15, Obis(0, 0, 40, 0, 0, 255), 2),
            Data.octet_string(digest),
        )
    )
    assert apdu_secret_spans(other) == []


def test_the_meters_answer_to_an_hls_reply_is_masked_in_a_decoder_pair() -> None:
    association_ln = MethodDescriptor(15, Obis(0, 0, 40, 0, 0, 255), 1)
    invoke = InvokeId(5, confirmed=True, high_priority=True)
    reply = encode_apdu(ActionRequestNormal(invoke, association_ln, Data.octet_string(b"x" * 16)))
    f_ctos = b"meter-f(CtoS)!!!"
    answer = encode_apdu(
        ActionResponseNormal(invoke, ActionResult.SUCCESS, Data.octet_string(f_ctos))
    )
    client, server = HdlcAddress.client(1), HdlcAddress.server(0, 1)
    to_meter, to_client = StreamDecoder.pair()
    to_meter.feed(encode_frame(FrameKind.I, server, client, info=b"\xe6\xe6\x00" + reply))
    (described,) = to_client.feed(
        encode_frame(FrameKind.I, client, server, info=b"\xe6\xe7\x00" + answer)
    )
    assert leaks(json.dumps(described).encode(), f_ctos.decode()) == []
    assert described["apdu"]["return_data"] == "masked" and described["fcs"] == "masked"
    # The same answer to an ordinary ACTION (or seen without its request) is shown.
    (plain,) = StreamDecoder().feed(
        encode_frame(FrameKind.I, client, server, info=b"\xe6\xe7\x00" + answer)
    )
    assert f_ctos.hex() in plain["info"]
    # Once answered, the invoke-id is forgotten: a later answer with it is shown again.
    (later,) = to_client.feed(
        encode_frame(FrameKind.I, client, server, info=b"\xe6\xe7\x00" + answer, ns=1)
    )
    assert f_ctos.hex() in later["info"]
