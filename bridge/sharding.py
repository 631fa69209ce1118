"""Deterministic splitting of meters: across bridges (``[bridge] shard = "K/N"``) and across
the worker processes of one bridge (``[bridge] workers``).

Rendezvous (highest-random-weight) hashing on the meter name: every meter goes to the bucket
whose hash of ``(salt, bucket, name)`` is highest. Every instance computes the same answer from
the config alone, and going from N to N+1 buckets moves only the ~1/(N+1) of the meters that
the new bucket wins; the others stay where they were.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Protocol, TypeVar

__all__ = ["Shard", "bucket_of", "parse_shard", "split"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)
_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
#: Salts keep the two splits independent: the meters of one shard spread over its workers.
SHARD_SALT = b"shard"
WORKER_SALT = b"worker"


def _weight(salt: bytes, bucket: int, name: str) -> int:
    digest = hashlib.blake2b(
        name.encode("utf-8"), digest_size=8, key=salt + b"/" + str(bucket).encode()
    ).digest()
    return int.from_bytes(digest, "big")


def bucket_of(name: str, buckets: int, salt: bytes = SHARD_SALT) -> int:
    """The bucket (0 .. buckets-1) that owns ``name``."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    if buckets == 1:
        return 0
    return max(range(buckets), key=lambda b: _weight(salt, b, name))


Shard = tuple[int, int]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` (1 <= K <= N) as ``(K, N)``; :class:`ValueError` says what is wrong."""
    match = _SHARD.fullmatch(text)
    if match is None:
        raise ValueError(f'expected "K/N" such as "1/3", got {text!r}')
    k, n = int(match[1]), int(match[2])
    if n < 1:
        raise ValueError(f"N in {text!r} must be at least 1")
    if not 1 <= k <= n:
        raise ValueError(f"K in {text!r} must be between 1 and {n}")
    return k, n


def split(items: Iterable[T], buckets: int, bucket: int, *, salt: bytes = SHARD_SALT) -> list[T]:
    """The items (objects with a ``name``, such as meter configs) that ``bucket`` (0-based)
    owns."""
    return [i for i in items if bucket_of(i.name, buckets, salt) == bucket]
