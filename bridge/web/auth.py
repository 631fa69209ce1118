"""The admin token: where it comes from, and who may call what.

Every mutating call needs ``Authorization: Bearer <token>``. Read-only calls are open while the
console listens on a loopback address only (and the request names a loopback host), and need
the token too otherwise. The token comes
from ``[web] token_file`` / ``token_env``; without them one is generated at first start into
``<data_dir>/admin-token`` (mode 0600). The token is never logged or returned; only its path is.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["TOKEN_FILENAME", "Auth", "is_loopback", "load_or_create_token"]

TOKEN_FILENAME = "admin-token"


def load_or_create_token(data_dir: str | os.PathLike[str]) -> tuple[str, Path]:
    """The generated token of this data directory, created (mode 0600) if there is none."""
    path = Path(data_dir) / TOKEN_FILENAME
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token, path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return token, path


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Auth:
    """Checks the bearer token of a request."""

    def __init__(self, token: str, *, open_reads: bool) -> None:
        self._token = token.encode()
        #: Read-only calls need no token (the console listens on loopback only).
        self.open_reads = open_reads

    def check(self, request: Request, *, write: bool) -> JSONResponse | None:
        """None when the request may go on; otherwise the 401/403 answer."""
        if not write and self.open_reads and _loopback_host(request.headers.get("host", "")):
            return None
        header = request.headers.get("authorization")
        given: str | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer":
                return _refuse(401, "the Authorization header must be 'Bearer <token>'")
            given = value.strip()
        elif not write and request.url.path.endswith("/events"):
            # EventSource cannot send headers: the event stream also takes the token as a query.
            given = request.query_params.get("access_token")
        if not given:
            return _refuse(401, "this call needs 'Authorization: Bearer <admin token>'")
        if not hmac.compare_digest(given.encode(), self._token):
            return _refuse(403, "wrong admin token")
        return None


def _loopback_host(header: str) -> bool:
    """True when the request was addressed to a loopback name (``Host`` header).

    Open reads are for whoever is on the box itself: a page elsewhere that resolves its own
    name to 127.0.0.1 (DNS rebinding), or a proxy passing on a public ``Host``, needs the token.
    """
    host = header.rsplit(":", 1)[0] if not header.endswith("]") else header
    if header.startswith("["):
        host = header[1:].split("]", 1)[0]
    return is_loopback(host)


def _refuse(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="dlms-bridge"'} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)
