"""Transport over the `adb` binary, for users who already run an adb server."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from device_tests.errors import (
    CommandTimeout,
    DeviceDisconnected,
    DeviceUnauthorized,
    TransportError,
    classify,
)
from device_tests.transports.remote import RemoteShellTransport

# adb client messages that mean the device (or the server) is gone, not that a command failed.
_GONE = (
    "no devices/emulators found", "not found", "device offline", "error: closed",
    "protocol fault", "connection reset", "cannot connect to daemon", "failed to connect",
)


class AdbBinaryTransport(RemoteShellTransport):
    """A device through `adb -s SERIAL ...`; the serial is one argv element, never shell text."""

    name = "adb"

    def __init__(
        self,
        serial: str | None = None,
        *,
        adb_path: str | None = None,
        server_port: int | None = None,
        tmp_dir: str = "/data/local/tmp",
        op_timeout_s: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(tmp_dir=tmp_dir)
        self.serial = serial or os.environ.get("ANDROID_SERIAL") or None
        found = adb_path or shutil.which("adb")
        if not found:
            raise AdbMissing("the adb binary is not on PATH (Debian: apt-get install adb)")
        self.adb_path = found
        self.op_timeout_s = op_timeout_s
        self.env = dict(os.environ if env is None else env)
        if server_port is not None:
            self.env["ANDROID_ADB_SERVER_PORT"] = str(server_port)

    def argv(self, args: Sequence[str]) -> list[str]:
        """The full host argv for an adb call (exposed for tests and logs)."""
        serial = ["-s", self.serial] if self.serial else []
        return [self.adb_path, *serial, *args]

    def _adb(self, args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
        argv = self.argv(args)
        try:
            return subprocess.run(argv, capture_output=True, timeout=timeout_s, env=self.env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(f"{argv[1:]!r} ran past {timeout_s} s") from exc

    @staticmethod
    def _kind(err: str) -> type[TransportError] | None:
        """What an adb client message says happened, or None for a message it does not recognise."""
        low = err.lower()
        if "unauthorized" in low:
            return DeviceUnauthorized
        kind = classify(err)
        if kind is None and any(s in low for s in _GONE):
            kind = DeviceDisconnected
        return kind

    def _raise_for(self, what: str, proc: subprocess.CompletedProcess[bytes]) -> None:
        err = (proc.stderr + proc.stdout).decode("utf-8", errors="replace")
        kind = self._kind(err)
        raise (kind or TransportError)(f"{what}: adb exited {proc.returncode}: {err.strip()[:500]}")

    def _exec(self, script: str, timeout_s: float) -> str:
        proc = self._adb(["shell", script], timeout_s)
        out = proc.stdout.decode("utf-8", errors="replace")
        if "__MEKI_RC_" in out:
            return out
        if proc.returncode != 0 and self._kind((proc.stderr + proc.stdout).decode("utf-8", errors="replace")):
            self._raise_for("shell", proc)  # adb said what failed
        # No exit status came back and adb said nothing it recognises. A device lost mid-command leaves
        # the client exiting 0 (or 1) silently: ask the server what the device is now, so that a blip is
        # retried as one.
        state = self._state()
        if state != "device":
            raise (self._kind(state) or DeviceDisconnected)(
                f"shell: the device went away mid-command (adb get-state: {state})")
        if proc.returncode != 0:
            self._raise_for("shell", proc)
        return out

    def _state(self) -> str:
        """`adb get-state` for this device: 'device', or adb's first line about why not."""
        try:
            proc = self._adb(["get-state"], 10.0)
        except CommandTimeout:
            return "no answer in 10 s"
        text = (proc.stdout or proc.stderr).decode("utf-8", errors="replace").strip()
        return text.splitlines()[0][:200] if text else f"adb exited {proc.returncode}"

    def _push_file(self, local: Path, remote: str, mode: int) -> None:
        proc = self._adb(["push", str(local), remote], self.op_timeout_s)
        if proc.returncode != 0:
            self._raise_for(f"push {remote}", proc)
        self.shell(["chmod", f"{mode:o}", remote]).check()

    def _pull_file(self, remote: str, local: Path) -> None:
        proc = self._adb(["pull", remote, str(local)], self.op_timeout_s)
        if proc.returncode != 0:
            self._raise_for(f"pull {remote}", proc)


class AdbMissing(TransportError):
    """The adb binary itself is missing."""
