"""Meter security settings as the operator writes them: names, hex values, checks, CLI options.

One place for what ``security = "hls-gmac"`` means, what ``security_policy`` defaults to, how a
system title or key is spelled and checked, and how the configuration or the command line turns
into the codec's :class:`~codec.association.SecuritySettings` (client) or the simulator's
:class:`~bridge.simulator.meter.MeterSecurity` (meter). Key values never appear in an error.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.counters import PersistentCounter, counter_path
from codec.acse import AuthenticationMechanism
from codec.association import SecuritySettings
from codec.security import (
    KEY_LENGTH,
    SYSTEM_TITLE_LENGTH,
    InvocationCounterSource,
    MemoryCounter,
    SecurityKeys,
    SecurityPolicy,
)

if TYPE_CHECKING:
    from bridge.config import MeterConfig

__all__ = [
    "DEFAULT_POLICY",
    "MECHANISMS",
    "POLICIES",
    "SecurityOptions",
    "add_arguments",
    "check",
    "client_settings_for",
    "default_system_title",
    "options_for",
    "options_from_args",
    "parse_hex",
]

#: ``security = ...`` values and the mechanism each names.
MECHANISMS: dict[str, AuthenticationMechanism] = {
    "none": AuthenticationMechanism.NONE,
    "lls": AuthenticationMechanism.LOW,
    "hls-md5": AuthenticationMechanism.HIGH_MD5,
    "hls-sha1": AuthenticationMechanism.HIGH_SHA1,
    "hls-sha256": AuthenticationMechanism.HIGH_SHA256,
    "hls-gmac": AuthenticationMechanism.HIGH_GMAC,
}


def mechanism_name(mechanism: AuthenticationMechanism) -> str:
    """The ``security = ...`` name of a mechanism (``hls-gmac``)."""
    return next((k for k, v in MECHANISMS.items() if v == mechanism), mechanism.name.lower())


#: ``security_policy = ...`` values ("none": no ciphering).
POLICIES: dict[str, SecurityPolicy | None] = {
    "none": None,
    "authenticated": SecurityPolicy.AUTHENTICATED,
    "encrypted": SecurityPolicy.ENCRYPTED,
    "authenticated-encrypted": SecurityPolicy.AUTHENTICATED_ENCRYPTED,
}
#: The policy used when none is given: HLS-GMAC needs the keys anyway, so it ciphers
#: everything; the other mechanisms cipher only when keys are given.
DEFAULT_POLICY = "authenticated-encrypted"


def parse_hex(text: str, length: int, what: str) -> bytes:
    """``text`` as ``length`` bytes of hex (spaces, colons allowed); ValueError names ``what``.

    The value itself is never part of the message: it may be a key.
    """
    cleaned = "".join(text.split()).replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise ValueError(f"{what}: not hexadecimal") from None
    if len(raw) != length:
        raise ValueError(
            f"{what}: must be {length} bytes ({2 * length} hex digits), got {len(raw)}"
        )
    return raw


def default_system_title(instance: str) -> bytes:
    """The client system title of this instance: ``DLB`` and 5 bytes of a stable hash.

    ``instance`` is anything that tells installations apart (machine id and data directory).
    """
    return b"DLB" + hashlib.sha256(instance.encode()).digest()[:5]


class SecurityOptions:
    """What the operator asked for, checked: mechanism, policy, titles, keys."""

    def __init__(
        self,
        mechanism: str,
        policy: str | None = None,
        *,
        system_title: bytes | None = None,
        meter_system_title: bytes | None = None,
        block_cipher_key: bytes | None = None,
        authentication_key: bytes | None = None,
        secret: bytes | None = None,
        dedicated_key: bool = False,
    ) -> None:
        self.mechanism_name = mechanism
        self.mechanism = MECHANISMS[mechanism]
        self.policy_name = policy if policy is not None else self.default_policy()
        self.policy = POLICIES[self.policy_name]
        self.system_title = system_title
        self.meter_system_title = meter_system_title
        self.block_cipher_key = block_cipher_key
        self.authentication_key = authentication_key
        self.secret = secret
        self.dedicated_key = dedicated_key

    def __repr__(self) -> str:
        return f"SecurityOptions({self.mechanism_name}, {self.policy_name}, <keys hidden>)"

    def default_policy(self) -> str:
        """``authenticated-encrypted`` with HLS-GMAC, else ``none``."""
        return DEFAULT_POLICY if self.mechanism_name == "hls-gmac" else "none"

    @property
    def keys(self) -> SecurityKeys | None:
        """Both keys, when both are given."""
        if self.block_cipher_key is None or self.authentication_key is None:
            return None
        return SecurityKeys(self.block_cipher_key, self.authentication_key)

    def client_settings(
        self, counter: InvocationCounterSource | None = None, *, system_title: bytes | None = None
    ) -> SecuritySettings | None:
        """The codec's settings (None for ``none`` and ``lls`` without ciphering)."""
        if self.policy is None and self.mechanism_name in ("none", "lls"):
            return None
        title = self.system_title or system_title
        if title is None:
            raise ValueError("system_title: required with ciphering or HLS")
        return SecuritySettings(
            mechanism=self.mechanism,
            policy=self.policy,
            system_title=title,
            keys=self.keys,
            secret=self.secret,
            dedicated_key=self.dedicated_key,
            counter=counter or MemoryCounter(),
            server_system_title=self.meter_system_title,
            server_counters=counter.load_peers() if isinstance(counter, PersistentCounter) else {},
        )


