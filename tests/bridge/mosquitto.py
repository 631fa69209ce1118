"""A real Mosquitto broker for tests, and a subscriber that records what it receives.

`Mosquitto` writes a config and a password file into a directory and runs the broker on a free
loopback port with ``allow_anonymous false``. ThingsBoard-style device tokens are usernames.

About username-only logins (how ThingsBoard takes access tokens): Mosquitto 2.0 cannot accept
them together with a password file. Its TLS-enabled builds drop password-file entries without
a hash, and its password check refuses a client that sends a username but no password when the
entry has one (the dynamic-security plugin defers such clients too, which ends in a refusal).
So the broker's token users get a password the tests know (`TOKEN_PASSWORD`), and the
username-only path is tested against a broker started with ``anonymous=True`` (no password
file), whose log shows the username the client sent.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

TOKEN_PASSWORD = "token-secret"
OBSERVER = "observer"


def find_mosquitto() -> str | None:
    """The broker binary: /usr/sbin/mosquitto or ``mosquitto`` on PATH."""
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    return shutil.which("mosquitto")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def password_line(username: str, password: str) -> str:
    """A Mosquitto 2.0 password-file line (``$6$``: SHA-512 over password + 12-byte salt)."""
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{username}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


@attrs.frozen
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path, hostname: str = "localhost") -> TlsFiles:
    """A throw-away CA and a server certificate for `hostname` and 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dlms-bridge test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class Mosquitto:
    """One broker process; `restart` keeps the port. Sync API (starting takes ~50 ms)."""

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        anonymous: bool = False,
        tls: TlsFiles | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto binary not found")
        self.binary = found
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = dict(users or {})
        self.users.setdefault(OBSERVER, TOKEN_PASSWORD)
        self.anonymous = anonymous
        self.tls = tls
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None

    def add_user(self, username: str, password: str = TOKEN_PASSWORD) -> None:
        """Register a user; takes effect at the next (re)start."""
        self.users[username] = password

    def _write_config(self) -> None:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
        ]
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
            ]
        if os.geteuid() == 0:
            # Run as root would otherwise switch to the "mosquitto" user, which cannot read
            # files in a private temporary directory.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if self.anonymous:
            lines.append("allow_anonymous true")
        else:
            pw_file = self.directory / "passwd"
            pw_file.write_text("".join(password_line(u, p) for u, p in self.users.items()))
            lines += ["allow_anonymous false", f"password_file {pw_file}"]
        lines += [
            "persistence true",
            f"persistence_location {self.directory}/",
            "max_queued_messages 0",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._write_config()
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        for port in ports:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()}")
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"mosquitto did not listen on {port}:\n{self.log_text()}"
                        ) from None
                    time.sleep(0.01)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): clients see the connection close."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL, also while paused."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """The broker's log once it holds `text` (the broker writes its log asynchronously)."""
        with trio.move_on_after(timeout):
            while text not in (log := self.log_text()):
                await trio.sleep(0.05)
            return log
        raise AssertionError(f"{text!r} not in the broker's log after {timeout} s")


@attrs.frozen
class Message:
    topic: str
    payload: bytes
    #: The QoS it was delivered with (the lower of the publisher's and the subscription's).
    qos: int = 1


class Collector:
    """A paho subscriber in its own thread: records every message on its topics.

    It keeps a persistent session (fixed client id, clean_session false, QoS 1) and the broker
    has persistence on, so messages published while it reconnects after a broker restart are
    queued for it rather than lost to the test.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topics: list[str],
        *,
        username: str = OBSERVER,
        password: str = TOKEN_PASSWORD,
        client_id: str = "test-collector",
    ) -> None:
        self.broker = broker
        self.topics = topics
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
        )
        self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, *_args: object) -> None:
        self._subscribed.set()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(Message(msg.topic, bytes(msg.payload), msg.qos))

    def start(self, timeout: float = 5.0) -> Collector:
        self._client.connect(self.broker.host, self.broker.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("collector did not get its SUBACK")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, timeout: float = 5.0) -> None:
        """Publish with QoS 1 as this client (what ThingsBoard sends to the bridge)."""
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 30.0
    ) -> list[Message]:
        """Poll until `predicate(messages)` holds; fails with the messages seen so far."""
        with trio.move_on_after(timeout):
            while True:
                current = self.messages
                if predicate(current):
                    return current
                await trio.sleep(0.02)
        raise AssertionError(f"collector timed out; got {len(self.messages)}: {self.messages[-5:]}")
