"""The default transport: pure-Python ADB (adb-shell) over USB or TCP, no adb server needed."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from device_tests.errors import (
    CommandTimeout,
    DeviceDisconnected,
    DeviceUnauthorized,
    TransportError,
    classify,
    retry,
)
from device_tests.transports.remote import RemoteShellTransport

T = TypeVar("T")


def _import_adb_shell() -> Any:
    try:
        import adb_shell.adb_device as adb_device  # noqa: PLC0415
    except ImportError as exc:  # the optional extra is missing
        raise ImportError("AdbShellTransport needs adb-shell: pip install 'meki-toolkit[adb]'") from exc
    return adb_device


def android_user_home() -> Path:
    """Where adb keeps its keys: $ANDROID_USER_HOME, else $ANDROID_SDK_HOME/.android, else ~/.android."""
    if os.environ.get("ANDROID_USER_HOME"):
        return Path(os.environ["ANDROID_USER_HOME"])
    if os.environ.get("ANDROID_SDK_HOME"):
        return Path(os.environ["ANDROID_SDK_HOME"]) / ".android"
    return Path.home() / ".android"


def adb_key_paths() -> list[Path]:
    """Private keys adb would offer: the user's adbkey, then ADB_VENDOR_KEYS (files or dirs)."""
    paths = [android_user_home() / "adbkey"]
    for entry in filter(None, os.environ.get("ADB_VENDOR_KEYS", "").split(os.pathsep)):
        p = Path(entry)
        paths.extend(sorted(p.glob("*.adb_key")) if p.is_dir() else [p])
    return [p for p in paths if p.is_file() and Path(f"{p}.pub").is_file()]


def load_signers(*, create_if_missing: bool = True) -> list[Any]:
    """adb-shell signers for every key found; like adb, create ~/.android/adbkey on first use."""
    from adb_shell.auth.keygen import keygen  # noqa: PLC0415
    from adb_shell.auth.sign_cryptography import CryptographySigner  # noqa: PLC0415

    paths = adb_key_paths()
    if not paths and create_if_missing:
        home = android_user_home()
        home.mkdir(parents=True, exist_ok=True)
        keygen(str(home / "adbkey"))
        paths = [home / "adbkey"]
    return [CryptographySigner(str(p)) for p in paths]


