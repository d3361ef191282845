"""How much memory this process may still grow into: the machine's, or less where a memory cgroup caps it.

Inside a container, a CI job or a systemd unit with MemoryMax, /proc/meminfo shows the host's memory,
not the limit: a check against MemAvailable alone passes there and the kernel then kills the job when
its cgroup fills. The cgroup's own figures say what is left: its limit (the tightest of its
ancestors'), less what is charged to it, plus the file pages among that charge, which the kernel
reclaims before it kills anything (page cache; mapped weights read from a file). Both cgroup
versions: v1's memory controller (memory.limit_in_bytes, hierarchical_memory_limit) and v2
(memory.max on each level up to the root).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # v1 writes "no limit" as a page-rounded 2^63 - 1


@dataclass(frozen=True)
class CgroupMemory:
    """One memory cgroup's figures, bytes."""
    path: Path
    version: int
    limit: int  # the tightest limit that applies to it (its own or an ancestor's)
    usage: int  # charged to it, page cache included
    file: int  # file-backed pages among `usage`: reclaimable

    @property
    def headroom(self) -> int:
        return max(self.limit - self.usage + self.file, 0)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v1 memory controller's path, v2 path) of this process, from /proc/self/cgroup."""
    v1 = v2 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            v1 = path
        elif controllers == "" and parts[0] == "0":
            v2 = path
    return v1, v2


def _located(mount: Path, path: str) -> Path:
    """The cgroup's directory: under a cgroup namespace (most containers) /proc shows '/' or a path
    the mount does not have; then the mount's root is the process's own cgroup."""
    here = mount / path.lstrip("/")
    return here if here.is_dir() else mount


def _own_cgroups(proc_cgroup: Path, root: Path) -> tuple[Path | None, tuple[Path, Path] | None]:
    """This process's v1 memory cgroup directory, and its v2 mount and directory (None where absent)."""
    v1_path, v2_path = _own_paths(proc_cgroup)
    v1 = _located(root / "memory", v1_path) if v1_path is not None and (root / "memory").is_dir() else None
    v2 = None
    if v2_path is not None:
        mount = root / "unified" if (root / "unified").is_dir() else root  # hybrid layouts mount v2 there
        v2 = (mount, _located(mount, v2_path))
    return v1, v2


def _v1(where: Path) -> CgroupMemory | None:
    stat = _stat(where / "memory.stat")
    own = _read_int(where / "memory.limit_in_bytes")
    usage = _read_int(where / "memory.usage_in_bytes")
    if own is None or usage is None:
        return None
    limit = min(own, stat.get("hierarchical_memory_limit", UNLIMITED))
    file = stat.get("total_inactive_file", stat.get("inactive_file", 0)) + stat.get(
        "total_active_file", stat.get("active_file", 0))
    return CgroupMemory(where, 1, limit, usage, file)


def _v2(mount: Path, where: Path) -> CgroupMemory | None:
    """The level with the least headroom from this cgroup up to the mount's root."""
    tightest = None
    level = where
    while True:
        limit, usage = _read_int(level / "memory.max"), _read_int(level / "memory.current")
        if limit is not None and usage is not None and limit < UNLIMITED:
            stat = _stat(level / "memory.stat")
            found = CgroupMemory(level, 2, limit, usage, stat.get("file", 0))
            if tightest is None or found.headroom < tightest.headroom:
                tightest = found
        if level == mount or level.parent == level:
            return tightest
        level = level.parent


def cgroup_memory(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> CgroupMemory | None:
    """This process's memory cgroup, where a limit applies to it; None when none does (or cgroups are
    not mounted, as on macOS or in some sandboxes)."""
    v1, v2 = _own_cgroups(proc_cgroup, root)
    found = [_v1(v1) if v1 is not None else None, _v2(*v2) if v2 is not None else None]
    limited = [c for c in found if c is not None and c.limit < UNLIMITED]
    return min(limited, key=lambda c: c.headroom) if limited else None


def physical_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_cap(cg: CgroupMemory | None) -> int:
    """The most memory this process's jobs may hold: the machine's, or its cgroup's (cgroup_memory())
    limit if lower."""
    return min(physical_bytes(), cg.limit) if cg is not None else physical_bytes()


def headroom_bytes(cg: CgroupMemory | None) -> int:
    """What this process and its children may still grow into: MemAvailable, or less where the cgroup's
    (cgroup_memory()) limit leaves less (its headroom counts the reclaimable file pages too)."""
    with open("/proc/meminfo") as fh:
        avail = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:")) * 1024
    return min(avail, cg.headroom) if cg is not None else avail


@dataclass(frozen=True)
class LimitedCgroup:
    """A memory cgroup this process moved into (limited_memory); its figures since then."""
    path: Path
    version: int
    limit: int

    def _file(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version == 1 else v2)

    def peak(self) -> int | None:
        """Highest charge (page cache included); v2 needs Linux >= 5.19 for memory.peak."""
        return _read_int(self._file("memory.max_usage_in_bytes", "memory.peak"))

    def oom_kills(self) -> int:
        return _stat(self._file("memory.oom_control", "memory.events")).get("oom_kill", 0)


@contextlib.contextmanager
def limited_memory(limit: int) -> Iterator[LimitedCgroup]:
    """Run the rest of this process, and the children it starts, in a new memory cgroup of `limit`
    bytes (a child of its own): what a benchmark needs to show that a job fits in so much memory, the
    kernel reclaiming page cache and mapped files within it as it would on a machine that size. Needs
    write access to the cgroup filesystem (root, or a delegated v2 subtree); raises OSError naming
    what failed otherwise. On leaving, the process moves back and the cgroup is removed."""
    v1, v2 = _own_cgroups(PROC_CGROUP, CGROUP_ROOT)
    if v1 is not None:
        parent, version, limit_file = v1, 1, "memory.limit_in_bytes"
    elif v2 is not None:
        parent, version, limit_file = v2[1], 2, "memory.max"
    else:
        raise OSError("no memory cgroup to limit: cgroups are not mounted at /sys/fs/cgroup")
    path = parent / f"meki-limit-{os.getpid()}"
    try:
        path.mkdir()
        (path / limit_file).write_text(str(limit))
        (path / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        if path.is_dir():
            path.rmdir()
        raise OSError(f"cannot run in a memory cgroup of {limit} bytes under {parent}: {exc}") from exc
    try:
        yield LimitedCgroup(path, version, limit)
    finally:
        (parent / "cgroup.procs").write_text(str(os.getpid()))
        try:
            path.rmdir()
        except OSError:  # a child still running in it: left for the system to clean up
            pass
