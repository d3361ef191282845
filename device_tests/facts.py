"""Device facts recorded with every benchmark result (phone via adb, or this host)."""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from device_tests.errors import TransportError
from device_tests.parsers import (
    parse_battery,
    parse_getprop,
    parse_proc_meminfo,
    parse_thermalservice,
)
from device_tests.transports.base import Transport
from device_tests.transports.local import LocalTransport

T = TypeVar("T")
# Every value is printed, "-" where it cannot be read: a failed read must not shift the next values
# into its field (an empty field would vanish in the split).
_VALUE_FN = 'v() { x=$(cat "$1" 2>/dev/null); echo "${x:--}"; }; '
# A fixed script (no interpolated input): "NAME GOVERNOR CUR MAX" per cpufreq policy.
_CPUFREQ_SCRIPT = (
    _VALUE_FN + "for d in /sys/devices/system/cpu/cpufreq/policy*; do [ -d \"$d\" ] || continue; "
    'echo "${d##*/} $(v $d/scaling_governor) $(v $d/scaling_cur_freq) $(v $d/cpuinfo_max_freq)"; done'
)


@dataclass
class CpuPolicy:
    name: str  # 'policy0' ... one per cluster
    governor: str | None
    cur_khz: int | None
    max_khz: int | None


@dataclass
class DeviceFacts:
    """What a result row needs to say which machine produced it, and in what state."""

    kind: str  # 'android' or 'host'
    model: str | None = None
    manufacturer: str | None = None
    soc: str | None = None  # ro.soc.model (Android 12+), else ro.hardware; a host's CPU model name
    board: str | None = None  # ro.board.platform
    os_version: str | None = None  # Android release or host kernel
    sdk: int | None = None
    abi: str | None = None
    page_size: int | None = None
    total_ram_kb: int | None = None
    cpu_policies: list[CpuPolicy] = field(default_factory=list)
    thermal_status: str | None = None
    max_cpu_celsius: float | None = None
    max_skin_celsius: float | None = None
    battery_percent: float | None = None
    battery_celsius: float | None = None
    errors: list[str] = field(default_factory=list)  # facts that could not be read, and why

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _try(errors: list[str], what: str, fn: Callable[[], T]) -> T | None:
    """A missing fact is recorded, not fatal: dumpsys may be denied or absent."""
    try:
        return fn()
    except (TransportError, ValueError, OSError, IndexError) as exc:
        errors.append(f"{what}: {exc}"[:300])
        return None


def _khz(word: str | None) -> int | None:
    return int(word) if word is not None and word.isdigit() else None


def _policies(text: str) -> list[CpuPolicy]:
    """_CPUFREQ_SCRIPT's lines, by position ("-": not readable)."""
    out = []
    for line in text.splitlines():
        parts = line.split() + ["-"] * 3
        if not parts[0].startswith("policy"):
            continue
        out.append(CpuPolicy(parts[0], None if parts[1] == "-" else parts[1], _khz(parts[2]), _khz(parts[3])))
    return out


def android_facts(t: Transport) -> DeviceFacts:
    """Facts of a phone through any remote transport."""
    f = DeviceFacts(kind="android")
    props = _try(f.errors, "getprop", lambda: parse_getprop(t.shell(["getprop"]).check().stdout)) or {}
    f.model, f.manufacturer = props.get("ro.product.model"), props.get("ro.product.manufacturer")
    f.soc = props.get("ro.soc.model") or props.get("ro.hardware") or None
    f.board = props.get("ro.board.platform") or None
    f.os_version = props.get("ro.build.version.release")
    f.sdk = int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk", "").isdigit() else None
    f.abi = props.get("ro.product.cpu.abi")
    f.page_size = _try(f.errors, "page size",
                       lambda: int(t.shell(["getconf", "PAGESIZE"]).check().stdout.split()[0]))
    mem = _try(f.errors, "meminfo", lambda: parse_proc_meminfo(t.read_text("/proc/meminfo")))
    f.total_ram_kb = mem.mem_total_kb if mem else None
    f.cpu_policies = _try(f.errors, "cpufreq",
                          lambda: _policies(t.shell(["sh", "-c", _CPUFREQ_SCRIPT]).stdout)) or []
    th = _try(f.errors, "thermal",
              lambda: parse_thermalservice(t.shell(["dumpsys", "thermalservice"]).check().stdout))
    if th is not None:
        f.thermal_status = th.status_name
        f.max_cpu_celsius, f.max_skin_celsius = th.max_celsius("CPU"), th.max_celsius("SKIN")
    bat = _try(f.errors, "battery",
               lambda: parse_battery(t.shell(["dumpsys", "battery"]).check().stdout))
    if bat is not None:
        f.battery_percent, f.battery_celsius = bat.percent, bat.celsius
    return f


def _read(path: str) -> str:
    return Path(path).read_text(errors="replace")


