"""Every subcommand against a table of bad command lines: exit 2, one clear line, no traceback.

The table runs in process (``bridge.cli.main``), so an exception escaping any command fails
the test with its traceback; a few lines from the table also run as real processes, the way a
user meets them.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import cli

REPO = Path(__file__).resolve().parents[2]
LONG_HOST = "a" * 300
LONG_LABELS = ".".join(["b" * 63] * 5)  # labels fine, 319 characters in all
READ = ["read", "--host", "127.0.0.1", "--port", "1"]
PROFILE = [*READ, "--profile", "1-0:99.1.0"]
CAPTURE = ["capture", "--listen", "0", "--meter", "h:1", "--out", "{out}"]
DIAGNOSE = ["diagnose", "--host", "h", "--port", "1"]
CLEAN_PCAP = str(REPO / "benchmarks" / "captures" / "clean.pcap")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Bad files of every kind, by name."""
    root = tmp_path_factory.mktemp("bad")
    made = {
        "binary": b"\x00\xffpw\x80\n",
        "empty": b"",
        "ctrl": b"pass\x07word\n",
        "good": b"00000000\n",
        "two-lines": b"first\nsecond\n",
        "huge": b"p" * 100_000,
        "garbage": b"this is not a capture at all\n" * 4,
        "bad_toml": b"[bridge\nname = \n",
        "binary_toml": b"\x00\x01\x02\xff\xfe",
    }
    out = {}
    for name, data in made.items():
        (root / name).write_bytes(data)
        out[name] = str(root / name)
    out["missing"] = str(root / "missing")
    out["dir"] = str(root)
    out["out"] = str(root / "capture.pcap")
    return out


