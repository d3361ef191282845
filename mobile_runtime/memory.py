"""Process memory from /proc/self/status: resident set split into anonymous and file-backed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_FIELDS = {"VmRSS": "rss_bytes", "VmHWM": "rss_peak_bytes", "RssAnon": "rss_anon_bytes",
                 "RssFile": "rss_file_bytes"}


@dataclass
class MemorySnapshot:
    rss_bytes: int
    rss_peak_bytes: int  # VmHWM: the high-water mark since the process started
    rss_anon_bytes: int
    rss_file_bytes: int
    pack_resident_bytes: int  # the memory pack's pages/cache held in RAM by this process


def read_status(path: Path = Path("/proc/self/status")) -> dict[str, int]:
    values = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_FIELDS:
            values[STATUS_FIELDS[key]] = int(rest.split()[0]) * 1024  # reported in kB
    return values


def memory_snapshot(pack: Any = None) -> MemorySnapshot:
    status = read_status()
    return MemorySnapshot(pack_resident_bytes=pack.resident_bytes() if pack is not None else 0,
                          **{k: status.get(k, 0) for k in STATUS_FIELDS.values()})
