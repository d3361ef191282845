"""Kernel and property text: /proc/PID/status, /proc/PID/smaps_rollup, /proc/meminfo, getprop,
cpufreq. The same on Android and Linux hosts, so LocalTransport uses them too."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_KV_KB = re.compile(r"^\s*([A-Za-z_()0-9]+):\s+(\d+)(?:\s+kB)?\s*$")


def _kb_fields(text: str) -> dict[str, int]:
    """'Key:   123 kB' lines -> {'Key': 123}; other lines are ignored."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _KV_KB.match(line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


@dataclass(frozen=True)
class ProcStatus:
    """Memory lines of /proc/PID/status, in kB (None where the kernel has no such line)."""

    name: str | None
    state: str | None
    vm_rss_kb: int | None
    vm_hwm_kb: int | None  # peak RSS since start (or since the last clear_refs reset)
    rss_anon_kb: int | None
    rss_file_kb: int | None
    rss_shmem_kb: int | None
    vm_swap_kb: int | None
    vm_size_kb: int | None
    threads: int | None


_STATUS_KB = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSwap", "VmSize")


def parse_proc_status(text: str) -> ProcStatus:
    """Parse /proc/PID/status (tab-separated 'Key:<TAB>value kB' lines). Not a status file, or one cut
    inside a memory line (its kB missing), is a ValueError: a sample must not read 81 for 81xxx kB."""
    kb = _kb_fields(text)
    if "Name" not in text or not any(k in kb for k in _STATUS_KB):
        raise ValueError(f"not a /proc/PID/status text (no Name and memory lines): {text[:120]!r}")
    cut = [ln.split(":")[0].strip() for ln in text.splitlines()
           if ln.split(":")[0].strip() in _STATUS_KB and not ln.rstrip().endswith("kB")]
    if cut:
        raise ValueError(f"/proc/PID/status line {cut[0]} has no kB unit (the output was cut short?)")
    strings = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in text.splitlines()) if v
    )
    return ProcStatus(
        name=strings.get("Name"), state=strings.get("State"),
        vm_rss_kb=kb.get("VmRSS"), vm_hwm_kb=kb.get("VmHWM"), rss_anon_kb=kb.get("RssAnon"),
        rss_file_kb=kb.get("RssFile"), rss_shmem_kb=kb.get("RssShmem"),
        vm_swap_kb=kb.get("VmSwap"), vm_size_kb=kb.get("VmSize"), threads=kb.get("Threads"),
    )


@dataclass(frozen=True)
class SmapsRollup:
    """/proc/PID/smaps_rollup totals in kB; `fields` keeps every line the kernel printed."""

    rss_kb: int
    pss_kb: int
    pss_anon_kb: int | None  # Linux 5.3+
    pss_file_kb: int | None
    pss_shmem_kb: int | None
    swap_kb: int | None
    swap_pss_kb: int | None
    fields: dict[str, int] = field(default_factory=dict)


def parse_smaps_rollup(text: str) -> SmapsRollup:
    """Parse smaps_rollup; the first '[rollup]' address line is skipped."""
    kb = _kb_fields(text)
    if "Rss" not in kb or "Pss" not in kb:
        raise ValueError("not smaps_rollup output: no Rss/Pss lines")
    return SmapsRollup(
        rss_kb=kb["Rss"], pss_kb=kb["Pss"], pss_anon_kb=kb.get("Pss_Anon"),
        pss_file_kb=kb.get("Pss_File"), pss_shmem_kb=kb.get("Pss_Shmem"),
        swap_kb=kb.get("Swap"), swap_pss_kb=kb.get("SwapPss"), fields=kb,
    )


@dataclass(frozen=True)
class ProcMeminfo:
    """/proc/meminfo in kB."""

    mem_total_kb: int
    mem_free_kb: int | None
    mem_available_kb: int | None  # Linux 3.14+
    swap_total_kb: int | None
    swap_free_kb: int | None
    fields: dict[str, int] = field(default_factory=dict)


def parse_proc_meminfo(text: str) -> ProcMeminfo:
    """Parse /proc/meminfo (leading indentation, as in crash reports, is tolerated)."""
    kb = _kb_fields(text)
    if "MemTotal" not in kb:
        raise ValueError("not /proc/meminfo output: no MemTotal")
    return ProcMeminfo(
        mem_total_kb=kb["MemTotal"], mem_free_kb=kb.get("MemFree"),
        mem_available_kb=kb.get("MemAvailable"), swap_total_kb=kb.get("SwapTotal"),
        swap_free_kb=kb.get("SwapFree"), fields=kb,
    )


_PROP_START = re.compile(r"^\[([^\]]+)\]: \[(.*)$")


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output -> {key: value}. Values may span lines (e.g. boot reason history)."""
    props: dict[str, str] = {}
    key: str | None = None
    buf: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip("\r")  # \r\n, or \r\r\n from a pty shell's output saved on Windows
        m = _PROP_START.match(line)
        if key is None and m is None:
            continue
        if key is None and m is not None:
            key, buf = m.group(1), [m.group(2)]
        else:
            buf.append(line)
        joined = "\n".join(buf)
        if joined.endswith("]"):
            props[key] = joined[:-1]  # type: ignore[index]
            key, buf = None, []
    return props


def parse_cpufreq_khz(text: str) -> int:
    """scaling_cur_freq / cpuinfo_max_freq: one integer in kHz."""
    word = text.strip().split()[0] if text.strip() else ""
    if not word.isdigit():
        raise ValueError(f"not a cpufreq value in kHz: {text.strip()[:80]!r}")
    return int(word)


def parse_governor(text: str) -> str:
    """scaling_governor: one word such as 'schedutil'."""
    return text.strip().split()[0] if text.strip() else ""
