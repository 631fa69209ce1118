"""Settings changed at runtime (ThingsBoard shared attributes, the ``set_interval`` RPC), kept
across restarts in ``overrides.json`` in the data directory.

Per meter: ``interval_s`` (a number above the meter's ``timeout_s``, at most
:data:`~bridge.config.INTERVAL_MAX_S`) and ``enabled`` (true or
false). They take precedence over the config file until changed again from ThingsBoard; removing
the shared attribute there (ThingsBoard sends ``{"deleted": [...]}``) returns to the file's value.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from bridge.config import interval_problem
from bridge.readings import dumps_compact

__all__ = ["FILENAME", "KEYS", "RuntimeOverrides", "check_override"]

log = logging.getLogger("bridge.overrides")

FILENAME = "overrides.json"
#: The settings that may be changed at runtime.
KEYS = ("interval_s", "enabled")


def check_override(key: str, value: Any, timeout_s: float) -> str | None:
    """Why ``value`` cannot be the meter's ``key``, or None if it can."""
    if key == "interval_s":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"interval_s must be a number of seconds, got {value!r}"
        if not math.isfinite(value) or value <= timeout_s:
            return f"interval_s must be more than the meter's timeout_s ({timeout_s:g}): {value}"
        problem = interval_problem(value)
        return None if problem is None else f"interval_s {problem}"
    if key == "enabled":
        return None if isinstance(value, bool) else f"enabled must be true or false, got {value!r}"
    return f"unknown setting {key!r} (known: {', '.join(KEYS)})"


class RuntimeOverrides:
    """The overrides of every meter; ``directory=None`` keeps them in memory only."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.path = None if directory is None else Path(directory) / FILENAME
        self.values: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            self.values = self._load(self.path)

    @staticmethod
    def _load(path: Path) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("runtime overrides %s are unreadable (%s); ignored", path, exc)
            return {}
        if not isinstance(data, dict):
            log.error("runtime overrides %s: not a JSON object; using the config file's", path)
            return {}
        out: dict[str, dict[str, Any]] = {}
        for meter, settings in data.items():
            if isinstance(settings, dict):
                out[str(meter)] = {k: v for k, v in settings.items() if k in KEYS}
        return out

    def get(self, meter: str, key: str) -> Any:
        """The override of one setting, None if there is none."""
        return self.values.get(meter, {}).get(key)

    def set(self, meter: str, key: str, value: Any) -> None:
        """Set (or with ``value=None`` remove) an override and write the file (blocking)."""
        with self._lock:
            self._set(meter, key, value)

    def _set(self, meter: str, key: str, value: Any) -> None:
        settings = self.values.setdefault(meter, {})
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
        if not settings:
            self.values.pop(meter, None)
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(dumps_compact(self.values).encode())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
