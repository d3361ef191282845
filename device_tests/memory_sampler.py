"""Sample a running process's memory through a transport into a time series."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from device_tests.errors import TransportError
from device_tests.parsers import parse_dumpsys_meminfo, parse_proc_status, parse_smaps_rollup
from device_tests.transports.base import Transport


@dataclass(frozen=True)
class MemorySample:
    """One reading (kB); None where the source was unreadable (e.g. smaps_rollup denied)."""

    t_s: float  # seconds since sampling started
    vm_rss_kb: int | None
    vm_hwm_kb: int | None
    rss_anon_kb: int | None
    rss_file_kb: int | None
    rss_shmem_kb: int | None
    pss_kb: int | None = None
    pss_anon_kb: int | None = None
    pss_file_kb: int | None = None
    swap_pss_kb: int | None = None
    app_total_pss_kb: int | None = None  # dumpsys meminfo, only when sampling an app package


@dataclass
class MemorySeries:
    pid: int
    interval_s: float
    samples: list[MemorySample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def peak(self, name: str) -> int | None:
        """Largest value of one MemorySample field over the run."""
        vals = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return max(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_sample(t: Transport, pid: int, t_s: float, package: str | None = None) -> MemorySample:
    """One reading of /proc/PID/status and smaps_rollup (and dumpsys meminfo for an app)."""
    status = parse_proc_status(t.read_text(f"/proc/{int(pid)}/status"))
    try:
        rollup = parse_smaps_rollup(t.read_text(f"/proc/{int(pid)}/smaps_rollup"))
    except (TransportError, ValueError):
        rollup = None  # another uid's process, or a kernel before 4.14
    app_pss = None
    if package is not None:
        out = t.shell(["dumpsys", "meminfo", package], timeout_s=30.0).check().stdout
        app_pss = parse_dumpsys_meminfo(out).total_pss_kb
    return MemorySample(
        t_s=t_s, vm_rss_kb=status.vm_rss_kb, vm_hwm_kb=status.vm_hwm_kb,
        rss_anon_kb=status.rss_anon_kb, rss_file_kb=status.rss_file_kb,
        rss_shmem_kb=status.rss_shmem_kb,
        pss_kb=rollup.pss_kb if rollup else None,
        pss_anon_kb=rollup.pss_anon_kb if rollup else None,
        pss_file_kb=rollup.pss_file_kb if rollup else None,
        swap_pss_kb=rollup.swap_pss_kb if rollup else None, app_total_pss_kb=app_pss,
    )


class MemorySampler:
    """Background thread sampling every interval_s until stop() or the process exits.

    with MemorySampler(transport, pid) as sampler: ...  then sampler.series
    """

    def __init__(self, t: Transport, pid: int, *, interval_s: float = 0.5,
                 package: str | None = None) -> None:
        self.t, self.pid, self.package = t, pid, package
        self.series = MemorySeries(pid=pid, interval_s=interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                self.series.samples.append(
                    read_sample(self.t, self.pid, time.monotonic() - t0, self.package))
            except (TransportError, ValueError) as exc:
                # The process exiting between two samples ends the series; anything else is noted.
                try:
                    if not self.t.is_running(self.pid):
                        return
                except TransportError as again:  # the link itself is gone: the bench decides
                    self.series.errors.append(f"{exc}; then {again}"[:300])
                    return
                self.series.errors.append(str(exc)[:300])
            self._stop.wait(self.series.interval_s)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> MemorySeries:
        self._stop.set()
        self._thread.join(timeout=30.0)
        return self.series

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
