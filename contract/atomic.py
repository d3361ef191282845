"""Atomic outputs, one way for every writer in the toolkit.

A file or folder is written under a temporary sibling name (`.NAME.partial-PID-RAND`, so a reader
never sees it and concurrent writers never share it), flushed to disk, and renamed into place; on any
error the temporary is removed and `NAME` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterator


class OutputExistsError(FileExistsError):
    """The stage's output exists and overwriting was not asked for."""


PARTIAL = ".partial-"  # marker in every temporary sibling's name


def check_free(out: Path, overwrite: bool) -> None:
    if Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name next to `path` for writing it: `.NAME.partial-PID-RAND`."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}")


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
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    check_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = temp_sibling(out)
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
