"""Transports: one interface, three ways to reach a device. See base.Transport."""
from device_tests.transports.base import ShellResult, Transport, quote_argv
from device_tests.transports.local import LocalTransport


def __getattr__(name: str):
    # The adb transports import their optional dependencies lazily.
    if name == "AdbShellTransport":
        from device_tests.transports.adbshell import AdbShellTransport
        return AdbShellTransport
    if name == "AdbBinaryTransport":
        from device_tests.transports.adb_binary import AdbBinaryTransport
        return AdbBinaryTransport
    raise AttributeError(name)


def open_transport(device: str | None, **kwargs) -> Transport:
    """'local' -> LocalTransport; 'adb:SERIAL' -> AdbBinaryTransport; else adb-shell (default)."""
    if device == "local":
        return LocalTransport(kwargs.pop("workdir", "."))
    if device is not None and device.startswith("adb:"):
        from device_tests.transports.adb_binary import AdbBinaryTransport
        return AdbBinaryTransport(device[4:] or None, **kwargs)
    from device_tests.transports.adbshell import AdbShellTransport
    return AdbShellTransport(device, **kwargs)

__all__ = [
    "ShellResult", "Transport", "quote_argv", "LocalTransport", "AdbShellTransport",
    "AdbBinaryTransport", "open_transport",
]
