"""The one small interface every transport (adb-shell, adb binary, local) implements."""
from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from device_tests.errors import TransportError, classify


@dataclass(frozen=True)
class ShellResult:
    """What one command returned on the device."""

    argv: tuple[str, ...]  # the command as given, before quoting
    returncode: int
    stdout: str
    stderr: str

    def check(self, *, running_program: bool = False) -> "ShellResult":
        """Raise the matching TransportError subclass when the command failed."""
        if self.returncode == 0:
            return self
        text = f"{self.stderr}\n{self.stdout}"
        err = classify(text, self.returncode, running_program=running_program) or TransportError
        raise err(f"{shlex.join(self.argv)} exited {self.returncode}: {text.strip()[:500]}")


def quote_argv(argv: Sequence[str]) -> str:
    """One shell word per argument: the only way device commands are built (mksh and sh agree)."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of arguments, not a string")
    if not argv:
        raise ValueError("empty argv")
    return " ".join(shlex.quote(str(a)) for a in argv)


def tmp_name_for(remote: str, token: str) -> str:
    """A sibling temp name, so the final rename stays on one filesystem (atomic)."""
    head, _, base = remote.rstrip("/").rpartition("/")
    prefix = f"{head}/" if head or remote.startswith("/") else ""
    return f"{prefix}.{base}.meki-tmp-{token}"


class Transport(ABC):
    """Push/pull files, run commands and manage processes on one device (or this machine)."""

    name: str = "transport"

    @abstractmethod
    def shell(
        self, argv: Sequence[str], *, timeout_s: float = 60.0, cwd: str | None = None
    ) -> ShellResult:
        """Run argv (quoted word by word) and return its exit code, stdout and stderr."""

    @abstractmethod
    def push(self, local: Path, remote: str, *, mode: int = 0o644) -> bool:
        """Copy local to remote via a temp name and rename; False when sha256 already matched."""

    @abstractmethod
    def pull(self, remote: str, local: Path) -> None:
        """Copy remote to local (atomically on the host side)."""

    @abstractmethod
    def exists(self, remote: str) -> bool:
        """Whether the path exists on the device."""

    @abstractmethod
    def sha256(self, remote: str) -> str | None:
        """Hex sha256 of a device file, None when the file does not exist."""

    @abstractmethod
    def start(self, argv: Sequence[str], *, cwd: str, log_path: str) -> int:
        """Start argv in the background (stdout+stderr to log_path); return its pid."""

    @abstractmethod
    def stop(self, pid: int, *, grace_s: float = 2.0) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL."""

    @abstractmethod
    def is_running(self, pid: int) -> bool:
        """Whether pid is alive (zombies count as gone)."""

    @abstractmethod
    def free_bytes(self, remote_dir: str) -> int:
        """Bytes available to us on the filesystem holding remote_dir."""

    def read_text(self, remote: str, *, timeout_s: float = 30.0) -> str:
        """Contents of a small device text file such as /proc/PID/status."""
        return self.shell(["cat", remote], timeout_s=timeout_s).check().stdout

    def makedirs(self, remote_dir: str) -> None:
        """mkdir -p on the device."""
        self.shell(["mkdir", "-p", remote_dir]).check()

    def remove(self, remote: str, *, recursive: bool = False) -> None:
        """rm -f (or rm -rf) on the device."""
        self.shell(["rm", "-rf" if recursive else "-f", "--", remote]).check()

    def close(self) -> None:
        """Release the connection; the default holds none."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
