"""Security keys in the configuration: checked alone and together, errors with their path,
secrets never shown."""

from __future__ import annotations

from bridge.config import config_to_dict
from bridge.meter_security import options_for
from codec.acse import AuthenticationMechanism
from codec.security import SecurityPolicy
from tests.bridge.test_config import errors_of, meter_config, parse

EK = "000102030405060708090A0B0C0D0E0F"
AK = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"


def test_hls_gmac_defaults_to_authenticated_encryption() -> None:
    config = parse(
        meter_config(
            f'security = "hls-gmac"\nblock_cipher_key = "{EK}"\nauthentication_key_env = "AK"'
        ),
        env={"AK": AK},
    )
    meter = config.meters[0]
    options = options_for(meter)
    assert options is not None
    assert options.mechanism is AuthenticationMechanism.HIGH_GMAC
    assert options.policy is SecurityPolicy.AUTHENTICATED_ENCRYPTED
    assert options.keys is not None and options.keys.authentication_key == bytes.fromhex(AK)
    shown = str(config_to_dict(config)) + repr(meter) + repr(options)
    assert EK not in shown and AK not in shown


def test_defaults_carry_the_keys() -> None:
    config = parse(
        meter_config(
            'security = "hls-gmac"',
            defaults=f'block_cipher_key = "{EK}"\nauthentication_key = "{AK}"\n'
            'system_title = "444C420102030405"',
        )
    )
    options = options_for(config.meters[0])
    assert options is not None and options.system_title == bytes.fromhex("444C420102030405")


def test_lengths_and_combinations_are_checked_with_their_path() -> None:
    errors = errors_of(meter_config('security = "hls-gmac"\nblock_cipher_key = "0011"'))
    assert any("m1" not in e and "block_cipher_key: must be 16 bytes" in e for e in errors)
    assert any("authentication_key: required" in e for e in errors)
    errors = errors_of(
        meter_config(
            f'security = "hls-gmac"\nblock_cipher_key = "{EK}"\n'
            f'authentication_key = "{AK}"\nsystem_title = "00"'
        )
    )
    assert errors == ["meters[0].system_title: must be 8 bytes (16 hex digits), got 1"]
    errors = errors_of(meter_config(f'block_cipher_key = "{EK}"'))
    assert errors == ['meters[0].block_cipher_key: needs security (e.g. security = "hls-gmac")']
    errors = errors_of(
        meter_config('security = "hls-md5"\npassword = "x"\nsecurity_policy = "encrypted"')
    )
    assert any("block_cipher_key: required" in e for e in errors)
    errors = errors_of(meter_config('security = "hls-sha256"', defaults=""))
    assert any("password" in e and "hls-sha256 needs the secret" in e for e in errors), errors
    errors = errors_of(meter_config('security = "hls-gmac"\nsecurity_policy = "bogus"'))
    assert any("meters[0].security_policy" in e and "bogus" in e for e in errors)


def test_bad_key_value_is_not_echoed() -> None:
    secret = "ZZ" + EK[2:]
    errors = errors_of(
        meter_config(
            f'security = "hls-gmac"\nblock_cipher_key = "{secret}"\nauthentication_key = "{AK}"'
        )
    )
    assert errors == ["meters[0].block_cipher_key: not hexadecimal"]
    assert not any(secret in e or AK in e for e in errors)
