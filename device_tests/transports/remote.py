"""Shared logic of the adb transports: every operation is a quoted command over a device shell."""
from __future__ import annotations

import os
import re
import secrets
import time
from abc import abstractmethod
from pathlib import Path
from typing import Sequence

from contract.atomic import temp_sibling
from contract.hashing import sha256_file
from device_tests.errors import RemotePathMissing, TransportError, classify
from device_tests.transports.base import (
    ShellResult,
    Transport,
    quote_argv,
    tmp_name_for,
)

_DF_ROW = re.compile(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s")  # 1K-blocks Used Available Use%


class RemoteShellTransport(Transport):
    """A device reached through a shell service (adbd runs each command as `sh -c SCRIPT`).

    Subclasses supply raw command execution and raw file transfer; this class builds every
    script with shlex.quote on each argument and never splices a path in any other way.
    """

    def __init__(self, *, tmp_dir: str = "/data/local/tmp") -> None:
        self.tmp_dir = tmp_dir  # where stderr capture files go; always writable for adb's shell

    @abstractmethod
    def _exec(self, script: str, timeout_s: float) -> str:
        """Run script in the device shell; return its combined output (raise on timeout/loss)."""

    @abstractmethod
    def _push_file(self, local: Path, remote: str, mode: int) -> None:
        """Send one file to exactly `remote` (raise TransportError subclasses)."""

    @abstractmethod
    def _pull_file(self, remote: str, local: Path) -> None:
        """Receive one file into `local`."""

    def shell(
        self, argv: Sequence[str], *, timeout_s: float = 60.0, cwd: str | None = None
    ) -> ShellResult:
        # Legacy adb shells give neither the exit code nor a separate stderr, so the script
        # sends stderr to a file and prints the code after a random marker.
        token = secrets.token_hex(8)
        marker = f"__MEKI_RC_{token}__"
        err = quote_argv([f"{self.tmp_dir}/.meki-err-{token}"])
        cmd = quote_argv(argv)
        if cwd is not None:
            cmd = f"cd {quote_argv([cwd])} && {cmd}"
        # If the capture file cannot be made (full disk, no tmp dir), stderr joins stdout rather
        # than the shell silently skipping the command over a failed redirect.
        script = (
            f"if (: >{err}) 2>/dev/null; then ({cmd}) 2>{err}; else ({cmd}) 2>&1; fi; r=$?; "
            f"printf '\\n%s%d\\n' {marker} \"$r\"; cat {err} 2>/dev/null; rm -f {err}"
        )
        out = self._exec(script, timeout_s)
        return _split_marked(tuple(argv), out, marker)

    def push(self, local: Path, remote: str, *, mode: int = 0o644) -> bool:
        local = Path(local)
        digest = sha256_file(local)
        if self.sha256(remote) == digest:
            return False
        parent = remote.rstrip("/").rpartition("/")[0]
        if parent:
            self.makedirs(parent)
        tmp = tmp_name_for(remote, secrets.token_hex(6))
        try:
            self._push_file(local, tmp, mode)
            got = self.sha256(tmp)
            if got != digest:
                raise TransportError(f"push of {local} to {remote}: sha256 {got} != {digest}")
            self.shell(["mv", "-f", tmp, remote]).check()
        except BaseException:
            self._forget(tmp)
            raise
        return True

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = temp_sibling(local)
        try:
            self._pull_file(remote, tmp)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, remote: str) -> bool:
        res = self.shell(["test", "-e", remote])
        if res.returncode not in (0, 1):
            res.check()
        return res.returncode == 0

    def sha256(self, remote: str) -> str | None:
        res = self.shell(["sha256sum", remote])
        if res.returncode != 0:
            err = classify(res.stderr + res.stdout, res.returncode)
            if err is None or err is RemotePathMissing:
                return None
            res.check()
        head = res.stdout.split(maxsplit=1)[0] if res.stdout.strip() else ""
        head = head.removeprefix("\\")  # GNU sha256sum marks escaped names (newlines) with '\\'
        return head.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", head) else None

    def start(self, argv: Sequence[str], *, cwd: str, log_path: str) -> int:
        # nohup + redirects detach the runner from the adb shell session, which ends at once.
        script = (
            f"cd {quote_argv([cwd])} && nohup {quote_argv(argv)} >{quote_argv([log_path])} "
            "2>&1 </dev/null & echo $!"
        )
        res = self.shell(["sh", "-c", script])
        res.check()
        pid = int(res.stdout.strip().splitlines()[-1])
        time.sleep(0.05)  # let an exec failure land in the log before we look
        if not self.is_running(pid):
            log = self.shell(["cat", log_path]).stdout
            err = classify(log, running_program=True)
            if err is not None:
                raise err(f"{quote_argv(argv)} failed to start: {log.strip()[:500]}")
        return pid

    def stop(self, pid: int, *, grace_s: float = 2.0) -> None:
        self.shell(["kill", "-TERM", str(int(pid))])
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not self.is_running(pid):
                return
            time.sleep(0.1)
        self.shell(["kill", "-KILL", str(int(pid))])

    def is_running(self, pid: int) -> bool:
        res = self.shell(["cat", f"/proc/{int(pid)}/stat"])
        if res.returncode != 0:
            return False
        # Field 3 follows the ")" that ends the command name (which may hold spaces).
        state = res.stdout.rpartition(")")[2].split()[:1]
        return bool(state) and state[0] not in ("Z", "X")

    def free_bytes(self, remote_dir: str) -> int:
        res = self.shell(["df", "-k", remote_dir]).check()
        for line in reversed(res.stdout.splitlines()):
            m = _DF_ROW.search(f" {line} ")
            if m:
                return int(m.group(3)) * 1024
        raise TransportError(f"cannot read free space from df output: {res.stdout[:300]!r}")

    def _forget(self, remote: str) -> None:
        """Best-effort removal of a temp file after a failed push."""
        try:
            self.shell(["rm", "-f", remote], timeout_s=10.0)
        except TransportError:
            pass


def _split_marked(argv: tuple[str, ...], out: str, marker: str) -> ShellResult:
    """Split `stdout \\n MARKER rc \\n stderr` back into its parts."""
    if re.search(re.escape(marker) + r"-?\d+\r\n", out):
        out = out.replace("\r\n", "\n")  # a pty-backed legacy shell (old adbd) adds \r
    idx = out.rfind("\n" + marker)
    if idx < 0:
        raise TransportError(f"no exit status from device for {argv!r}; output: {out[-300:]!r}")
    stdout = out[:idx]
    rest = out[idx + 1 + len(marker):]
    code, _, stderr = rest.partition("\n")
    return ShellResult(argv, int(code.strip()), stdout, stderr)
