"""The export's helper processes (LiteRT's converter, ai-edge-quantizer, the QNN compiler): run one,
and turn its failure into one line that says what happened, the full output going to the log."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.export.registry import ExportError
from pipeline.memory_limit import cgroup_memory, memory_cap, physical_bytes

log = logging.getLogger(__name__)
GIB = 1 << 30
GB = 10**9


def last_line(lines: list[str]) -> list[str]:
    """A Python child's failure: its last line is the exception."""
    return lines[-1:]


_SCRATCH: list[Path] = []  # the scratch_dir blocks open now, innermost last


def check_free_space(where: Path, need: int, what: str) -> None:
    """Refuse before writing when `need` bytes will not fit on `where`'s disk (a helper writing through a
    mapping of a file the disk cannot hold dies of SIGBUS, half-way through)."""
    free = shutil.disk_usage(where).free
    if need > free:
        raise ExportError(f"{what} will write about {need / GB:.1f} GB beside the bundle ({where}); {free / GB:.1f} GB "
                          "is free on that disk: free some space or write the bundle to another disk")


@contextlib.contextmanager
def scratch_dir(near: Path, name: str, need: int = 0) -> Iterator[Path]:
    """A directory for an export's intermediates beside its output `near` (the disk the user chose for
    the bundle; removed on leaving), which is also the temp dir of the helpers run_child starts inside
    the block (TMPDIR). Not the system temp dir: /tmp is memory (tmpfs, half the RAM) on many systems
    (Debian 13, Fedora, Arch), where the Qwen3-4B fp32 handoff to LiteRT's converter (18 GB) would fill
    it, or hold memory that the estimate counts as reclaimable page cache. need: the bytes the block will
    write there (checked against the disk's free space first)."""
    check_free_space(near, need, f"the export's {name} step")
    with tempfile.TemporaryDirectory(prefix=f".meki-{name}-", dir=near) as work:
        _SCRATCH.append(Path(work))
        try:
            yield Path(work)
        finally:
            _SCRATCH.pop()


def run_child(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              pick: Callable[[list[str]], list[str]] = last_line) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; on failure raise ExportError naming `what` and the lines `pick` chose from its output."""
    if _SCRATCH:
        env = (os.environ if env is None else env) | {"TMPDIR": str(_SCRATCH[-1])}
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=cwd)
    except subprocess.CalledProcessError as exc:
        output = f"{exc.stdout or ''}\n{exc.stderr or ''}"
        log.info("%s: %s exited %s; its output:\n%s", what, cmd[0], exc.returncode, output)
        raise ExportError(child_failure(what, exc.returncode, output, pick)) from exc


def child_failure(what: str, returncode: int, output: str,
                  pick: Callable[[list[str]], list[str]] = last_line) -> str:
    if returncode == -signal.SIGKILL:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB  # Linux: KiB
        cap, machine = memory_cap(cgroup_memory()), physical_bytes()
        limited = cap < machine
        of = f"the {cap / GIB:.1f} GiB this job's memory cgroup allows" if limited else \
            f"the machine's {machine / GIB:.1f} GiB"
        return (f"{what} was killed by the system (SIGKILL: out of memory, most likely; helper processes peaked at "
                f"{peak:.1f} GiB of {of}): {'raise that limit, ' if limited else ''}close other programs or use a "
                "machine with more memory")
    if returncode == -signal.SIGBUS and _SCRATCH:  # a fault on a mapped file: reading or writing it failed
        free = shutil.disk_usage(_SCRATCH[-1]).free / GB
        return (f"{what} died of SIGBUS: a file it had mapped could not be read or written (a full disk, most "
                f"likely: {free:.1f} GB free on the bundle's disk, {_SCRATCH[-1].parent})")
    if returncode < 0:
        return f"{what} died of {signal.Signals(-returncode).name}"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    said = " | ".join(dict.fromkeys(pick(lines)))
    return f"{what} failed (exit {returncode}): {said or 'no output'}"
