"""dlms-bridge: reads DLMS/COSEM meters over TCP and delivers every reading over MQTT."""

__version__ = "0.1.0"
