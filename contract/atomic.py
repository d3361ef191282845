"""Atomic outputs, one way for every writer in the toolkit.

A file or folder is written under a temporary sibling name (`.NAME.partial-PID-RAND`, so a reader
never sees it and concurrent writers never share it), flushed to disk, and renamed into place; on any
error the temporary is removed and `NAME` is untouched.

A folder output is also locked for the whole write (`flock` on `.NAME.lock` beside it): a second
command aimed at the same output fails at once with OutputLockedError instead of both "succeeding".
Temporaries left by a killed writer (their PID is dead) are removed by the next writer of NAME.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterator


class OutputExistsError(FileExistsError):
    """The stage's output exists and overwriting was not asked for."""


class OutputLockedError(RuntimeError):
    """Another command is writing the same output right now."""


PARTIAL = ".partial-"  # marker in every temporary sibling's name
LOCK_SUFFIX = ".lock"


def check_free(out: Path, overwrite: bool) -> None:
    from contract.inputs import require_parent_dir

    require_parent_dir(out)
    if (Path(out).exists() or Path(out).is_symlink()) and not overwrite:  # a dangling link is there too
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name next to `path` for writing it: `.NAME.partial-PID-RAND`.

    Temporaries of `path` left by dead processes (kill -9, power loss) are removed first."""
    path = Path(path)
    remove_stale(path)
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale(path: Path, all_but_mine: bool = False) -> list[Path]:
    """Remove `.NAME.partial-PID-*` siblings of `path` whose writer is dead (or, when the caller
    holds NAME's lock, every one not written by this process). Returns what was removed."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}{PARTIAL}") + r"(\d+)-[0-9a-f]+$")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or (not all_but_mine and _pid_alive(pid)):
            continue
        stale = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on `.NAME.lock` beside `out` (released on exit or death).

    The lock file is removed on release; a holder re-checks that the file it locked is still the
    one at the path, so removal cannot let two holders in."""
    from contract.inputs import require_parent_dir

    require_parent_dir(out)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputLockedError(f"{out} is being written by another command (pid {holder}); "
                                        "wait for it to finish or choose another output") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: retry
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(tmp: Path, path: Path) -> None:
    """Rename a fully written (and fsynced) temporary file into place, durably."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", overwrite: bool = True, perm: int = 0o644) -> Iterator[IO]:
    """Yields a file open for writing at a temporary sibling; renamed to `path` on success."""
    path = Path(path)
    check_free(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, perm)
        commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    with atomic_file(path, "wb", overwrite) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def atomic_copy(src: Path, dst: Path, perm: int = 0o644) -> None:
    """Copy a file so that `dst` is either the old file or the whole new one."""
    with atomic_file(dst, "wb", overwrite=True, perm=perm) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False, lock: bool = True) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `out`, on error it is removed.

    `out` is locked for the whole write (lock=False when the caller already holds output_lock(out))
    and what killed writers of `out` left behind is removed before starting."""
    out = Path(out)
    check_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out) if lock else contextlib.nullcontext():
        check_free(out, overwrite)  # again, now that no one else can be writing it
        remove_stale(out, all_but_mine=True)
        tmp = temp_sibling(out)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = temp_sibling(out)
        moved = out.exists() or out.is_symlink()
        try:
            if moved:
                os.rename(out, old)
            os.rename(tmp, out)
        except BaseException:  # nothing that looks complete stays under a temporary name; the old output returns
            shutil.rmtree(tmp, ignore_errors=True)
            if moved and not (out.exists() or out.is_symlink()):
                os.rename(old, out)
            raise
        fsync_dir(out.parent)
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
