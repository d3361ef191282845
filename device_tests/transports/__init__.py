"""Transports: one interface, three ways to reach a device. See base.Transport."""
from device_tests.transports.base import ShellResult, Transport, quote_argv
from device_tests.transports.local import LocalTransport

__all__ = ["ShellResult", "Transport", "quote_argv", "LocalTransport"]
