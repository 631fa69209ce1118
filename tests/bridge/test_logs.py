"""Structured log lines: exact output for journald and for a terminal."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from bridge.logs import LogfmtFormatter, format_value, log_event, setup_logging, syslog_priority


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (setup_logging changes it)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(
    name: str = "bridge.poller", *, journald: bool = True, timestamps: bool = False
) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(journald_prefix=journald, timestamps=timestamps))
    # A logger outside the logging tree: no parent, no other handlers.
    logger = logging.Logger(name, logging.DEBUG)
    logger.addHandler(handler)
    return logger, stream


def test_event_with_adapter_context() -> None:
    logger, out = capture()
    log = logging.LoggerAdapter(logger, {"meter": "m1"})
    log_event(log, logging.INFO, "connected", host="127.0.0.1:4061")
    assert out.getvalue() == "<6>poller meter=m1 event=connected host=127.0.0.1:4061\n"


def test_priorities() -> None:
    logger, out = capture("bridge.mqtt")
    log_event(logger, logging.DEBUG, "a")
    log_event(logger, logging.INFO, "b")
    log_event(logger, logging.WARNING, "c")
    log_event(logger, logging.ERROR, "d")
    log_event(logger, logging.CRITICAL, "e")
    assert out.getvalue().splitlines() == [
        "<7>mqtt event=a",
        "<6>mqtt event=b",
        "<4>mqtt event=c",
        "<3>mqtt event=d",
        "<2>mqtt event=e",
    ]
    assert [syslog_priority(n) for n in (5, 15, 25, 35, 45, 55)] == [7, 7, 6, 4, 3, 2]


def test_message_and_extras() -> None:
    logger, out = capture("other.lib")
    logger.warning("queue %s at %d%%", "outbox", 95, extra={"rows": 950, "limit": 1000})
    assert out.getvalue() == "<4>other.lib queue outbox at 95% rows=950 limit=1000\n"


def test_field_names_that_logrecord_reserves() -> None:
    logger, out = capture()
    log_event(logger, logging.INFO, "read", name="voltage_l1", module="x", msg="y")
    assert out.getvalue() == "<6>poller event=read name=voltage_l1 module=x msg=y\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("tab\there", '"tab\\there"'),
        ("bell\x07", '"bell\\u0007"'),
        ("Grüße", "Grüße"),
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-1, "-1"),
        (0.1, "0.1"),
        (float("nan"), "nan"),
        (125.0, "125.0"),
        (b"\x7e\xa0", "7ea0"),
        (b"", '""'),
        (
            ConnectionRefusedError(111, "Connection refused"),
            '"ConnectionRefusedError: [Errno 111] Connection refused"',
        ),
        (TimeoutError(), "TimeoutError"),
    ],
)
def test_value_quoting(value: object, text: str) -> None:
    assert format_value(value) == text


def test_keys_are_made_safe() -> None:
    logger, out = capture()
    logger.info("", extra={"dlms_fields": {"a b": 1, "": 2, "x=y": 3}})
    assert out.getvalue() == "<6>poller a_b=1 _=2 x_y=3\n"


def test_multiline_message_stays_on_one_line() -> None:
    logger, out = capture()
    logger.error("first\nsecond\r\nthird")
    assert out.getvalue() == "<3>poller first\\nsecond\\r\\nthird\n"


def test_traceback_lines_keep_the_priority() -> None:
    logger, out = capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"meter": "m1"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "<3>poller failed meter=m1"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<3>") for line in lines)


def test_terminal_format_has_time_and_level() -> None:
    logger, out = capture(journald=False, timestamps=True)
    log_event(logger, logging.WARNING, "timeout", meter="m2", after_s=5.0)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
        r"WARNING poller event=timeout meter=m2 after_s=5.0\n",
        out.getvalue(),
    ), out.getvalue()


def test_disabled_level_is_not_rendered() -> None:
    logger, out = capture()
    logger.setLevel(logging.INFO)
    log_event(logger, logging.DEBUG, "noise")
    assert out.getvalue() == ""


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_setup_logging_auto_detection(root_logger: logging.Logger) -> None:
    # Not a terminal: journald prefixes, no timestamps.
    pipe = io.StringIO()
    setup_logging("info", stream=pipe, environ={})
    log_event(logging.getLogger("bridge.service"), logging.INFO, "started", meters=3)
    logging.getLogger("bridge.service").debug("hidden at info")
    assert pipe.getvalue() == "<6>service event=started meters=3\n"

    # A terminal: timestamps. Calling again replaces the previous handler.
    tty = _Tty()
    setup_logging("debug", stream=tty, environ={})
    logging.getLogger("bridge.service").debug("shown")
    assert pipe.getvalue() == "<6>service event=started meters=3\n"
    assert re.fullmatch(r"\S+ \S+ DEBUG   service shown\n", tty.getvalue()), tty.getvalue()

    # A terminal, but stdout is connected to the journal (JOURNAL_STREAM): prefixes.
    tty2 = _Tty()
    setup_logging(logging.WARNING, stream=tty2, environ={"JOURNAL_STREAM": "8:12345"})
    logging.getLogger("bridge.service").warning("slow")
    assert tty2.getvalue() == "<4>service slow\n"

    forced = _Tty()
    setup_logging("info", stream=forced, journald_prefix=True, environ={})
    logging.getLogger("x").info("y")
    assert forced.getvalue() == "<6>x y\n"
    ours = [h for h in root_logger.handlers if isinstance(h.formatter, LogfmtFormatter)]
    assert len(ours) == 1


def test_setup_logging_rejects_unknown_level(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("loud", stream=io.StringIO())