# (argv, a word the message must contain). "{name}" is replaced by the path of a bad file.
BAD: list[tuple[list[str], str]] = [
    # the command itself
    (["frob"], "invalid choice"),
    (["--bogus"], "unrecognized"),
    # read
    ([*READ[:-1], "70000", "1-1:32.7.0"], "--port"),
    ([*READ[:-1], "0", "1-1:32.7.0"], "--port"),
    ([*READ[:-1], "-1", "1-1:32.7.0"], "--port"),
    ([*READ[:-1], "4059.5", "1-1:32.7.0"], "--port"),
    ([*READ, "--timeout", "nan", "1-1:32.7.0"], "finite"),
    ([*READ, "--timeout", "inf", "1-1:32.7.0"], "finite"),
    ([*READ, "--timeout", "-1", "1-1:32.7.0"], "--timeout"),
    ([*READ, "--timeout", "0", "1-1:32.7.0"], "--timeout"),
    ([*READ, "--timeout", "1e309", "1-1:32.7.0"], "finite"),
    ([*READ, "--request-timeout", "nan", "1-1:32.7.0"], "--request-timeout"),
    ([*READ, "--retries", "-1", "1-1:32.7.0"], "--retries"),
    ([*READ, "--retries", "1e3", "1-1:32.7.0"], "--retries"),
    ([*READ, "--client-sap", "300", "1-1:32.7.0"], "--client-sap"),
    ([*READ, "--server-logical", "99999", "1-1:32.7.0"], "--server-logical"),
    ([*READ, "--server-physical", "-2", "1-1:32.7.0"], "--server-physical"),
    ([*READ, "--server-address-size", "3", "1-1:32.7.0"], "--server-address-size"),
    ([*READ, "--server-address-size", "1", "--server-logical", "5", "1-1:32.7.0"], "logical"),
    ([*READ, "--max-info", "5", "1-1:32.7.0"], "--max-info"),
    ([*READ, "--max-info", "99999", "1-1:32.7.0"], "--max-info"),
    ([*READ, "--transport", "serial", "1-1:32.7.0"], "--transport"),
    (["read", "--host", LONG_HOST, "--port", "4059", "1-1:32.7.0"], "host name"),
    (["read", "--host", LONG_LABELS, "--port", "4059", "1-1:32.7.0"], "too long"),
    (["read", "--host", "bad host", "--port", "4059", "1-1:32.7.0"], "space"),
    (["read", "--host", "", "--port", "4059", "1-1:32.7.0"], "empty"),
    (["read", "--host", "a..b", "--port", "4059", "1-1:32.7.0"], "host name"),
    ([*READ, "--password-file", "{binary}", "1-1:32.7.0"], "not a text file"),
    ([*READ, "--password-file", "{missing}", "1-1:32.7.0"], "cannot read"),
    ([*READ, "--password-file", "{dir}", "1-1:32.7.0"], "directory"),
    ([*READ, "--password-file", "{empty}", "1-1:32.7.0"], "empty"),
    ([*READ, "--password-file", "{ctrl}", "1-1:32.7.0"], "position 5"),
    ([*READ, "--password-file", "{two-lines}", "1-1:32.7.0"], "line break"),
    ([*READ, "--password-file", "{huge}", "1-1:32.7.0"], "too large"),
    ([*READ, "--password", "pass\x1bword", "1-1:32.7.0"], "control character"),
    ([*READ, "--password", "p" * 2000, "1-1:32.7.0"], "at most"),
    ([*READ, "--password", "a", "--password-file", "{good}", "1-1:32.7.0"], "not allowed"),
    ([*PROFILE, "--entries", "a:b"], "--entries"),
    ([*PROFILE, "--entries", "5:2"], "--entries"),
    ([*PROFILE, "--entries", "0:2"], "--entries"),
    ([*PROFILE, "--entries", "1:99999999999"], "--entries"),
    ([*PROFILE, "--from", "2024-01-01"], "--to"),
    ([*PROFILE, "--from", "yesterday", "--to", "today"], "ISO"),
    ([*READ, "--profile", "1-0:99"], "OBIS"),
    ([*READ, "x/1-1:1.8.0"], "class"),
    ([*READ, "1/1-1:1.8.0/999"], "attribute"),
    ([*READ, "1-1:1.8.0/2/3/4"], "expected OBIS"),
    ([*READ, "zz"], "OBIS"),
    (READ, "nothing to read"),
    # decode
    (["decode", "zz"], "not hex"),
    (["decode", "0"], "odd"),
    (["decode", "--file", "{missing}"], "missing"),
    (["decode", "--file", "{dir}"], "directory"),
    (["decode", "--file", "{empty}"], "no bytes"),
    (["decode", "--file", "{garbage}"], "no valid"),
    (["decode", "--pcap", "{missing}"], "missing"),
    (["decode", "--pcap", "{garbage}"], "pcap"),
    (["decode", "--pcap", "{dir}"], "decode"),
    (["decode", "--transport", "x", "7e"], "--transport"),
    # simulate
    (["simulate", "--meters", "0"], "--meters"),
    (["simulate", "--meters", "x"], "--meters"),
    (["simulate", "--meters", "99999999"], "--meters"),
    (["simulate", "--port", "70000"], "--port"),
    (["simulate", "--port", "65535", "--meters", "5"], "65535"),
    (["simulate", "--control-port", "-5"], "--control-port"),
    (["simulate", "--inactivity-timeout", "nan"], "--inactivity-timeout"),
    (["simulate", "--inactivity-timeout", "-1"], "--inactivity-timeout"),
    (["simulate", "--max-info", "5"], "--max-info"),
    (["simulate", "--max-pdu", "1e9"], "--max-pdu"),
    (["simulate", "--faults", "bogus"], "--faults"),
    (["simulate", "--seed", "x"], "--seed"),
    (["simulate", "--host", LONG_HOST], "--host"),
    (["simulate", "--model", "x"], "--model"),
    # capture
    (["capture", "--listen", "70000", "--meter", "h:1", "--out", "{out}"], "--listen"),
    (["capture", "--listen", "0", "--meter", "nohost", "--out", "{out}"], "--meter"),
    (["capture", "--listen", "0", "--meter", "h:0", "--out", "{out}"], "--meter"),
    (["capture", "--listen", "0", "--meter", "h:99999", "--out", "{out}"], "--meter"),
    (["capture", "--listen", "0", "--meter", f"{LONG_HOST}:1", "--out", "{out}"], "--meter"),
    ([*CAPTURE, "--connect-timeout", "nan"], "--connect-timeout"),
    (["capture", "--listen", "0", "--meter", "h:1", "--out", "/nonexistent/x.pcap"], "--out"),
    (["capture", "--listen", "0", "--meter", "h:1", "--out", "{dir}"], "--out"),
    ([*CAPTURE, "--listen-host", LONG_HOST], "--listen-host"),
    # replay
    (["replay", CLEAN_PCAP, "--port", "70000"], "--port"),
    (["replay", CLEAN_PCAP, "--port", "0", "--speed", "nan"], "--speed"),
    (["replay", CLEAN_PCAP, "--port", "0", "--speed", "-1"], "--speed"),
    (["replay", CLEAN_PCAP, "--port", "0", "--session", "-1"], "--session"),
    (["replay", CLEAN_PCAP, "--port", "0", "--session", "99"], "session"),
    (["replay", CLEAN_PCAP, "--port", "0", "--host", LONG_HOST], "--host"),
    (["replay", CLEAN_PCAP], "--port"),
    (["replay", "{missing}", "--port", "0"], "missing"),
    (["replay", "{garbage}", "--port", "0"], "pcap"),
    # run
    (["run", "--config", "{missing}", "--log-level", "loud"], "--log-level"),
    (["run", "--config", "{missing}"], "missing"),
    (["run", "--config", "{dir}"], "cannot"),
    (["run", "--config", "{binary_toml}"], "binary_toml"),
    (["run", "--config", "{bad_toml}"], "bad_toml"),
    (["run"], "--config"),
    # check-config
    (["check-config", "{missing}"], "missing"),
    (["check-config", "{dir}"], "cannot"),
    (["check-config", "{binary_toml}"], "binary_toml"),
    (["check-config", "{bad_toml}"], "bad_toml"),
    # health
    (["health", "--timeout", "nan"], "--timeout"),
    (["health", "--timeout", "0"], "--timeout"),
    (["health", "--wait", "-1"], "--wait"),
    (["health", "--wait", "inf"], "--wait"),
    # diagnose
    (["diagnose"], "say which meter"),
    (["diagnose", "--host", "127.0.0.1"], "--port"),
    (["diagnose", "--meter", "x"], "--config"),
    (["diagnose", "--host", "127.0.0.1", "--port", "70000"], "--port"),
    (["diagnose", "--host", LONG_HOST, "--port", "1"], "--host"),
    (["diagnose", "--host", "h", "--port", "1", "--timeout", "nan"], "--timeout"),
    (["diagnose", "--host", "h", "--port", "1", "--retries", "-1"], "--retries"),
    (["diagnose", "--host", "h", "--port", "1", "--client-sap", "300"], "--client-sap"),
    (["diagnose", "--host", "h", "--port", "1", "--max-info", "1"], "--max-info"),
    (["diagnose", "--host", "h", "--port", "1", "--idle", "nan"], "--idle"),
    (["diagnose", "--host", "h", "--port", "1", "--takeover-wait", "-1"], "--takeover-wait"),
    (["diagnose", "--host", "h", "--port", "1", "--password-file", "{binary}"], "text file"),
    ([*DIAGNOSE, "--server-address-size", "1", "--server-logical", "3"], "logical"),
    (["diagnose", "--host", "h", "--port", "1", "x/1-1:1.8.0"], "class"),
    (["diagnose", "--config", "{missing}", "--meter", "x"], "missing"),
    # scan
    (["scan", "127.0.0.1", "--ports", "70000"], "--ports"),
    (["scan", "127.0.0.1", "--ports", "a-b"], "--ports"),
    (["scan", "10.0.0.0/8"], "--force"),
    (["scan", LONG_HOST], "not a valid host name"),
    (["scan", "127.0.0.1", "--concurrency", "0"], "--concurrency"),
    (["scan", "127.0.0.1", "--timeout", "nan"], "--timeout"),
    (["scan", "127.0.0.1", "--client-sap", "999"], "--client-sap"),
    (["scan", "127.0.0.1", "--password-file", "{dir}"], "directory"),
    (["scan", "10.0.0.5-3"], "range"),
    (["scan"], "TARGET"),
    # demo
    (["demo", "--meters", "0"], "--meters"),
    (["demo", "--interval", "nan"], "--interval"),
    (["demo", "--interval", "0"], "--interval"),
    (["demo", "--duration", "-1"], "--duration"),
    (["demo", "--mqtt-port", "70000"], "--mqtt-port"),
    (["demo", "--sim-port", "-1"], "--sim-port"),
    (["demo", "--log-level", "loud"], "--log-level"),
    (["demo", "--broker", "x"], "--broker"),
    (["demo", "--faults", "bogus"], "--faults"),
]
#: Commands that list every error of a config file, one per line, by design.
MANY_LINES = {"check-config", "run"}
#: Other commands given a bad config file report it the same way.
CONFIG_OPTIONS = {"--config", "-c"}