def check(options: SecurityOptions) -> list[tuple[str, str]]:
    """Problems with the combination, as ``(key, message)``; empty if it can be used."""
    problems: list[tuple[str, str]] = []
    name = options.mechanism_name
    ciphered = options.policy is not None
    if name == "none" and ciphered:
        problems.append(
            ("security_policy", 'ciphering needs an authentication mechanism (e.g. "hls-gmac")')
        )
    if name == "hls-gmac" and not ciphered and options.keys is None:
        problems.append(
            ("authentication_key", "hls-gmac needs block_cipher_key and authentication_key")
        )
    if ciphered or name == "hls-gmac":
        if options.block_cipher_key is None:
            problems.append(("block_cipher_key", f"required with {_why(options)}"))
        if options.authentication_key is None:
            problems.append(("authentication_key", f"required with {_why(options)}"))
    elif options.block_cipher_key is not None or options.authentication_key is not None:
        given = "block_cipher_key" if options.block_cipher_key is not None else "authentication_key"
        problems.append((given, 'only used with ciphering or hls-gmac (security_policy is "none")'))
    if name in ("hls-md5", "hls-sha1", "hls-sha256", "lls") and options.secret is None:
        problems.append(("password", f"{name} needs the secret: set password (or password_file)"))
    if options.dedicated_key and not ciphered:
        problems.append(("dedicated_key", "needs ciphering (security_policy)"))
    return problems


def _why(options: SecurityOptions) -> str:
    if options.policy is not None:
        return f'security_policy = "{options.policy_name}"'
    return f'security = "{options.mechanism_name}"'


# -- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, meter_side: bool = False) -> None:
    """The ``--security`` options of ``read``, ``diagnose`` and ``simulate``."""
    group = parser.add_argument_group("security")
    group.add_argument(
        "--security",
        choices=sorted(MECHANISMS),
        help="authentication mechanism"
        + (" client SAP 1 must use" if meter_side else " (default: lls with a password)"),
    )
    group.add_argument(
        "--security-policy",
        choices=sorted(POLICIES),
        help=f"ciphering (default: {DEFAULT_POLICY} with hls-gmac, else none)",
    )
    group.add_argument(
        "--system-title",
        metavar="HEX",
        help="the meter's own system title (8 bytes hex)"
        if meter_side
        else "our system title (8 bytes hex; default derived from this machine)",
    )
    if not meter_side:
        group.add_argument(
            "--meter-system-title", metavar="HEX", help="check the meter's system title"
        )
        group.add_argument(
            "--dedicated-key", action="store_true", help="cipher with a dedicated session key"
        )
        group.add_argument(
            "--counter-dir",
            type=Path,
            help="where invocation counters are kept (default ~/.local/state/dlms-bridge)",
        )
    for name in ("block-cipher-key", "authentication-key"):
        keys = group.add_mutually_exclusive_group()
        keys.add_argument(
            f"--{name}", metavar="HEX", help=f"{name.replace('-', ' ')} (16 bytes hex)"
        )
        keys.add_argument(f"--{name}-file", type=Path, metavar="FILE", help="file holding it")


