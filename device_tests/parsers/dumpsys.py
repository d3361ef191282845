"""`dumpsys meminfo`, `dumpsys thermalservice` and `dumpsys battery` parsers."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# --- dumpsys meminfo ---------------------------------------------------------------------------

_MEMINFO_HEAD = re.compile(r"\*\* MEMINFO in pid (\d+) \[(.*)\] \*\*")
_ROW = re.compile(r"^\s*(\S.*?)\s+(-?\d+(?:\s+-?\d+)*)\s*$")
_SUMMARY_ROW = re.compile(r"^\s*([A-Za-z ]+):\s+(\d+)(?:\s+(\d+))?\s*$")
_TOTAL_PSS = re.compile(r"TOTAL(?: PSS)?:\s+(\d+)")
_TOTAL_RSS = re.compile(r"TOTAL RSS:\s+(\d+)")
_TOTAL_SWAP = re.compile(r"TOTAL SWAP(?: PSS| \(KB\)):\s+(\d+)")


@dataclass(frozen=True)
class MeminfoSummary:
    """The 'App Summary' block (kB); RSS columns exist from Android 11 on."""

    pss_kb: dict[str, int]  # 'Java Heap', 'Native Heap', 'Code', 'Stack', 'Graphics', ...
    rss_kb: dict[str, int]
    total_pss_kb: int | None
    total_rss_kb: int | None
    total_swap_pss_kb: int | None


@dataclass(frozen=True)
class DumpsysMeminfo:
    """One process's `dumpsys meminfo <pid|package>` (kB)."""

    pid: int | None
    process: str | None
    columns: tuple[str, ...]  # e.g. ('Pss Total', 'Private Dirty', ..., 'Rss Total', ...)
    rows: dict[str, dict[str, int]]  # 'Native Heap' -> {'Pss Total': 12523, ...}
    summary: MeminfoSummary | None  # None for the native-process form
    total_pss_kb: int | None
    total_rss_kb: int | None

    @property
    def is_app(self) -> bool:
        """Java apps have a Dalvik heap; native processes (our runner) do not."""
        return "Dalvik Heap" in self.rows


def _table_columns(lines: list[str], dash_idx: int) -> tuple[str, ...]:
    """Join the two stacked header lines above the dashes into column names."""
    top, bottom = lines[dash_idx - 2].split(), lines[dash_idx - 1].split()
    if len(top) != len(bottom):
        raise ValueError(f"meminfo header rows differ in width: {top} / {bottom}")
    return tuple(f"{a} {b}" for a, b in zip(top, bottom))


def _parse_table(lines: list[str]) -> tuple[tuple[str, ...], dict[str, dict[str, int]]]:
    dash_idx = next((i for i, ln in enumerate(lines) if ln.strip().startswith("------")), None)
    if dash_idx is None or dash_idx < 2:
        return (), {}
    columns = _table_columns(lines, dash_idx)
    rows: dict[str, dict[str, int]] = {}
    for line in lines[dash_idx + 1 :]:
        if not line.strip():
            break  # the table ends at the first blank line
        m = _ROW.match(line)
        if m:
            values = [int(v) for v in m.group(2).split()]
            rows[m.group(1)] = dict(zip(columns, values))
    return columns, rows


def _parse_summary(lines: list[str]) -> MeminfoSummary | None:
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "App Summary")
    except StopIteration:
        return None
    pss: dict[str, int] = {}
    rss: dict[str, int] = {}
    totals = ""
    rss_col = 10**6
    for line in lines[start + 1 :]:
        if "Rss(KB)" in line:
            rss_col = line.index("Rss(KB)")  # single values right of here are RSS-only
        if line.strip().startswith("TOTAL"):
            totals = line
            break
        m = _SUMMARY_ROW.match(line)
        if not m:
            continue
        name, first = m.group(1).strip(), int(m.group(2))
        if m.group(3) is not None:
            pss[name], rss[name] = first, int(m.group(3))
        elif m.start(2) >= rss_col - 6:
            rss[name] = first
        else:
            pss[name] = first
    grab = lambda rx: int(m.group(1)) if (m := rx.search(totals)) else None  # noqa: E731
    return MeminfoSummary(pss, rss, grab(_TOTAL_PSS), grab(_TOTAL_RSS), grab(_TOTAL_SWAP))


def parse_dumpsys_meminfo(text: str) -> DumpsysMeminfo:
    """Parse `dumpsys meminfo <pid|pkg>`: the app form (with App Summary) or a native process."""
    if "No process found for:" in text:
        raise ValueError(text.strip().splitlines()[-1])
    lines = text.replace("\r\n", "\n").split("\n")
    head = _MEMINFO_HEAD.search(text)
    start = next((i for i, ln in enumerate(lines) if _MEMINFO_HEAD.search(ln)), 0)
    columns, rows = _parse_table(lines[start:])
    if not rows:
        raise ValueError("no meminfo table found")
    summary = _parse_summary(lines[start:])
    total = rows.get("TOTAL", {})
    if total and len(total) != len(columns):  # every column has a TOTAL: fewer is output cut short
        raise ValueError(f"meminfo TOTAL row has {len(total)} values for {len(columns)} columns "
                         "(the output was cut short?)")
    total_pss = total.get("Pss Total", summary.total_pss_kb if summary else None)
    total_rss = total.get("Rss Total", summary.total_rss_kb if summary else None)
    return DumpsysMeminfo(
        pid=int(head.group(1)) if head else None, process=head.group(2) if head else None,
        columns=columns, rows=rows, summary=summary, total_pss_kb=total_pss, total_rss_kb=total_rss,
    )


# --- dumpsys thermalservice --------------------------------------------------------------------

