"""Find DLMS meters on a network (``dlms-bridge scan``).

1. Targets (hosts, CIDR blocks, ranges) x ports are tried with bounded concurrent TCP connects.
2. Every open port is probed (:mod:`bridge.probe`): HDLC first (SNRM to the usual server
   addresses), then the wrapper (a public AARQ to the usual wPorts); on port 4059, the wrapper's
   registered port, the other way round. What answers neither is labelled ``other``.
3. For each meter found: does the public client associate, and does the configured client with
   its password? (A real association, released at once.)

Nothing is sent on connections the scan did not open, so a meter serving another client is not
disturbed (see :mod:`bridge.probe`).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import attrs
import trio

from bridge.probe import PUBLIC_CLIENT_SAP, ProbeResult, probe_hdlc, probe_wrapper
from bridge.session import MeterEndpoint, MeterIOError, MeterSession
from codec.errors import ProtocolError

__all__ = [
    "DEFAULT_PORTS",
    "MAX_TARGETS",
    "WRAPPER_PORT",
    "Credentials",
    "Found",
    "ScanError",
    "check_names",
    "host_names",
    "parse_ports",
    "parse_targets",
    "scan",
]

DEFAULT_PORTS = (3333, 4059, 4061)
#: The wrapper's registered port (IANA "dlms/cosem" 4059): probed wrapper-first.
WRAPPER_PORT = 4059
#: Addresses a scan may cover without ``--force``: a /16.
MAX_TARGETS = 65536


class ScanError(ValueError):
    """Bad targets or ports; the message names the bad part."""


@attrs.frozen
class Credentials:
    """The configured client to try on each meter found (besides the public client)."""

    client_sap: int = 1
    password: bytes | None = attrs.field(default=None, repr=False)


@attrs.define
class Found:
    """One open port and what answers there."""

    host: str
    port: int
    transport: Literal["hdlc", "wrapper", "other"]
    detail: str
    server_logical: int | None = None
    server_physical: int | None = None
    public: bool | None = None
    configured: bool | None = None
    configured_detail: str | None = None

    @property
    def is_meter(self) -> bool:
        """A DLMS meter answered."""
        return self.transport != "other"

    def to_json(self) -> dict[str, Any]:
        """The documented ``--json`` entry."""
        return attrs.asdict(self)


def _hosts_of(item: str) -> tuple[int, Iterator[str]]:
    """(count, addresses) of one target: address, CIDR, ``a.b.c.d-e`` or ``a.b.c.d-a.b.c.e``,
    or a host name."""
    if "/" in item:
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ScanError(f"{item!r}: not a CIDR block ({exc})") from None
        hosts = net.hosts() if net.num_addresses > 2 else iter(net)
        return net.num_addresses, (str(a) for a in hosts)
    if "-" in item:
        first_text, _, last_text = item.partition("-")
        try:
            first = ipaddress.ip_address(first_text)
        except ValueError:
            first = None
        if first is not None:
            try:
                if "." in last_text or ":" in last_text:
                    last = ipaddress.ip_address(last_text)
                else:
                    prefix = first_text.rsplit(".", 1)[0]
                    last = ipaddress.ip_address(f"{prefix}.{int(last_text)}")
            except ValueError:
                raise ScanError(
                    f"{item!r}: not a range like 10.0.0.5-40 or 10.0.0.5-10.0.1.9"
                ) from None
            if last.version != first.version or int(last) < int(first):
                raise ScanError(f"{item!r}: the range ends before it starts")
            count = int(last) - int(first) + 1
            cls = type(first)
            return count, (str(cls(int(first) + i)) for i in range(count))
    if not item or any(c.isspace() for c in item):
        raise ScanError(f"{item!r}: not a host, address, CIDR block or range")
    return 1, iter([item])


def parse_targets(items: Sequence[str], *, force: bool = False) -> tuple[int, Iterator[str]]:
    """(count, addresses) of the targets, generated lazily; refuses more than
    :data:`MAX_TARGETS` addresses unless ``force``."""
    total = 0
    parts: list[Iterator[str]] = []
    for raw in items:
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            count, hosts = _hosts_of(item)
            total += count
            parts.append(hosts)
    if total == 0:
        raise ScanError("no targets given")
    if total > MAX_TARGETS and not force:
        raise ScanError(
            f"{total} addresses is more than a /16 ({MAX_TARGETS}): a scan that size takes "
            "hours and looks like an attack to whoever watches the network; narrow it, or "
            "add --force if you really mean it"
        )
    return total, itertools.chain.from_iterable(parts)


def host_names(items: Sequence[str]) -> list[str]:
    """The targets that are host names (neither addresses, CIDR blocks nor ranges)."""
    names = []
    for raw in items:
        for item in raw.split(","):
            item = item.strip()
            if item and "/" not in item:
                first = next(_hosts_of(item)[1])
                try:
                    ipaddress.ip_address(first)
                except ValueError:
                    names.append(first)
    return names


async def check_names(names: Sequence[str], timeout: float) -> None:
    """Resolve every host name; :class:`ScanError` names the first that does not resolve."""
    for name in names:
        try:
            with trio.fail_after(timeout):
                await trio.socket.getaddrinfo(name, None)
        except trio.TooSlowError:
            raise ScanError(
                f"{name[:60]!r}: no answer from the name server within {timeout:g} s"
            ) from None
        except UnicodeError:
            # IDNA: a label longer than 63 characters, an empty label, a name over 253.
            raise ScanError(
                f"{name[:60]!r}: not a valid host name (labels are 1 to 63 characters)"
            ) from None
        except OSError as exc:
            raise ScanError(f"{name[:60]!r}: cannot resolve it ({exc.strerror or exc})") from None


def parse_ports(text: str) -> list[int]:
    """``3333,4059,4061`` or ``4059-4062``; raises :class:`ScanError`."""
    ports: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            bounds = [int(x) for x in item.split("-", 1)]
        except ValueError:
            raise ScanError(f"--ports: {item!r} is not a port or a range") from None
        if len(bounds) == 2 and bounds[1] < bounds[0]:
            raise ScanError(f"--ports: {item!r} ends before it starts")
        ports.extend(range(bounds[0], bounds[-1] + 1))
    bad = [p for p in ports if not 0 < p < 65536]
    if bad:
        raise ScanError(f"--ports: {bad[0]} is not a TCP port (1-65535)")
    if not ports:
        raise ScanError("--ports: no ports given")
    return sorted(set(ports))


@attrs.define
class Progress:
    """Counters for the progress bar."""

    total: int
    done: int = 0
    open: int = 0
    meters: int = 0


async def _is_open(host: str, port: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await trio.aclose_forcefully(stream)
        return True
    return False


def _label(hdlc: ProbeResult | None, wrapper: ProbeResult | None) -> str:
    probes = [p for p in (hdlc, wrapper) if p is not None]
    unrecognised = sum(p.unrecognised for p in probes)
    received = sum(p.received for p in probes)
    if unrecognised or received:
        return f"not DLMS: answered {received} bytes that are neither HDLC nor wrapper"
    if any(p.closed_by_peer for p in probes):
        return "not DLMS: closed the connection on an SNRM and on an AARQ"
    return "no answer to SNRM or AARQ: not DLMS, or a meter busy with another client"


async def _associates(endpoint: MeterEndpoint) -> tuple[bool, str]:
    session = MeterSession(endpoint)
    try:
        with trio.fail_after(4 * endpoint.timeout + endpoint.connect_timeout):
            await session.open()
    except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
        return False, str(exc) or "no answer"
    finally:
        await session.release()
    return True, "associated"


async def probe_port(
    host: str, port: int, *, timeout: float, credentials: Credentials | None
) -> Found:
    """Tell what listens at ``host:port`` and, for a meter, who may associate."""
    order: list[Literal["hdlc", "wrapper"]] = (
        ["wrapper", "hdlc"] if port == WRAPPER_PORT else ["hdlc", "wrapper"]
    )
    results: dict[str, ProbeResult] = {}
    for transport in order:
        if transport == "hdlc":
            result = await probe_hdlc(host, port, timeout=timeout)
        else:
            result = await probe_wrapper(host, port, timeout=timeout)
        results[transport] = result
        if result.is_dlms:
            break
    dlms = next((r for r in results.values() if r.is_dlms), None)
    if dlms is None:
        return Found(host, port, "other", _label(results.get("hdlc"), results.get("wrapper")))
    answer = dlms.opened or dlms.answers[0]
    found = Found(
        host,
        port,
        dlms.transport,
        f"{answer.reply} from {answer.address()}",
        server_logical=answer.logical,
        server_physical=answer.physical,
    )
    endpoint = MeterEndpoint(
        host=host,
        port=port,
        transport=dlms.transport,
        client_sap=PUBLIC_CLIENT_SAP,
        server_logical=answer.logical,
        server_physical=answer.physical if answer.physical is not None else 1,
        timeout=timeout,
        connect_timeout=timeout,
        retries=1,
    )
    if dlms.transport == "wrapper":
        found.public = answer.reply == "accepted"
    elif answer.opened:
        found.public, _ = await _associates(endpoint)
    if credentials is not None:
        configured = attrs.evolve(
            endpoint, client_sap=credentials.client_sap, password=credentials.password
        )
        found.configured, found.configured_detail = await _associates(configured)
    return found


async def scan(
    hosts: Iterable[str],
    ports: Sequence[int],
    *,
    host_count: int,
    concurrency: int,
    timeout: float,
    credentials: Credentials | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[Found]:
    """Scan every host x port; returns what listens on the open ports, in target order."""
    slots = trio.Semaphore(concurrency)
    progress = Progress(total=host_count * len(ports))
    found: dict[tuple[int, int], Found] = {}

    async def one(index: int, host: str, port_index: int, port: int) -> None:
        try:
            if await _is_open(host, port, timeout):
                progress.open += 1
                result = await probe_port(host, port, timeout=timeout, credentials=credentials)
                found[(index, port_index)] = result
                progress.meters += result.is_meter
        finally:
            slots.release()
        progress.done += 1
        if on_progress is not None:
            on_progress(progress)

    async with trio.open_nursery() as nursery:
        for index, host in enumerate(hosts):
            for port_index, port in enumerate(ports):
                # A task is started only when a slot is free: at most `concurrency` connections
                # and tasks at a time, whatever the size of the scan.
                await slots.acquire()
                nursery.start_soon(one, index, host, port_index, port)
    return [found[key] for key in sorted(found)]
