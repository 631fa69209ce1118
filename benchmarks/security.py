"""Suite 0 ciphering throughput: ours against gurux_dlms, measured in the same run.

``python benchmarks/security.py [--quick]``: glo-ciphering (authenticated encryption) and
deciphering of GET-response-sized APDUs of 32, 256 and 1024 bytes, APDUs per second, best of
several timed runs; the ratio column compares ours with gurux_dlms's ``encryptAesGcm`` (a
pure-Python AES-GCM), so a busy machine shifts both columns together.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.security import SecurityKeys, SecurityPolicy, cipher_apdu, decipher_apdu

EK = bytes(range(16))
AK = bytes(range(0xD0, 0xE0))
TITLE = bytes.fromhex("4D4D4D0000BC614E")
KEYS = SecurityKeys(EK, AK)
POLICY = SecurityPolicy.AUTHENTICATED_ENCRYPTED


def rate(work: Callable[[], object], budget: float) -> float:
    """Operations per second: best of five runs of about ``budget`` / 5 seconds each."""
    count = 1
    while True:
        start = time.perf_counter()
        for _ in range(count):
            work()
        elapsed = time.perf_counter() - start
        if elapsed > budget / 10:
            break
        count *= 2
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            work()
        best = max(best, count / (time.perf_counter() - start))
    return best


def gurux_cipher(plain: bytes) -> Callable[[], object] | None:
    try:
        from gurux_dlms.AesGcmParameter import AesGcmParameter
        from gurux_dlms.enums import Security
        from gurux_dlms.GXDLMSChippering import GXDLMSChippering
    except ImportError:
        return None

    def work() -> object:
        p = AesGcmParameter(0xCC, bytearray(TITLE), bytearray(EK), bytearray(AK))
        p.security = Security.AUTHENTICATION_ENCRYPTION
        p.invocationCounter = 7
        return GXDLMSChippering.encryptAesGcm(p, bytearray(plain))

    return work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    budget = 0.2 if args.quick else 1.0
    header = f"{'measurement':40} {'unit':10} {'ours':>12} {'gurux_dlms':>12} {'ours/gurux':>11}"
    print(header)
    print("-" * len(header))
    for size in (32, 256, 1024):
        plain = b"\xc4\x01\x81\x00\x09" + bytes(range(256)) * (size // 256) + bytes(size % 256)
        plain = plain[:size]
        ciphered = cipher_apdu(plain, POLICY, TITLE, 7, KEYS)
        ours = rate(lambda p=plain: cipher_apdu(p, POLICY, TITLE, 7, KEYS), budget)
        back = rate(lambda c=ciphered: decipher_apdu(c, TITLE, KEYS), budget)
        reference = gurux_cipher(plain)
        theirs = rate(reference, budget) if reference is not None else None
        ratio = f"{ours / theirs:,.0f}x" if theirs else "-"
        gx = f"{theirs:,.0f}" if theirs else "n/a"
        print(f"{f'cipher {size}-byte APDU':40} {'APDUs/s':10} {ours:>12,.0f} {gx:>12} {ratio:>11}")
        print(f"{f'decipher {size}-byte APDU':40} {'APDUs/s':10} {back:>12,.0f} {'':>12} {'':>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