def parse_serial(serial: str | None) -> tuple[str, int] | None:
    """(host, port) for a TCP serial like '192.168.1.5:5555' (or '[::1]:5555'); None for USB."""
    if not serial or ":" not in serial:
        return None
    host, _, port = serial.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class AdbShellTransport(RemoteShellTransport):
    """A phone over adb-shell. serial: 'host:port' for TCP, a USB serial, or None (ANDROID_SERIAL,
    else the first USB device)."""

    name = "adb-shell"

    def __init__(
        self,
        serial: str | None = None,
        *,
        tmp_dir: str = "/data/local/tmp",
        connect_timeout_s: float = 10.0,
        auth_timeout_s: float = 30.0,
        op_timeout_s: float = 120.0,
        signers: list[Any] | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        super().__init__(tmp_dir=tmp_dir)
        self.serial = serial or os.environ.get("ANDROID_SERIAL") or None
        self.connect_timeout_s = connect_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self.op_timeout_s = op_timeout_s  # transfers and reconnect waits
        self.attempts, self.backoff_s = attempts, backoff_s
        self._signers = signers
        self._device: Any = None
        # One command at a time: the bench polls the runner while a sampler thread reads /proc,
        # and a reconnect after an error must not pull the link from under another command.
        self._lock = threading.RLock()

    # -- connection ---------------------------------------------------------------------------
    def _new_device(self) -> Any:
        adb_device = _import_adb_shell()
        tcp = parse_serial(self.serial)
        if tcp is not None:
            return adb_device.AdbDevice(_tcp_transport(tcp[0], tcp[1]),
                                        default_transport_timeout_s=self.connect_timeout_s)
        return adb_device.AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.connect_timeout_s)

    def connect(self) -> None:
        """Open the ADB connection (authenticating with the usual keys)."""
        from adb_shell import exceptions as ex  # noqa: PLC0415

        self.close()
        signers = self._signers if self._signers is not None else load_signers()
        device = None
        offered: list[bool] = []  # set when adbd refused our signatures and wants the user's OK
        try:
            device = self._new_device()  # a missing USB device fails here already
            device.connect(rsa_keys=signers, transport_timeout_s=self.connect_timeout_s,
                           auth_timeout_s=self.auth_timeout_s, read_timeout_s=self.connect_timeout_s,
                           auth_callback=lambda _dev: offered.append(True))
        except ex.DeviceAuthError as exc:
            raise DeviceUnauthorized(f"{self.serial}: {exc}") from exc
        except (OSError, ex.TcpTimeoutException, ex.AdbTimeoutError, ex.UsbDeviceNotFoundError,
                ex.UsbReadFailedError, ex.UsbWriteFailedError, ex.InvalidResponseError) as exc:
            if device is not None:
                _close_quietly(device)
            if offered:
                raise DeviceUnauthorized(
                    f"{self.serial}: key not accepted; allow USB debugging on the phone") from exc
            raise DeviceDisconnected(f"cannot connect to {self.serial or 'USB device'}: {exc}") from exc
        self._device = device

    def close(self) -> None:
        if self._device is not None:
            _close_quietly(self._device)
            self._device = None

    def _dev(self) -> Any:
        if self._device is None:
            self.connect()
        return self._device

    def _call(self, what: str, fn: Callable[[Any], T], *, timeout_s: float) -> T:
        """Run fn(device), mapping adb-shell's exceptions to ours.

        A dead link and a slow command both surface as read timeouts; reconnecting tells them
        apart (and resets the stream state a half-read command leaves behind).
        """
        with self._lock:
            return self._call_locked(what, fn, timeout_s=timeout_s)

    def _call_locked(self, what: str, fn: Callable[[Any], T], *, timeout_s: float) -> T:
        from adb_shell import exceptions as ex  # noqa: PLC0415

        device = self._dev()
        try:
            return fn(device)
        except (ex.TcpTimeoutException, ex.AdbTimeoutError, ex.UsbReadFailedError,
                ex.UsbWriteFailedError, ex.InvalidResponseError, ex.InvalidCommandError,
                ex.InvalidChecksumError, OSError) as exc:
            self.close()
            try:
                self.connect()
            except TransportError as again:
                raise DeviceDisconnected(f"{what}: device lost ({exc}); reconnect: {again}") from exc
            if isinstance(exc, (ex.TcpTimeoutException, ex.AdbTimeoutError, ex.UsbReadFailedError)):
                raise CommandTimeout(f"{what}: no answer within {timeout_s} s ({exc})") from exc
            raise DeviceDisconnected(f"{what}: link reset ({exc})") from exc
        except (ex.AdbCommandFailureException, ex.PushFailedError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            text = msg.decode(errors="replace") if isinstance(msg, (bytes, bytearray)) else str(msg)
            raise (classify(text) or TransportError)(f"{what}: {text}") from exc

    def _retrying(self, fn: Callable[[], T]) -> T:
        """Idempotent operations survive a transient disconnect (reconnect with backoff)."""
        return retry(fn, attempts=self.attempts, backoff_s=self.backoff_s,
                     before_retry=lambda _e: self._reconnect_quietly())

    def _reconnect_quietly(self) -> None:
        try:
            self.connect()
        except TransportError:
            pass  # the next attempt raises DeviceDisconnected if it is still gone

    # -- primitives used by RemoteShellTransport ------------------------------------------------
    def _exec(self, script: str, timeout_s: float) -> str:
        return self._call(
            "shell",
            lambda d: d.shell(script, transport_timeout_s=timeout_s, read_timeout_s=timeout_s,
                              timeout_s=timeout_s, decode=True),
            timeout_s=timeout_s,
        )

    def _push_file(self, local: Path, remote: str, mode: int) -> None:
        t = self.op_timeout_s
        self._retrying(lambda: self._call(
            f"push {remote}",
            lambda d: d.push(str(local), remote, st_mode=0o100000 | mode, mtime=int(time.time()),
                             transport_timeout_s=t, read_timeout_s=t),
            timeout_s=t))

    def _pull_file(self, remote: str, local: Path) -> None:
        t = self.op_timeout_s
        self._retrying(lambda: self._call(
            f"pull {remote}",
            lambda d: d.pull(remote, str(local), transport_timeout_s=t, read_timeout_s=t),
            timeout_s=t))

    def sha256(self, remote: str) -> str | None:
        return self._retrying(lambda: super(AdbShellTransport, self).sha256(remote))

    def exists(self, remote: str) -> bool:
        return self._retrying(lambda: super(AdbShellTransport, self).exists(remote))


def _tcp_transport(host: str, port: int) -> Any:
    """adb-shell's TcpTransport, except that a peer hang-up raises at once.

    Stock TcpTransport returns b'' forever on a closed socket and adb-shell spins until its read
    timeout, so an unplugged device would look like a slow command.
    """
    from adb_shell.transport.tcp_transport import TcpTransport  # noqa: PLC0415

    class _HangupAwareTcp(TcpTransport):  # type: ignore[misc]
        def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
            data = super().bulk_read(numbytes, transport_timeout_s)
            if not data:
                raise ConnectionResetError(f"{host}:{port} closed the connection")
            return data

    return _HangupAwareTcp(host, port)


def _close_quietly(device: Any) -> None:
    try:
        device.close()
    except Exception:  # noqa: BLE001 - closing a dead link may fail in many ways
        pass
