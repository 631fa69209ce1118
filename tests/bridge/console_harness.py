"""Helpers for the console tests: a bridge process with its console, and a small HTTP client.

The bridge runs as ``python -m bridge.cli run`` (the real process, as operators run it) against
the in-process simulator and a real Mosquitto; every call goes over real HTTP on loopback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from tests.bridge.mosquitto import Mosquitto, free_port
from tests.bridge.test_run_cli import BridgeProcess, write_config


@attrs.frozen
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@attrs.define
class ConsoleClient:
    """Plain HTTP calls (urllib in a thread) against one console."""

    base: str
    token: str | None = None

    def _call(
        self, method: str, path: str, body: Any, token: str | None, raw: bytes | None
    ) -> HttpResult:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return HttpResult(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return HttpResult(exc.code, dict(exc.headers), exc.read())

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | bool | None = True,
        raw: bytes | None = None,
    ) -> HttpResult:
        """``token=True``: the client's token; ``False``/None: none; a string: that one."""
        use = self.token if token is True else (token or None)
        return await trio.to_thread.run_sync(self._call, method, path, body, use, raw)

    async def get(self, path: str, **kw: Any) -> HttpResult:
        return await self.call("GET", path, **kw)

    async def wait_until(
        self, path: str, predicate: Callable[[Any], bool], timeout: float, what: str
    ) -> Any:
        """Poll a JSON GET until ``predicate(json)`` holds."""
        last: Any = None
        with trio.move_on_after(timeout):
            while True:
                result = await self.get(path)
                if result.status == 200:
                    last = result.json
                    if predicate(last):
                        return last
                await trio.sleep(0.2)
        raise AssertionError(
            f"no {what} within {timeout} s; last {path}: {json.dumps(last)[:3000]}"
        )


def console_config(
    path: Path,
    broker: Mosquitto,
    meters: dict[str, int],
    *,
    data_dir: Path,
    web: dict[str, Any] | None = None,
    alarms: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Path, int]:
    """A gateway-mode config (see ``write_config``) with ``[web]`` on a free port."""
    port = free_port()
    # Every reading charted: the tests look at the history of a few seconds.
    web = {"listen": f"127.0.0.1:{port}", "history_step_s": 0, **(web or {})}
    write_config(path, broker, meters, data_dir=data_dir, web=web, alarms=alarms, **kwargs)
    return path, port


async def start_console(
    bridge_process: Callable[..., Any], config: Path, port: int
) -> tuple[BridgeProcess, ConsoleClient]:
    """Start the bridge and wait for its console; the client holds the generated token."""
    process: BridgeProcess = await bridge_process(config)
    event = await process.wait_event("console_listening", timeout=30)
    token = Path(event["token_file"]).read_text().strip()
    client = ConsoleClient(f"http://127.0.0.1:{port}", token)
    return process, client