def key_from_args(args: argparse.Namespace, name: str) -> bytes | None:
    """The key of option `--NAME` or `--NAME-file` (None: neither); ValueError says why."""
    attr = name.replace("-", "_")
    path: Path | None = getattr(args, f"{attr}_file", None)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"--{name}-file: cannot read {path}: {reason}") from None
        return parse_hex(text, KEY_LENGTH, f"--{name}-file {path}")
    value: str | None = getattr(args, attr, None)
    if value is None:
        return None
    return parse_hex(value, KEY_LENGTH, f"--{name}")


def options_from_args(
    args: argparse.Namespace, secret: bytes | None, *, meter_side: bool = False
) -> SecurityOptions | None:
    """The checked options of the command line (None: no ``--security``); ValueError says why."""
    mechanism: str | None = args.security
    if mechanism is None:
        stray = [
            f"--{n}"
            for n in ("security-policy", "system-title", "block-cipher-key", "authentication-key")
            if getattr(args, n.replace("-", "_"), None) is not None
            or getattr(args, n.replace("-", "_") + "_file", None) is not None
        ]
        if stray:
            raise ValueError(f"{stray[0]} needs --security")
        return None
    title = args.system_title
    meter_title = getattr(args, "meter_system_title", None)
    options = SecurityOptions(
        mechanism,
        args.security_policy,
        system_title=None
        if title is None
        else parse_hex(title, SYSTEM_TITLE_LENGTH, "--system-title"),
        meter_system_title=None
        if meter_title is None
        else parse_hex(meter_title, SYSTEM_TITLE_LENGTH, "--meter-system-title"),
        block_cipher_key=key_from_args(args, "block-cipher-key"),
        authentication_key=key_from_args(args, "authentication-key"),
        secret=secret,
        dedicated_key=bool(getattr(args, "dedicated_key", False)),
    )
    problems = check(options)
    if problems:
        key, message = problems[0]
        flag = {"password": "--password", "dedicated_key": "--dedicated-key"}.get(
            key, "--" + key.replace("_", "-")
        )
        raise ValueError(f"{flag}: {_cli_words(message)}")
    return options


def _cli_words(message: str) -> str:
    """A :func:`check` message in the words of the command line."""
    message = re.sub(r'(security_policy|security) = "([^"]+)"', r"--\1 \2", message)
    message = message.replace("set password (or password_file)", "give --password")
    message = re.sub(
        r"(?<![-\w])(block_cipher_key|authentication_key|security_policy)\b", r"--\1", message
    )
    return message.replace("_", "-")


def default_counter_dir() -> Path:
    """Where one-shot commands keep their invocation counters."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "dlms-bridge"


#: Builds the counter source of a (meter, system title); injectable for tests.
CounterFactory = Callable[[str, bytes], InvocationCounterSource]


def options_for(meter: MeterConfig) -> SecurityOptions | None:
    """The security options of a configured meter (None: no security beyond LLS)."""
    if meter.security is None:
        return None

    def raw(value: str | None, length: int) -> bytes | None:
        return None if value is None else parse_hex(value, length, "value")

    return SecurityOptions(
        meter.security,
        meter.security_policy,
        system_title=raw(meter.system_title, SYSTEM_TITLE_LENGTH),
        meter_system_title=raw(meter.meter_system_title, SYSTEM_TITLE_LENGTH),
        block_cipher_key=raw(meter.block_cipher_key, KEY_LENGTH),
        authentication_key=raw(meter.authentication_key, KEY_LENGTH),
        secret=None if meter.password is None else meter.password.encode(),
        dedicated_key=meter.dedicated_key,
    )


def instance_system_title(directory: str | os.PathLike[str]) -> bytes:
    """The default client system title of this machine and data (or counter) directory."""
    from bridge.config import _machine_id  # config imports this module

    return default_system_title(f"{_machine_id()}\0{directory}")


def client_settings_for(meter: MeterConfig, data_dir: str) -> SecuritySettings | None:
    """The codec settings of a configured meter, counting in ``data_dir`` (None: none)."""
    options = options_for(meter)
    if options is None:
        return None
    title = options.system_title or instance_system_title(data_dir)
    counter = PersistentCounter(counter_path(data_dir, meter.name, title))
    return options.client_settings(counter, system_title=title)
