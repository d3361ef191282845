"""The bundle rules every reader shares (conformance/CHECKS.md): manifest limits, clean relative
paths, no symlinks, the folder rule. stdlib only; the C++, Java and Swift readers implement the same.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Iterable

MAX_MANIFEST_BYTES = 1 << 20   # a real manifest is a few KiB; 1 MiB lists ~7,000 files
MAX_JSON_DEPTH = 64            # a real manifest nests 8 deep; the cap keeps every parser off deep recursion
_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")


class RuleError(ValueError):
    """A broken rule; `check` is its CHECKS.md name."""

    def __init__(self, message: str, check: str):
        super().__init__(message)
        self.check = check


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays/objects in JSON text, by a scan that never recurses
    (string contents are skipped, so brackets inside strings do not count)."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_STRINGS.sub(b'""', data)):
        if b in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_manifest_bytes(data: bytes, where: str) -> str:
    """Size cap, depth cap, UTF-8; returns the text. Raises RuleError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise RuleError(f"{where}: {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte manifest limit",
                        "manifest.too_large")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise RuleError(f"{where}: JSON nests deeper than {MAX_JSON_DEPTH} levels", "manifest.too_deep")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RuleError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})", "manifest.json") from None


def path_problem(p: str) -> str | None:
    """Why p is not a clean bundle-relative path ('a/b.c'), or None."""
    if not p:
        return "empty path"
    if p.startswith("/"):
        return "absolute path"
    for c in p.split("/"):
        if c in ("", ".", ".."):
            return f"'{c}' component" if c else "empty component (// or a trailing /)"
        if not _COMPONENT.fullmatch(c):
            return "a character outside [A-Za-z0-9._-/]"
    return None


def manifest_paths(data: dict) -> Iterable[tuple[str, object]]:
    """(where, value) of every path field of a manifest dict, whatever the value's type."""
    if not isinstance(data, dict):
        return
    for i, f in enumerate(data.get("files") or []):
        if isinstance(f, dict) and "path" in f:
            yield f"files/{i}/path", f["path"]
    for i, b in enumerate(data.get("backbones") or []):
        if isinstance(b, dict) and "file" in b:
            yield f"backbones/{i}/file", b["file"]
    for key in ("memory_pack", "tokenizer"):
        ref = data.get(key)
        if isinstance(ref, dict) and "file" in ref:
            yield f"{key}/file", ref["file"]


def check_manifest_paths(data: dict) -> None:
    """Raise RuleError(manifest.path) for the first string path field that is not clean."""
    for where, value in manifest_paths(data):
        if isinstance(value, str) and (why := path_problem(value)) is not None:
            raise RuleError(f"{where}: {value!r} is not a clean relative path ({why})", "manifest.path")
    seen: dict[str, int] = {}  # a file listed twice would be hashed and copied twice (N times: a 1 MiB
    for i, f in enumerate(data.get("files") or [] if isinstance(data, dict) else []):  # manifest, hours)
        path = f.get("path") if isinstance(f, dict) else None
        if isinstance(path, str):
            if path in seen:
                raise RuleError(f"files/{i}/path: {path!r} is listed twice (files/{seen[path]}/path too)",
                                "manifest.path")
            seen[path] = i


def lstat_inside(bundle: Path, rel: str) -> os.stat_result:
    """lstat of bundle/rel, refusing a symlink at any component below the bundle folder.
    rel must be clean (path_problem is None). Raises RuleError(bundle.symlink / bundle.missing)."""
    cur = Path(bundle)
    parts = rel.split("/")
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except OSError:
            raise RuleError(f"{rel}: missing", "bundle.missing") from None
        if stat.S_ISLNK(st.st_mode):
            what = "is" if i == len(parts) - 1 else f"is under {'/'.join(parts[:i + 1])}, which is"
            raise RuleError(f"{rel}: {what} a symbolic link (refused: it may point outside the bundle)",
                            "bundle.symlink")
    if not stat.S_ISREG(st.st_mode):
        raise RuleError(f"{rel}: not a regular file", "bundle.missing")
    return st


def is_listed(ref: str, listed: set[str]) -> bool:
    """The folder rule: ref is listed, or names a folder with at least one listed file under it."""
    return ref in listed or any(f.startswith(ref + "/") for f in listed)
