"""Benchmark work folders reused only for the inputs that built them.

The benchmarks export their programs once and reuse them on the next run. Reuse is right only while the
options and the source checkpoint are the ones the programs were built from: a run with another
--max-seq-len, quantisation or checkpoint must not time yesterday's programs. `reuse_or_build` records
what a folder was built for (`built-for.json`) and builds it again when that differs; the build writes a
temporary sibling renamed into place when complete (contract.atomic), so an interrupted build leaves
nothing that looks reusable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from contract.atomic import atomic_dir, atomic_write_text

KEY_FILE = "built-for.json"


def files_stamp(*paths: Path | None) -> list[list]:
    """Name, size and modification time of every file under `paths` (folders walked; None skipped):
    changes when a checkpoint is rewritten, without reading its bytes."""
    stamp = []
    for p in (Path(p) for p in paths if p is not None):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return stamp


def _normalised(key: dict) -> dict:
    return json.loads(json.dumps(key, sort_keys=True, default=str))  # Paths, tuples -> JSON's own types


def built_for(out: Path) -> dict | None:
    """The key `out` was built for, or None (not built, or by something else)."""
    try:
        return json.loads((Path(out) / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None


def reuse_or_build(out: Path, key: dict, build: Callable[[Path], object]) -> Path:
    """`out` as built for `key`: kept when it was, else `build(tmp)` writes a fresh folder that replaces
    it. `out` must be a folder of the benchmark's own (it is replaced whole)."""
    out, want = Path(out), _normalised(key)
    if built_for(out) == want:
        return out
    with atomic_dir(out, overwrite=True) as tmp:
        build(tmp)
        atomic_write_text(tmp / KEY_FILE, json.dumps(want, indent=1))
    return out
