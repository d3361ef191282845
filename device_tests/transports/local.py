"""This machine as a 'device': the same operations as argv subprocesses in a working dir."""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from device_tests.errors import (
    CommandTimeout,
    DeviceFull,
    PermissionDenied,
    RemotePathMissing,
    RunnerMissing,
    TransportError,
)
from contract.atomic import temp_sibling
from contract.hashing import sha256_file
from device_tests.transports.base import ShellResult, Transport, tmp_name_for


def _os_error(exc: OSError, what: str) -> TransportError:
    """Map an OSError to the harness's error types."""
    if exc.errno == errno.ENOSPC:
        return DeviceFull(f"{what}: {exc}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"{what}: {exc}")
    if exc.errno == errno.ENOENT:
        return RemotePathMissing(f"{what}: {exc}")
    return TransportError(f"{what}: {exc}")


class LocalTransport(Transport):
    """Runs everything on the host; relative remote paths resolve against `workdir`."""

    name = "local"

    def __init__(self, workdir: str | Path = ".") -> None:
        self.workdir = Path(workdir).resolve()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # kept so we can reap them

    def _path(self, remote: str) -> Path:
        return self.workdir / remote  # an absolute remote path replaces workdir

    def shell(
        self, argv: Sequence[str], *, timeout_s: float = 60.0, cwd: str | None = None
    ) -> ShellResult:
        args = [str(a) for a in argv]
        try:
            proc = subprocess.run(
                args, cwd=self._path(cwd) if cwd else self.workdir, capture_output=True,
                timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(f"{args!r} ran past {timeout_s} s") from exc
        except FileNotFoundError as exc:
            # Same exit status a device shell gives for a missing program.
            return ShellResult(tuple(args), 127, "", f"{args[0]}: not found ({exc})")
        except PermissionError as exc:
            return ShellResult(tuple(args), 126, "", f"{args[0]}: Permission denied ({exc})")
        dec = lambda b: b.decode("utf-8", errors="replace")  # noqa: E731
        return ShellResult(tuple(args), proc.returncode, dec(proc.stdout), dec(proc.stderr))

    def push(self, local: Path, remote: str, *, mode: int = 0o644) -> bool:
        dst = self._path(remote)
        digest = sha256_file(Path(local))
        if dst.is_file() and sha256_file(dst) == digest:
            return False
        tmp = Path(tmp_name_for(str(dst), secrets.token_hex(6)))
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, dst)
        except OSError as exc:
            raise _os_error(exc, f"push {local} -> {dst}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = temp_sibling(local)
        try:
            shutil.copyfile(self._path(remote), tmp)
            os.replace(tmp, local)
        except OSError as exc:
            raise _os_error(exc, f"pull {remote} -> {local}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, remote: str) -> bool:
        return self._path(remote).exists()

    def sha256(self, remote: str) -> str | None:
        path = self._path(remote)
        try:
            return sha256_file(path) if path.is_file() else None
        except OSError as exc:
            raise _os_error(exc, f"sha256 {path}") from exc

    def read_text(self, remote: str, *, timeout_s: float = 30.0) -> str:
        try:
            return self._path(remote).read_text(errors="replace")
        except OSError as exc:
            raise _os_error(exc, f"read {remote}") from exc

    def start(self, argv: Sequence[str], *, cwd: str, log_path: str) -> int:
        args = [str(a) for a in argv]
        wd = self._path(cwd)
        try:
            with open(self._path(log_path), "wb") as log:
                proc = subprocess.Popen(
                    args, cwd=wd, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
        except FileNotFoundError as exc:
            raise RunnerMissing(f"{args[0]}: not found (cwd {wd})") from exc
        except PermissionError as exc:
            raise PermissionDenied(f"{args[0]}: {exc}") from exc
        except OSError as exc:  # ENOEXEC: not a program for this machine (wrong ABI, no #!)
            raise RunnerMissing(f"{args[0]}: cannot execute ({exc})") from exc
        self._procs[proc.pid] = proc
        return proc.pid

    def stop(self, pid: int, *, grace_s: float = 2.0) -> None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self.is_running(pid):
                time.sleep(0.02)
            if not self.is_running(pid):
                break
        self._procs.pop(pid, None)

    def is_running(self, pid: int) -> bool:
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll() is None  # poll() also reaps our own children
        try:
            stat = Path(f"/proc/{int(pid)}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"], [])

    def free_bytes(self, remote_dir: str) -> int:
        return shutil.disk_usage(self._path(remote_dir)).free

    def makedirs(self, remote_dir: str) -> None:
        self._path(remote_dir).mkdir(parents=True, exist_ok=True)

    def remove(self, remote: str, *, recursive: bool = False) -> None:
        path = self._path(remote)
        if recursive and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        for pid in list(self._procs):
            if self.is_running(pid):
                self.stop(pid, grace_s=0.5)
