"""The codec's error types.

Every error the codec raises is a :class:`ProtocolError`. ``LocalProtocolError`` means the caller
asked for something the protocol cannot express (encoding an out-of-range value, sending in the
wrong state); ``RemoteProtocolError`` means the peer sent something we cannot accept. Each error
carries a stable, machine-readable ``code`` (``"hdlc.bad_fcs"``) for metrics and tests, and where it
makes sense the byte ``offset`` at which the problem was found.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by the codec."""

    #: Default machine-readable code of the class; instances may carry a more specific one.
    default_code = "protocol"

    def __init__(self, message: str, *, code: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.offset = offset

    def __str__(self) -> str:
        if self.offset is None:
            return self.message
        return f"{self.message} (at byte {self.offset})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, offset={self.offset!r})"
        )


class LocalProtocolError(ProtocolError):
    """We were asked to produce something invalid, or to act in a state that does not allow it."""

    default_code = "local"


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid or unexpected."""

    default_code = "remote"


class FrameError(RemoteProtocolError):
    """A byte stream or a frame that is not valid HDLC or IEC 62056-47 wrapper framing."""

    default_code = "frame"


class DecodeError(RemoteProtocolError):
    """An A-XDR value or an APDU that cannot be decoded."""

    default_code = "decode"


class EncodeError(LocalProtocolError):
    """A value or an APDU that cannot be encoded (out of range, wrong type, too large)."""

    default_code = "encode"


class LinkError(RemoteProtocolError):
    """The HDLC link was refused, broken or reset by the peer (DM, FRMR, unexpected DISC)."""

    default_code = "link"


class ResponseTimeout(RemoteProtocolError):
    """The peer did not answer in time (after the allowed retransmissions)."""

    default_code = "timeout"


class AssociationError(RemoteProtocolError):
    """The application association was refused or released by the meter."""

    default_code = "association"


class ServiceError(RemoteProtocolError):
    """A confirmed xDLMS service failed (exception-response, confirmed-service-error)."""

    default_code = "service"


class DataAccessError(ServiceError):
    """The meter answered a GET/SET/ACTION with a data-access-result other than success."""

    default_code = "data_access"

    def __init__(self, message: str, *, result: int, name: str, code: str | None = None) -> None:
        super().__init__(message, code=code or f"data_access.{name}")
        self.result = result
        self.name = name