TEMPERATURE_TYPES = {  # android.os.Temperature.TYPE_*
    -1: "UNKNOWN", 0: "CPU", 1: "GPU", 2: "BATTERY", 3: "SKIN", 4: "USB_PORT",
    5: "POWER_AMPLIFIER", 6: "BCL_VOLTAGE", 7: "BCL_CURRENT", 8: "BCL_PERCENTAGE", 9: "NPU",
    10: "TPU", 11: "DISPLAY", 12: "MODEM", 13: "SOC", 14: "WIFI", 15: "CAMERA", 16: "FLASHLIGHT",
    17: "SPEAKER", 18: "AMBIENT", 19: "POGO",
}
THROTTLING = {  # PowerManager.THERMAL_STATUS_*
    0: "NONE", 1: "LIGHT", 2: "MODERATE", 3: "SEVERE", 4: "CRITICAL", 5: "EMERGENCY", 6: "SHUTDOWN",
}
_TEMP = re.compile(
    r"Temperature\{mValue=(?P<v>-?[\d.]+|NaN), mType=(?P<t>-?\d+), mName=(?P<n>.*?), "
    r"mStatus=(?P<s>\d+)\}"
)
_COOL = re.compile(r"CoolingDevice\{mValue=(?P<v>-?\d+), mType=(?P<t>\d+), mName=(?P<n>.*?)\}")


@dataclass(frozen=True)
class Temperature:
    name: str
    type: int
    type_name: str
    celsius: float
    status: int  # throttling severity this sensor reports (0 = none)


@dataclass(frozen=True)
class CoolingDevice:
    name: str
    type: int
    value: int  # cooling state; > 0 means the device is limiting (e.g. a cpufreq cap)


@dataclass(frozen=True)
class ThermalDump:
    status: int | None  # overall 'Thermal Status' (0 none .. 6 shutdown)
    hal_ready: bool | None
    temperatures: list[Temperature]  # current values from the HAL (cached if none)
    cached: list[Temperature]
    cooling_devices: list[CoolingDevice] = field(default_factory=list)

    @property
    def status_name(self) -> str | None:
        return None if self.status is None else THROTTLING.get(self.status, str(self.status))

    @property
    def throttling(self) -> bool:
        """True when the system reports any throttling or a cooling device is engaged."""
        return bool(self.status) or any(c.value > 0 and c.type in (2, 3) for c in self.cooling_devices)

    def max_celsius(self, type_name: str) -> float | None:
        """The hottest sensor of the type; NaN (the HAL's 'not available') is no reading."""
        vals = [t.celsius for t in self.temperatures if t.type_name == type_name and math.isfinite(t.celsius)]
        return max(vals) if vals else None


def _temps(block: str) -> list[Temperature]:
    out = []
    for m in _TEMP.finditer(block):
        t = int(m.group("t"))
        out.append(Temperature(m.group("n"), t, TEMPERATURE_TYPES.get(t, str(t)),
                               float(m.group("v")), int(m.group("s"))))
    return out


def _section(text: str, title: str) -> str:
    """Lines after `title` up to the next unindented 'Xxx:' header."""
    idx = text.find(title)
    if idx < 0:
        return ""
    body = []
    for line in text[idx + len(title) :].split("\n")[1:]:
        if line and not line[0].isspace() and not line.startswith(("Temperature{", "CoolingDevice{")):
            break
        body.append(line)
    return "\n".join(body)


def parse_thermalservice(text: str) -> ThermalDump:
    """Parse `dumpsys thermalservice` (HIDL 1.0/2.0 and AIDL HALs)."""
    text = text.replace("\r\n", "\n")
    status = re.search(r"^\s*Thermal Status: (\d+)", text, re.M)
    ready = re.search(r"^\s*HAL Ready: (true|false)", text, re.M)
    current = _temps(_section(text, "Current temperatures from HAL:"))
    cached = _temps(_section(text, "Cached temperatures:"))
    cooling = [CoolingDevice(m.group("n"), int(m.group("t")), int(m.group("v")))
               for m in _COOL.finditer(_section(text, "Current cooling devices from HAL:"))]
    return ThermalDump(
        status=int(status.group(1)) if status else None,
        hal_ready=(ready.group(1) == "true") if ready else None,
        temperatures=current or cached, cached=cached, cooling_devices=cooling,
    )


# --- dumpsys battery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatteryState:
    level: int | None
    scale: int | None
    celsius: float | None  # dumpsys prints tenths of a degree
    voltage_mv: int | None
    status: int | None  # BatteryManager.BATTERY_STATUS_*: 2 charging, 3 discharging, 5 full
    health: int | None
    ac_powered: bool
    usb_powered: bool
    wireless_powered: bool
    technology: str | None
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def percent(self) -> float | None:
        if self.level is None:
            return None
        return 100.0 * self.level / (self.scale or 100)


def parse_battery(text: str) -> BatteryState:
    """Parse `dumpsys battery` ('Current Battery Service state:' then 'key: value' lines)."""
    fields: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("  ") and ":" in line:
            k, _, v = line.strip().partition(":")
            fields.setdefault(k.strip(), v.strip())
        elif fields and line.strip() and not line.startswith(" "):
            break  # Samsung and others append other sections after a blank line
    if not fields:
        raise ValueError("not dumpsys battery output")
    num = lambda k: int(fields[k]) if fields.get(k, "").lstrip("-").isdigit() else None  # noqa: E731
    temp = num("temperature")
    return BatteryState(
        level=num("level"), scale=num("scale"), celsius=None if temp is None else temp / 10.0,
        voltage_mv=num("voltage"), status=num("status"), health=num("health"),
        ac_powered=fields.get("AC powered") == "true", usb_powered=fields.get("USB powered") == "true",
        wireless_powered=fields.get("Wireless powered") == "true",
        technology=fields.get("technology"), fields=fields,
    )
