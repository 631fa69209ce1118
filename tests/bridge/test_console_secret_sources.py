"""The admin API takes a meter's secrets as values only: ``*_file`` and ``*_env`` would let a
caller send any file the service can read, or any of its environment variables (the MQTT token
among them), to a host of the caller's choosing as the meter's password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.bridge.console_harness import console_config, start_console
from tests.bridge.mosquitto import Mosquitto
from tests.bridge.test_run_cli import bridge_process  # noqa: F401 (fixture)

CASES = [
    {"password_file": "ADMIN_TOKEN"},
    {"password_env": "PATH"},
    {"security": "hls-gmac", "block_cipher_key_file": "ADMIN_TOKEN"},
    {"security": "hls-gmac", "authentication_key_env": "HOME"},
    {"token_env": "HOME"},
]


async def test_api_refuses_secrets_from_files_and_environment(
    tmp_path: Path,
    mosquitto: Mosquitto,
    bridge_process: Any,  # noqa: F811
) -> None:
    config, web_port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"base": 7},
        data_dir=tmp_path / "data",
        meter_extra={"base": {"enabled": False}},
    )
    _process, api = await start_console(bridge_process, config, web_port)
    token_file = str(tmp_path / "data" / "admin-token")
    # A port nobody listens on: nothing must ever be sent there.
    added = await api.call("POST", "/api/v1/meters", {"name": "y", "host": "127.0.0.1", "port": 9})
    assert added.status == 201, added.text
    for case in CASES:
        extra = {k: (token_file if v == "ADMIN_TOKEN" else v) for k, v in case.items()}
        key = next(k for k in extra if k.endswith(("_file", "_env")))
        body = {"name": "x", "host": "127.0.0.1", "port": 11, **extra}
        added = await api.call("POST", "/api/v1/meters", body)
        assert added.status == 422, added.text
        assert [e["path"] for e in added.json["errors"]] == [key]
        assert api.token is not None and api.token not in added.text
        assert (await api.get("/api/v1/meters/x")).status == 404
        patched = await api.call("PATCH", "/api/v1/meters/y", extra)  # not through PATCH either
        assert patched.status == 422, patched.text
        assert [e["path"] for e in patched.json["errors"]] == [key]
