"""Error types every transport raises, and the mapping from device output to them."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class TransportError(RuntimeError):
    """Base of all harness transport failures."""


class DeviceDisconnected(TransportError):
    """The link to the device dropped (USB unplugged, TCP reset, adb server gone)."""


class DeviceUnauthorized(TransportError):
    """adbd refused our key: accept the prompt on the phone or check ~/.android/adbkey."""


class CommandTimeout(TransportError):
    """A device command ran past its deadline."""


class DeviceFull(TransportError):
    """The device's storage is full (ENOSPC)."""


class PermissionDenied(TransportError):
    """The device refused access to a path or an action."""


class RunnerMissing(TransportError):
    """The program to run is not on the device (not pushed, wrong path, not executable)."""


class RunFailed(TransportError):
    """The runner ran and reported that its generation failed (its stats JSON is an error object)."""


class RemotePathMissing(TransportError):
    """A device path that should exist does not (pull of a missing file)."""


# Substrings that toybox, mksh and adbd print for each failure; matched case-insensitively.
_GENERAL: tuple[tuple[str, type[TransportError]], ...] = (
    ("no space left on device", DeviceFull),
    ("enospc", DeviceFull),
    ("permission denied", PermissionDenied),
    ("operation not permitted", PermissionDenied),
    ("read-only file system", PermissionDenied),
)
# When a program was being started these mean the program itself is missing or unusable.
_PROGRAM = (
    "inaccessible or not found",  # mksh: "sh: ./x: inaccessible or not found"
    "not found",
    "no such file or directory",
    "exec format error",
)


def classify(
    text: str, returncode: int | None = None, *, running_program: bool = False
) -> type[TransportError] | None:
    """The error type a failed command's output (or a failure message) points to, if any."""
    low = text.lower()
    for needle, err in _GENERAL:
        if needle in low:
            return err
    if running_program and (returncode in (126, 127) or any(n in low for n in _PROGRAM)):
        return RunnerMissing
    if "no such file or directory" in low:
        return RemotePathMissing
    return None


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 3,
    backoff_s: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (DeviceDisconnected,),
    before_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call fn, retrying transient failures with exponential backoff (0.5 s, 1 s, 2 s, ...).

    before_retry (e.g. a reconnect) runs after each failure that will be retried.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts - 1:
                raise
            sleep(backoff_s * (2**attempt))
            if before_retry is not None:
                before_retry(exc)
    raise AssertionError("unreachable")
