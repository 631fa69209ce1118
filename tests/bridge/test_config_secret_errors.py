"""A secret of the wrong type is reported by its path, never echoed: in ``check-config``'s
output and in the console's 422 answers alike (both come from the same config checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import ConfigError, config_from_dict

SECRET = "98765432"

BASE = {
    "bridge": {"name": "t", "data_dir": "data"},
    "mqtt": {"host": "127.0.0.1"},
    "defaults": {"registers": "field-meter", "port": 4061},
}


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("meter", "password", int(SECRET)),
        ("meter", "password", [SECRET]),
        ("meter", "authentication_key", {"k": SECRET}),
        ("meter", "block_cipher_key", int(SECRET)),
        ("mqtt", "token", int(SECRET)),
        ("mqtt", "password", float(SECRET)),
        ("defaults", "password", int(SECRET)),
    ],
)
def test_wrong_type_secret_is_not_echoed(section: str, key: str, value: object) -> None:
    document = {k: dict(v) for k, v in BASE.items()}
    meter = {"name": "a", "host": "127.0.0.1"}
    if section == "meter":
        meter[key] = value  # type: ignore[assignment]
    else:
        document[section][key] = value
    if section == "mqtt" and key == "password":
        document["mqtt"]["username"] = "u"
    with pytest.raises(ConfigError) as info:
        config_from_dict({**document, "meters": [meter]})
    text = str(info.value)
    assert key in text  # the path is named...
    assert SECRET not in text  # ...the value is not


def test_check_config_does_not_echo_a_wrong_type_password(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        '[bridge]\nname = "t"\ndata_dir = "data"\n[mqtt]\nhost = "127.0.0.1"\n'
        '[defaults]\nregisters = "field-meter"\n'
        f'[[meters]]\nname = "a"\nhost = "h"\nport = 4061\npassword = {SECRET}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert "meters[0].password" in done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
