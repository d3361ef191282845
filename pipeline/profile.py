"""Stage profiler: wall time and peak RSS (this process and its children) per named stage.

    with StageProfiler() as prof:          # or activate(prof) around library code
        with stage("load"):                # a no-op when no profiler is active
            ...
    print(prof.table()); prof.to_json()

Peaks come from two sources: a sampler thread (every `interval` s) sums VmRSS over the process
tree (converters that fork count too), and the kernel's own high-water mark VmHWM of this
process, reset at each stage boundary through /proc/self/clear_refs (so a spike shorter than the
sampling interval is still seen). Nested stages are named "outer/inner"; an outer stage's peak
includes its inner ones. While there are child processes the sampler also sums their proportional
set size (Pss, once a second): a forked child shares its parent's pages, which the RSS sum counts
twice and Pss once.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

_ACTIVE: "StageProfiler | None" = None


def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(root: int) -> list[int]:
    """Process ids below `root` (scans /proc/*/stat: /proc/<pid>/task/*/children is not always built in)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # comm may hold spaces or ')'
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        frontier += kids
    return found


def tree_rss_kib(pid: int | None = None) -> int:
    """Resident set of a process and all its descendants, KiB."""
    pid = pid or os.getpid()
    return _status_kib(pid, "VmRSS") + sum(_status_kib(p, "VmRSS") for p in descendants(pid))


