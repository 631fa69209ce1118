"""Meters added, changed, disabled or removed through the admin API, kept in the data directory.

The operator's config file stays the source of truth and is never rewritten. What the API
changed lives in ``<data_dir>/api-meters.json`` (mode 0600: meter tables may hold passwords) as
three parts, applied on top of the file's ``[[meters]]`` every time the config is loaded (at
start, on SIGHUP, by ``check-config``):

- ``added``: name -> a whole meter table (as in the config file) for meters the API created;
- ``patched``: name -> the keys the API changed in a meter of the file (``enabled`` included);
- ``removed``: names of the file's meters the API removed.

A meter of the file always wins over an API meter of the same name; an API change that no
longer fits the file (the file now has a meter at the same address, say) is left out with a
logged error rather than stopping the service.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from bridge.config import BridgeConfig, ConfigError, config_from_dict, load_config
from bridge.logs import log_event

__all__ = ["FILENAME", "ApiMeters", "api_meters_path", "load_effective_config", "read_document"]

log = logging.getLogger("bridge.api_meters")

FILENAME = "api-meters.json"
#: A bound on the file we read back (thousands of meter tables fit easily).
MAX_FILE_BYTES = 16 * 1024 * 1024


def api_meters_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where the API's meter changes are kept."""
    return Path(data_dir) / FILENAME


@attrs.define
class ApiMeters:
    """The API's changes to the meter list; see the module docstring."""

    added: dict[str, dict[str, Any]] = attrs.Factory(dict)
    patched: dict[str, dict[str, Any]] = attrs.Factory(dict)
    removed: list[str] = attrs.Factory(list)

    @property
    def empty(self) -> bool:
        """True when the API changed nothing."""
        return not (self.added or self.patched or self.removed)

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str]) -> ApiMeters:
        """Read the store; a missing file is an empty store. Raises ValueError if unreadable."""
        path = api_meters_path(data_dir)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a JSON object")
        added, patched, removed = (
            obj.get("added", {}),
            obj.get("patched", {}),
            obj.get("removed", []),
        )
        if not (
            isinstance(added, dict)
            and all(isinstance(v, dict) for v in added.values())
            and isinstance(patched, dict)
            and all(isinstance(v, dict) for v in patched.values())
            and isinstance(removed, list)
            and all(isinstance(v, str) for v in removed)
        ):
            raise ValueError(f"{path}: unexpected layout (added, patched, removed)")
        return cls(added=added, patched=patched, removed=removed)

    def save(self, data_dir: str | os.PathLike[str]) -> None:
        """Write the store atomically (temporary file, fsync, rename), mode 0600."""
        path = api_meters_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(attrs.asdict(self), indent=1, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def copy(self) -> ApiMeters:
        """A deep copy, to try a change before keeping it."""
        return copy.deepcopy(self)

    def apply(self, document: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The config document with the API's changes applied, and the names they touch."""
        doc = dict(document)
        file_meters = doc.get("meters", [])
        if not isinstance(file_meters, list):
            return doc, []
        names_in_file = {m.get("name") for m in file_meters if isinstance(m, dict)}
        meters: list[Any] = []
        touched: list[str] = []
        for table in file_meters:
            name = table.get("name") if isinstance(table, dict) else None
            if name in self.removed:
                continue
            if isinstance(name, str) and name in self.patched:
                table = {**table, **self.patched[name]}
                touched.append(name)
            meters.append(table)
        for name, table in self.added.items():
            if name in names_in_file:
                log_event(
                    log, logging.WARNING, "api_meter_shadowed", meter=name,
                    message="the config file has a meter of this name; the file wins",
                )  # fmt: skip
                continue
            meters.append({**table, "name": name})
            touched.append(name)
        doc["meters"] = meters
        return doc, touched


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config file as the dict TOML gives; raises ConfigError like ``load_config``."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            return tomllib.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read {source}: {exc.strerror or exc}"], source=source) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"cannot parse: {exc}"], source=source) from None


def load_effective_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """The config file with the admin API's meter changes applied.

    The file alone is checked first (its errors raise :class:`ConfigError` as usual). If the
    API's changes do not fit it any more, they are left out and each problem is logged.
    """
    config = load_config(path, env=env)
    try:
        store = ApiMeters.load(config.bridge.data_dir)
    except ValueError as exc:
        log_event(log, logging.ERROR, "api_meters_unreadable", error=str(exc))
        return config
    if store.empty:
        return config
    document = read_document(path)
    merged, touched = store.apply(document)
    base_dir = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        effective = config_from_dict(merged, source=config.source, env=env, base_dir=base_dir)
    except ConfigError as exc:
        for line in exc.errors:
            log_event(log, logging.ERROR, "api_meters_ignored", error=line)
        return config
    return attrs.evolve(effective, api_meters=tuple(touched))
