"""Parsers for every Android (and Linux /proc) text the harness reads; typed results."""
from device_tests.parsers.dumpsys import (
    BatteryState,
    CoolingDevice,
    DumpsysMeminfo,
    MeminfoSummary,
    Temperature,
    ThermalDump,
    parse_battery,
    parse_dumpsys_meminfo,
    parse_thermalservice,
)
from device_tests.parsers.proc import (
    ProcMeminfo,
    ProcStatus,
    SmapsRollup,
    parse_cpufreq_khz,
    parse_getprop,
    parse_governor,
    parse_proc_meminfo,
    parse_proc_status,
    parse_smaps_rollup,
)

__all__ = [
    "BatteryState", "CoolingDevice", "DumpsysMeminfo", "MeminfoSummary", "Temperature",
    "ThermalDump", "parse_battery", "parse_dumpsys_meminfo", "parse_thermalservice",
    "ProcMeminfo", "ProcStatus", "SmapsRollup", "parse_cpufreq_khz", "parse_getprop",
    "parse_governor", "parse_proc_meminfo", "parse_proc_status", "parse_smaps_rollup",
]
