"""The callbacks every gurux_dlms server used as a test peer must define (gurux's server calls
them and defines none): everything readable, writable and invocable, every address ours, no
hooks. Mix in before ``GXDLMSServer``; each peer keeps its own ``onValidateAuthentication``.

Import after ``pytest.importorskip("gurux_dlms")``: gurux is a test-only peer.
"""

from __future__ import annotations

from gurux_dlms.enums import AccessMode, MethodAccessMode


class ServerCallbacks:
    """See the module docstring."""

    transaction: object = None

    def isTarget(self, server_address: int, client_address: int) -> bool:
        return True

    def onGetAttributeAccess(self, arg: object) -> int:
        return int(AccessMode.READ_WRITE)

    def onGetMethodAccess(self, arg: object) -> int:
        return int(MethodAccessMode.ACCESS)

    def onFindObject(self, object_type: int, sn: int, ln: str) -> None:
        return None

    def getTransaction(self) -> object:
        return self.transaction

    def setTransaction(self, transaction: object) -> None:
        self.transaction = transaction

    def onPreGet(self, args: object) -> None: ...
    def onPostGet(self, args: object) -> None: ...
    def onPreRead(self, args: object = None) -> None: ...
    def onPostRead(self, args: object = None) -> None: ...
    def onPreWrite(self, args: object) -> None: ...
    def onPostWrite(self, args: object) -> None: ...
    def onPreAction(self, args: object) -> None: ...
    def onPostAction(self, args: object) -> None: ...
    def onConnected(self, info: object) -> None: ...
    def onInvalidConnection(self, info: object) -> None: ...
    def onDisconnected(self, info: object) -> None: ...
    def notifyRead(self) -> None: ...
    def notifyConnected(self, *args: object) -> None: ...
