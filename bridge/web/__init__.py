"""The operators' console served by the bridge itself: dashboard, admin API, metrics, alarms.

- :mod:`~bridge.web.console`: the console object the service runs (stores, live state, server)
- :mod:`~bridge.web.app`: the Starlette routes; :mod:`~bridge.web.openapi` describes them
- :mod:`~bridge.web.auth`: the admin token
- :mod:`~bridge.web.admin`: meters added, changed and removed through the API
- :mod:`~bridge.web.views`: the JSON views of the service and its meters
- :mod:`~bridge.web.metrics`: Prometheus exposition; :mod:`~bridge.web.tracker`: totals
- :mod:`~bridge.web.history`: local history; :mod:`~bridge.web.alarms`: the alarm store;
  :mod:`~bridge.web.alarm_rules`: the alarms raised from thresholds
- :mod:`~bridge.web.events`: server-sent events
- ``static/``: the dashboard (no CDN; shipped in the package)
"""

from bridge.web.console import Console

__all__ = ["Console"]
