"""Input paths checked before they are opened: a directory, FIFO or device where a file is expected
is refused by name (opening a FIFO for reading would block forever)."""

from __future__ import annotations

import argparse
import math
import os
import stat
from pathlib import Path
from typing import Callable


class InputError(ValueError):
    """A path given as input is missing or is not the kind of thing expected."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _stat(path: Path, what: str) -> os.stat_result:
    """os.stat (following links), a missing or unreadable path turned into InputError naming `what`."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except (NotADirectoryError, PermissionError) as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None


def require_file(path: Path, what: str = "file") -> Path:
    """`path` if it is (a symlink to) a regular file; else InputError saying what it is."""
    path = Path(path)
    st = _stat(path, what)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is {_kind(st.st_mode)}; expected a {what} (a regular file)")
    return path


def require_dir(path: Path, what: str = "folder") -> Path:
    path = Path(path)
    st = _stat(path, what)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path} is {'a file' if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)}; "
                         f"expected a {what} (a directory)")
    return path


def open_regular(path: Path, what: str = "file") -> int:
    """An O_RDONLY fd of a regular file. Opened non-blocking and re-checked with fstat, so a path
    swapped for a FIFO between the check and the open cannot hang the reader."""
    require_file(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{path} changed into something other than a regular file while being opened")
    os.set_blocking(fd, True)
    return fd


def read_text(path: Path, what: str = "file", limit: int = 64 << 20) -> str:
    """A small UTF-8 text file (JSON configs, manifests), refusing non-files, huge files, bad UTF-8."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise InputError(f"{path}: {size} bytes is too large for a {what} (limit {limit})")
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


# argparse `type=` checks: a bad number is a usage error (exit 2, one line) before any work starts
def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind: type, ok: Callable[[float], bool], must: str) -> Callable[[str], int | float]:
    """An argparse `type=`: a number of `kind` for which ok(value) holds, else '<value> must <must>'."""
    def parse(text: str) -> int | float:
        value = _number(kind, text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value} must {must}")
        return value
    return parse


positive_int = _bounded(int, lambda v: v > 0, "be a positive integer")
nonneg_int = _bounded(int, lambda v: v >= 0, "be 0 or more")
positive_float = _bounded(float, lambda v: v > 0, "be positive")
nonneg_float = _bounded(float, lambda v: v >= 0, "be 0 or more")
fraction = _bounded(float, lambda v: 0 < v < 1, "be between 0 and 1 (exclusive)")  # open interval (0, 1)
unit_interval = _bounded(float, lambda v: 0 < v <= 1, "be in (0, 1]")  # top-p


def output_file(text: str) -> Path:
    """An output file path: refuse one that is an existing directory, FIFO or device up front."""
    path = Path(text)
    if path.exists() or path.is_symlink():
        try:
            st = os.stat(path)
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise argparse.ArgumentTypeError(f"{path} is {_kind(st.st_mode)}; give a file path to write")
    return path


def require_bundle(bundle: Path) -> Path:
    """A bundle folder whose manifest.json is a regular file (checked before anything reads it)."""
    require_dir(bundle, "bundle folder")
    require_file(Path(bundle) / "manifest.json", "bundle manifest")
    return Path(bundle)


def require_parent_dir(out: Path) -> None:
    """Refuse an output whose parent path exists but is not a directory (`file/out`)."""
    for parent in Path(out).parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot create {out}: {parent} is not a directory")
            return