def tree_pss_kib(pids: list[int]) -> int:
    """Proportional set size of these processes, KiB: a page shared by n of them counts 1/n in each."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                total += next((int(line.split()[1]) for line in fh if line.startswith("Pss:")), 0)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    except OSError:
        pass


@dataclass
class StageRecord:
    name: str
    wall_s: float = 0.0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    peak_tree_mib: float = 0.0  # highest sampled RSS of the process tree
    peak_self_mib: float = 0.0  # kernel high-water mark of this process during the stage
    peak_pss_mib: float = 0.0  # highest sampled Pss of the process tree (sampled only while it has children)
    # highest sampled anonymous memory of the tree (RssAnon): what the kernel cannot reclaim without swap,
    # unlike the file pages in RSS (page cache, weights mapped from a file)
    peak_anon_mib: float = 0.0
    children: list[str] = field(default_factory=list)

    @property
    def peak_mib(self) -> float:
        return max(self.peak_tree_mib, self.peak_self_mib)


class StageProfiler:
    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.records: list[StageRecord] = []
        self._stack: list[StageRecord] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.peak_mib = 0.0
        self.peak_pss_mib = 0.0
        self.peak_anon_mib = 0.0

    def __enter__(self) -> "StageProfiler":
        global _ACTIVE
        self._prev, _ACTIVE = _ACTIVE, self
        _reset_hwm()
        self.t0 = time.perf_counter()
        self._start_sampler()
        return self

    def _start_sampler(self) -> None:
        self._thread = threading.Thread(target=self._sample, name="stage-profiler", daemon=True)
        self._thread.start()

    def after_fork_in_child(self) -> int:
        """In a forked child: new lock and sampler (the parent's thread is not copied and its lock may have
        been held at the fork). The child's stages are the records from the returned index on."""
        self._lock, self._stop = threading.Lock(), threading.Event()
        self.peak_mib = self.peak_pss_mib = self.peak_anon_mib = 0.0
        _reset_hwm()
        self._start_sampler()
        return len(self.records)

    def adopt(self, records: list[dict]) -> None:
        """Add stages measured in a child process (StageRecord fields, as after_fork_in_child's records)."""
        with self._lock:
            for r in records:
                rec = StageRecord(**{k: v for k, v in r.items() if k in StageRecord.__dataclass_fields__})
                self.records.append(rec)
                self.peak_mib = max(self.peak_mib, rec.peak_self_mib)

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._fold_hwm()
        _ACTIVE = self._prev

    def _sample(self) -> None:
        kids: list[int] = []
        last_scan = 0.0
        while not self._stop.wait(self.interval):
            pss = 0.0
            if time.perf_counter() - last_scan > 1.0:  # scanning /proc is the costly part: once a second
                kids, last_scan = descendants(os.getpid()), time.perf_counter()
                if kids:  # Pss walks the page tables (~10 ms per GB): with the scan, only while there are children
                    pss = tree_pss_kib([os.getpid(), *kids]) / 1024
            mib = (_status_kib("self", "VmRSS") + sum(_status_kib(p, "VmRSS") for p in kids)) / 1024
            anon = (_status_kib("self", "RssAnon") + sum(_status_kib(p, "RssAnon") for p in kids)) / 1024
            with self._lock:
                self.peak_mib = max(self.peak_mib, mib)
                self.peak_pss_mib = max(self.peak_pss_mib, pss)
                self.peak_anon_mib = max(self.peak_anon_mib, anon)
                for rec in self._stack:
                    rec.peak_tree_mib = max(rec.peak_tree_mib, mib)
                    rec.peak_anon_mib = max(rec.peak_anon_mib, anon)
                    rec.peak_pss_mib = max(rec.peak_pss_mib, pss)

    def _fold_hwm(self) -> None:
        """Credit this process's high-water mark since the last boundary to every open stage."""
        mib = _status_kib("self", "VmHWM") / 1024
        with self._lock:
            self.peak_mib = max(self.peak_mib, mib)
            for rec in self._stack:
                rec.peak_self_mib = max(rec.peak_self_mib, mib)
        _reset_hwm()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        full = "/".join([r.name for r in self._stack[-1:]] + [name])
        self._fold_hwm()
        now = tree_rss_kib() / 1024
        rec = StageRecord(full, rss_start_mib=now, peak_tree_mib=now)
        if self._stack:
            self._stack[-1].children.append(full)
        with self._lock:
            self.records.append(rec)
            self._stack.append(rec)
        t = time.perf_counter()
        try:
            yield rec
        finally:
            rec.wall_s = time.perf_counter() - t
            self._fold_hwm()
            with self._lock:
                self._stack.pop()
            rec.rss_end_mib = tree_rss_kib() / 1024

    def to_json(self) -> dict:
        return {"total_s": round(time.perf_counter() - self.t0, 2), "peak_mib": round(self.peak_mib, 1),
                "peak_pss_mib": round(self.peak_pss_mib, 1), "peak_anon_mib": round(self.peak_anon_mib, 1),
                "stages": [{**{k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(r).items()},
                            "peak_mib": round(r.peak_mib, 1)} for r in self.records]}

    def table(self) -> str:
        lines = [f"{'stage':<44} {'wall s':>8} {'start MiB':>10} {'peak MiB':>9} {'end MiB':>9} {'anon MiB':>9}"]
        for r in self.records:
            depth = r.name.count("/")
            label = ("  " * depth + r.name.rsplit("/", 1)[-1])[:44]
            lines.append(f"{label:<44} {r.wall_s:>8.1f} {r.rss_start_mib:>10.0f} {r.peak_mib:>9.0f} "
                         f"{r.rss_end_mib:>9.0f} {r.peak_anon_mib:>9.0f}")
        lines.append(f"{'total':<44} {time.perf_counter() - self.t0:>8.1f} {'':>10} {self.peak_mib:>9.0f} {'':>9} "
                     f"{self.peak_anon_mib:>9.0f}")
        if self.peak_pss_mib:
            lines.append(f"{'peak Pss of the process tree (shared pages once)':<55} {self.peak_pss_mib:>18.0f}")
        return "\n".join(lines)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a stage of the active profiler (none active: nothing is measured)."""
    if _ACTIVE is None:
        yield
        return
    with _ACTIVE.stage(name):
        yield


def active() -> "StageProfiler | None":
    return _ACTIVE


def release() -> None:
    """Free the previous stage's intermediates before the next one starts (cycles included)."""
    gc.collect()
    try:  # glibc keeps freed arenas mapped; hand them back so the next stage's peak starts low
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def save_json(prof: StageProfiler, path: str, **extra: object) -> None:
    with open(path, "w") as fh:
        json.dump({**extra, **prof.to_json()}, fh, indent=2)
