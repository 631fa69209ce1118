"""Subcommands of ``dlms-bridge``: one module each, with ``add_arguments`` and ``run``."""