def _argv(argv: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) if a.startswith("{") else a for a in argv]


def _run_in_process(
    argv: list[str], capsys: pytest.CaptureFixture[str], stdin: bytes = b""
) -> tuple[int, str]:
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = old
    return code, capsys.readouterr().err


def test_every_subcommand_is_in_the_table() -> None:
    covered = {argv[0] for argv, _ in BAD}
    assert set(cli.COMMANDS) <= covered


@pytest.mark.parametrize(("argv", "word"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_exits_2_with_one_clear_line(
    argv: list[str], word: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    real = _argv(argv, files)
    code, err = _run_in_process(real, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines, "no message at all"
    if argv[0] not in MANY_LINES and not CONFIG_OPTIONS & set(argv):
        assert len(lines) == 1, err
    expected = word.format(**files) if "{" in word else word
    assert expected in err or expected in files.get(word, ""), err
    # No message quotes a 300-character host whole.
    assert LONG_HOST not in err
    # Secrets given on the line never come back.
    for secret in ("pass\x1bword", "p" * 2000):
        assert secret not in err


@pytest.mark.parametrize(
    ("data", "word"),
    [(b"7e zz 7e", "not hex"), (b"\xff\xfe\x00", "not ASCII"), (b"abc", "odd"), (b"", "no bytes")],
)
def test_decode_stdin_bad_input(data: bytes, word: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run_in_process(["decode"], capsys, stdin=data)
    assert code == 2 and word in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["read", "--host", LONG_HOST, "--port", "4059", "1-1:32.7.0"],
        ["read", "--host", "127.0.0.1", "--port", "70000", "1-1:32.7.0"],
        ["read", "--host", "127.0.0.1", "--port", "1", "--timeout", "nan", "1-1:32.7.0"],
        ["read", "--host", "127.0.0.1", "--port", "1", "--password-file", "{binary}", "1.8.0"],
        [*PROFILE, "--entries", "a:b"],
        ["run", "--config", "{missing}", "--log-level", "loud"],
    ],
    ids=["long-host", "port-70000", "timeout-nan", "binary-password", "entries", "log-level"],
)
def test_bad_input_as_a_real_process(argv: list[str], files: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *_argv(argv, files)],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert result.stdout == b""