def host_facts() -> DeviceFacts:
    """The host equivalents, from /proc, /sys, platform and os."""
    f = DeviceFacts(kind="host", model=platform.node(), os_version=platform.release(),
                    abi=platform.machine(), page_size=os.sysconf("SC_PAGE_SIZE"))
    cpuinfo = _try(f.errors, "cpuinfo", lambda: _read("/proc/cpuinfo")) or ""
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")]
    f.soc = names[0] if names else platform.processor() or None
    mem = _try(f.errors, "meminfo", lambda: parse_proc_meminfo(_read("/proc/meminfo")))
    f.total_ram_kb = mem.mem_total_kb if mem else None
    for d in sorted(Path("/sys/devices/system/cpu/cpufreq").glob("policy*")):
        # an inactive policy (all its CPUs offline) answers EBUSY: that value is None, the rest stands
        val = lambda n: _try(f.errors, str(d / n), lambda: _read(str(d / n)).strip())  # noqa: E731
        f.cpu_policies.append(CpuPolicy(d.name, val("scaling_governor") or None, _khz(val("scaling_cur_freq")),
                                        _khz(val("cpuinfo_max_freq"))))
    temps = []
    for z in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        raw = _try(f.errors, str(z), lambda z=z: int(z.read_text().strip()))
        if raw is not None:
            temps.append(raw / 1000.0)  # millidegrees
    f.max_cpu_celsius = max(temps) if temps else None
    for bat in Path("/sys/class/power_supply").glob("BAT*"):
        cap = bat / "capacity"
        if cap.exists():
            f.battery_percent = _try(f.errors, str(cap), lambda cap=cap: float(cap.read_text().strip()))
    return f


def collect_facts(t: Transport) -> DeviceFacts:
    """Device facts for whatever the transport reaches."""
    return host_facts() if isinstance(t, LocalTransport) else android_facts(t)


# A fixed script (no interpolated input): "cpu NAME CUR CAP MAX" per cpufreq policy, then
# "tz TEMP TYPE" per thermal zone ("-" for a value that cannot be read). CAP (scaling_max_freq) is
# what thermal mitigation lowers.
_THERMAL_SCRIPT = (
    _VALUE_FN + "for d in /sys/devices/system/cpu/cpufreq/policy*; do [ -d \"$d\" ] || continue; "
    'echo "cpu ${d##*/} $(v $d/scaling_cur_freq) $(v $d/scaling_max_freq) $(v $d/cpuinfo_max_freq)"; done; '
    "for z in /sys/class/thermal/thermal_zone*; do [ -d \"$z\" ] || continue; "
    'echo "tz $(v $z/temp) $(v $z/type)"; done'
)


@dataclass
class ThermalSnapshot:
    """Temperatures and CPU frequency caps at one moment (before or after a run)."""

    max_celsius: float | None  # hottest CPU zone (any zone when none is named cpu)
    status: str | None  # Android thermal status (NONE, LIGHT, MODERATE, ...); None on a host
    status_level: int | None = None  # the same as a number, 0 (none) .. 6 (shutdown)
    cooling_engaged: bool | None = None  # a CPU cooling device is capping (thermal service)
    cur_khz: dict[str, int] = field(default_factory=dict)  # per cpufreq policy
    cap_khz: dict[str, int] = field(default_factory=dict)  # scaling_max_freq
    max_khz: dict[str, int] = field(default_factory=dict)  # cpuinfo_max_freq

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_thermal_lines(text: str) -> ThermalSnapshot:
    """Parse the output of _THERMAL_SCRIPT; unreadable values are skipped."""
    snap = ThermalSnapshot(max_celsius=None, status=None)
    cpu_temps, all_temps = [], []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "cpu":  # by position: "-" is a value not read
            for i, store in ((2, snap.cur_khz), (3, snap.cap_khz), (4, snap.max_khz)):
                if len(parts) > i and parts[i].isdigit():
                    store[parts[1]] = int(parts[i])
        elif len(parts) >= 2 and parts[0] == "tz" and parts[1].lstrip("-").isdigit():
            raw = int(parts[1])
            celsius = raw / 1000.0 if abs(raw) >= 1000 else float(raw)  # most zones report m°C
            if -40.0 < celsius < 150.0:  # disabled zones report 0 or garbage
                all_temps.append(celsius)
                if "cpu" in " ".join(parts[2:]).lower():
                    cpu_temps.append(celsius)
    temps = cpu_temps or all_temps
    snap.max_celsius = max(temps) if temps else None
    return snap


def thermal_snapshot(t: Transport) -> ThermalSnapshot:
    """Read temperatures and frequency caps (and, on a phone, the thermal service's status)."""
    snap = parse_thermal_lines(t.shell(["sh", "-c", _THERMAL_SCRIPT], timeout_s=30.0).stdout)
    if not isinstance(t, LocalTransport):
        try:
            dump = parse_thermalservice(t.shell(["dumpsys", "thermalservice"], timeout_s=30.0).check().stdout)
            snap.status, snap.status_level = dump.status_name, dump.status
            snap.cooling_engaged = dump.throttling
            cpu = dump.max_celsius("CPU")
            if cpu is not None:  # the hotter of the thermal service's and sysfs's readings
                snap.max_celsius = cpu if snap.max_celsius is None else max(cpu, snap.max_celsius)
        except (TransportError, ValueError):
            pass  # no dumpsys (old or locked-down device): sysfs alone
    return snap
