"""The console's meter view never carries a secret, whatever kind of secret the config has."""

from __future__ import annotations

import json

from bridge.config import MeterConfig
from bridge.web.views import SECRET_KEYS, meter_config_view

PASSWORD = "pw-4f1a9c"
TOKEN = "tok-77e0b1"
BLOCK_KEY = "000102030405060708090a0b0c0d0e0f"
AUTH_KEY = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"


def test_the_known_secrets_are_all_hidden() -> None:
    assert {"password", "token", "block_cipher_key", "authentication_key"} <= set(SECRET_KEYS)


def test_meter_view_shows_only_whether_secrets_are_set() -> None:
    meter = MeterConfig(
        name="m1",
        host="127.0.0.1",
        port=4061,
        password=PASSWORD,
        token=TOKEN,
        security="hls-gmac",
        block_cipher_key=BLOCK_KEY,
        authentication_key=AUTH_KEY,
    )
    view = meter_config_view(meter)
    text = json.dumps(view)
    for secret in (PASSWORD, TOKEN, BLOCK_KEY, AUTH_KEY):
        assert secret not in text
        assert secret.upper() not in text
    for key in ("password", "token", "block_cipher_key", "authentication_key"):
        assert key not in view
        assert view[f"has_{key}"] is True
    assert view["security"] == "hls-gmac"
