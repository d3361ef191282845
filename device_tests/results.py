"""What a bench produces: one BenchResult holding a DeviceReport per device, each with its RunRecords.

Plain data, shared by the bench (bench.py fills it), the reports (report.py writes it: schema
bench_result.schema.json) and the AI Hub folding (aihub.py); nothing here imports either side.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BundleInfo:
    label: str  # 'meki' or 'dense' (from the manifest's memory field), else the folder name
    name: str
    memory: str
    fingerprint: str
    path: str
    bytes: int


@dataclass
class RunRecord:
    label: str
    rep: int  # index among this bundle's runs (warm-ups count from 0 too)
    warmup: bool
    ok: bool = False
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    t_start_s: float = 0.0  # since the device's bench began
    wall_s: float = 0.0  # launch to exit, as the host saw it
    stats: dict[str, Any] | None = None  # the runner's JSON, less per-token arrays
    stats_file: str | None = None  # the pulled JSON, relative to the output folder
    memory: dict[str, Any] | None = None
    thermal_before: dict[str, Any] | None = None
    thermal_after: dict[str, Any] | None = None
    throttled: bool = False
    throttle_reasons: list[str] = field(default_factory=list)


@dataclass
class DeviceReport:
    device: str
    transport: str | None = None
    runner: str | None = None
    status: str = "ok"  # ok | partial (some runs failed) | failed (none measured)
    facts: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # filled by report.summarize
    ratios: dict[str, Any] = field(default_factory=dict)
    paired: dict[str, Any] = field(default_factory=dict)  # speed metric -> spread of each pair's MeKi/dense


@dataclass
class BenchResult:
    config: dict[str, Any]
    bundles: list[BundleInfo]
    devices: list[DeviceReport]
    created_utc: str
    outputs: dict[str, Any] = field(default_factory=dict)
    format: str = "meki-bench-result"
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
