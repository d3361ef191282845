"""MeKi against dense on one or more devices: push, warm up, alternate, sample, report.

    result = run_bench(Path("out"), BenchConfig(devices=["local"]), Path("bench-out"))

`out` is what `meki export` wrote (out/meki and out/dense), or a list of bundle folders. Each
device runs in its own thread and gets one DeviceReport; a device that fails records why and
the others go on. Reports (JSON, Markdown, PNG) come from device_tests/report.py.
"""
from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from device_tests.errors import (
    CommandTimeout,
    DeviceDisconnected,
    DeviceFull,
    PermissionDenied,
    RunnerMissing,
    TransportError,
    retry,
)
from device_tests import report
from device_tests.facts import ThermalSnapshot, collect_facts, thermal_snapshot
from device_tests.memory_sampler import MemorySampler, MemorySeries
from device_tests.results import BenchResult, BundleInfo, DeviceReport, RunRecord
from device_tests.runners import Runner, make_runner
from device_tests.transports import open_transport
from device_tests.transports.base import Transport
from device_tests.transports.local import LocalTransport
from mobile_runtime.bundle_pack import verify_bundle_and_pack

# Errors after which every further run on the device would fail the same way.
FATAL = (DeviceDisconnected, DeviceFull, PermissionDenied, RunnerMissing)


@dataclass
class BenchConfig:
    devices: list[str] = field(default_factory=lambda: ["local"])  # 'local', SERIAL, 'adb:SERIAL'
    runner: str = "auto"  # auto | python | native | app (auto: native when its binary exists)
    prompt_len: int = 16  # prompt token ids (a fixed pseudo-random sequence)
    new_tokens: int = 32  # decoded tokens per run (--ignore-eos: always all of them)
    warmup: int = 1  # unrecorded-in-summary runs per bundle before measuring
    reps: int = 5  # measured runs per bundle, MeKi and dense alternating
    keep_pushed: bool = False  # leave bundles and runner on the device (next push skips them)
    sample_interval_s: float = 0.2  # memory sampling period
    run_timeout_s: float = 600.0  # one generation; past it the runner is stopped, the run fails
    attempts: int = 3  # tries for a run or a push that meets a disconnect
    max_celsius: float = 50.0  # a run ending hotter than this is flagged as throttled
    max_freq_drop: float = 0.10  # ... or with a CPU frequency cap this far under its maximum
    max_thermal_status: int = 1  # ... or an Android thermal status above this (1 = LIGHT)
    remote_dir: str | None = None  # working dir on the device ('{device}' is replaced); default per transport
    native_path: str | None = None  # host path of meki_runner (default build/native/meki_runner)
    device_python: str | None = None  # interpreter on the device for --runner python (tests)
    app_package: str = "ai.meki.app"
    runner_args: list[str] = field(default_factory=list)  # extra runner flags (e.g. --backend)

    def __post_init__(self) -> None:
        if self.reps < 1 or self.warmup < 0 or self.prompt_len < 1 or self.new_tokens < 1:
            raise ValueError("reps, prompt_len and new_tokens must be >= 1 and warmup >= 0")
        self.devices = list(dict.fromkeys(self.devices))  # one thread per distinct device


def resolve_bundles(bundles: Path | Sequence[Path]) -> list[tuple[BundleInfo, Path]]:
    """An export folder (meki/ + dense/), one bundle folder, or a list; each verified."""
    if isinstance(bundles, (str, Path)):
        root = Path(bundles)
        pair = [root / "meki", root / "dense"]
        paths = pair if all((p / "manifest.json").is_file() for p in pair) else [root]
    else:
        paths = [Path(p) for p in bundles]
    out, seen = [], set()
    for p in paths:
        m = verify_bundle_and_pack(p)  # BundleError/PackError name the problem; nothing is pushed before this
        label = "dense" if m.memory == "none" else "meki"
        label = label if label not in seen else p.name
        seen.add(label)
        out.append((BundleInfo(label, m.name, m.memory, m.fingerprint, str(p.resolve()),
                               sum(f.bytes for f in m.files)), p))
    return out


def prompt_ids(n: int, seed: int = 1234) -> list[int]:
    """A fixed prompt of n token ids in [1, 100) (every preset's vocab is larger)."""
    ids, x = [], seed
    for _ in range(n):
        x = (1103515245 * x + 12345) % (1 << 31)
        ids.append(1 + x % 99)
    return ids


def run_bench(bundles: Path | Sequence[Path], cfg: BenchConfig, out_dir: Path, *,
              open_device: Callable[[str], Transport] = open_transport) -> BenchResult:
    """Bench every device in parallel; write JSON, Markdown and plots into out_dir.

    open_device maps a device id to its transport (e.g. adb-shell with custom keys)."""
    resolved = resolve_bundles(bundles)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, len(cfg.devices))) as pool:
        reports = list(pool.map(lambda d: bench_device(d, resolved, cfg, out_dir, open_device),
                                cfg.devices))
    result = BenchResult(dataclasses.asdict(cfg), [b for b, _ in resolved], reports,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    report.write_all(result, out_dir)
    return result


def bench_device(device: str, bundles: list[tuple[BundleInfo, Path]], cfg: BenchConfig,
                 out_dir: Path, open_device: Callable[[str], Transport] = open_transport) -> DeviceReport:
    """All runs on one device; never raises for a device problem (it lands in .errors)."""
    rep = DeviceReport(device)
    raw = out_dir / "raw" / _safe(device)
    raw.mkdir(parents=True, exist_ok=True)
    t: Transport | None = None
    try:
        t = open_device(device)
        rep.transport = t.name
        rep.facts = retry(lambda: collect_facts(t), attempts=cfg.attempts).to_json()
        runner = make_runner(cfg.runner, t, native_path=Path(cfg.native_path) if cfg.native_path else None,
                             device_python=cfg.device_python, app_package=cfg.app_package,
                             extra_args=tuple(cfg.runner_args))
        rep.runner = runner.kind
        workdir = workdir_for(cfg, device, t)
        remote = retry(lambda: stage(t, runner, bundles, workdir), attempts=cfg.attempts)
        try:
            _run_all(t, runner, remote, cfg, f"{workdir}/runs", raw, out_dir, rep)
        finally:
            cleanup(t, workdir, cfg.keep_pushed, rep)
    except Exception as exc:  # noqa: BLE001 - any failure is this device's, reported, not raised
        rep.errors.append(_describe(exc))
    finally:
        if t is not None:
            t.close()
    measured = [r for r in rep.runs if not r.warmup]
    ok = sum(r.ok for r in measured)
    rep.status = "ok" if measured and ok == len(measured) and not rep.errors else (
        "partial" if ok else "failed")
    return rep


def stage(t: Transport, runner: Runner, bundles: list[tuple[BundleInfo, Path]],
          workdir: str) -> dict[str, str]:
    """Push each bundle (manifest last, so a half-pushed bundle never looks complete) and the
    runner into workdir; return label -> device path of the bundle."""
    t.makedirs(f"{workdir}/runs")
    _check_space(t, bundles, workdir)
    runner.stage(t, workdir)
    placed = {}
    for info, path in bundles:
        dest = f"{workdir}/bundles/{info.label}"
        names = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*"))
                 if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".")]
        for rel in [*names, "manifest.json"]:
            t.push(path / rel, f"{dest}/{rel}")
        placed[info.label] = dest
    return placed


def _check_space(t: Transport, bundles: list[tuple[BundleInfo, Path]], workdir: str) -> None:
    need = sum(info.bytes for info, _ in bundles)
    free = t.free_bytes(workdir)
    if free < need:  # files kept from an earlier bench need no new space
        for info, path in bundles:
            for f in (p for p in path.rglob("*") if p.is_file()):
                rel = f.relative_to(path).as_posix()
                if t.exists(f"{workdir}/bundles/{info.label}/{rel}"):
                    need -= f.stat().st_size
    if free < need:
        raise DeviceFull(f"{workdir}: bundles need {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free")


def _run_all(t: Transport, runner: Runner, remote: dict[str, str], cfg: BenchConfig,
             run_dir: str, raw: Path, out_dir: Path, rep: DeviceReport) -> None:
    labels = list(remote)
    plan = [(lb, i, True) for i in range(cfg.warmup) for lb in labels]
    plan += [(lb, i, False) for i in range(cfg.reps) for lb in labels]  # M D M D ...
    ids, t0 = prompt_ids(cfg.prompt_len), time.monotonic()
    for label, i, warm in plan:
        rec = RunRecord(label, i, warm, t_start_s=time.monotonic() - t0)
        rep.runs.append(rec)
        name = f"{label}-{'warmup' if warm else 'rep'}{i}"
        try:
            retry(lambda: one_run(t, runner, remote[label], ids, cfg, run_dir, name, raw, out_dir, rec),
                  attempts=cfg.attempts)
        except FATAL as exc:
            rec.error, rec.error_type = _describe(exc), type(exc).__name__
            rep.errors.append(f"stopped after {label} {name}: {rec.error}")
            return
        except Exception as exc:  # noqa: BLE001 - one bad run is recorded; the next one goes on
            rec.error, rec.error_type = _describe(exc), type(exc).__name__


def one_run(t: Transport, runner: Runner, bundle: str, ids: list[int], cfg: BenchConfig,
            run_dir: str, name: str, raw: Path, out_dir: Path, rec: RunRecord) -> None:
    """Launch, sample memory until the runner exits (or its deadline), collect its stats."""
    rec.attempts += 1
    before = _thermal(t)
    rec.thermal_before = before.to_json() if before else None
    launch = runner.launch(t, bundle, ids, cfg.new_tokens, run_dir, name)
    sampler = MemorySampler(t, launch.pid, interval_s=cfg.sample_interval_s,
                            package=runner.package) if launch.pid is not None else None
    if sampler is not None:
        sampler.start()
    try:
        _wait(t, runner, launch, cfg)
    finally:
        series = sampler.stop() if sampler is not None else None
    rec.wall_s = time.monotonic() - launch.started
    rec.memory = _memory_json(series) if series is not None else None
    local = raw / f"{name}.json"
    stats = runner.collect(t, launch, local)
    rec.stats = {k: v for k, v in stats.items() if not isinstance(v, list)}
    rec.stats_file = local.relative_to(out_dir).as_posix()
    after = _thermal(t)
    rec.thermal_after = after.to_json() if after else None
    rec.throttle_reasons = throttle_reasons(before, after, cfg)
    rec.throttled, rec.ok, rec.error, rec.error_type = bool(rec.throttle_reasons), True, None, None


def _wait(t: Transport, runner: Runner, launch: Any, cfg: BenchConfig) -> None:
    # A blip of the link while the runner works is survivable: nohup keeps it running.
    deadline = launch.started + cfg.run_timeout_s
    while not retry(lambda: runner.done(t, launch), attempts=cfg.attempts, backoff_s=0.5):
        if time.monotonic() > deadline:
            runner.stop(t, launch)
            raise CommandTimeout(f"runner still going after {cfg.run_timeout_s:g} s; stopped it")
        time.sleep(0.05 if isinstance(t, LocalTransport) else 0.25)  # a device poll costs a shell


def throttle_reasons(before: ThermalSnapshot | None, after: ThermalSnapshot | None,
                     cfg: BenchConfig) -> list[str]:
    """Why a run's numbers cannot be trusted as unthrottled; empty when they can."""
    reasons: list[str] = []
    for when, snap in (("before", before), ("after", after)):
        if snap is None:
            continue
        if snap.max_celsius is not None and snap.max_celsius >= cfg.max_celsius:
            reasons.append(f"CPU {snap.max_celsius:.1f} °C {when} (limit {cfg.max_celsius:g})")
        if snap.status_level is not None and snap.status_level > cfg.max_thermal_status:
            reasons.append(f"thermal status {snap.status} {when}")
        for pol, cap in snap.cap_khz.items():
            top = snap.max_khz.get(pol)
            if top and cap < top * (1 - cfg.max_freq_drop):
                reasons.append(f"{pol} capped at {cap / top:.0%} of {top // 1000} MHz {when}")
    if before is not None and after is not None:
        for pol, cap in after.cap_khz.items():
            was = before.cap_khz.get(pol)
            if was and cap < was * (1 - cfg.max_freq_drop):
                reasons.append(f"{pol} cap fell {was // 1000} -> {cap // 1000} MHz during the run")
    return list(dict.fromkeys(reasons))


def cleanup(t: Transport, workdir: str, keep_pushed: bool, rep: DeviceReport) -> None:
    """Remove the working dir (or only its run outputs when asked to keep the pushed files)."""
    try:
        t.remove(f"{workdir}/runs" if keep_pushed else workdir, recursive=True)
    except TransportError as exc:
        rep.errors.append(f"cleanup of {workdir}: {_describe(exc)}")


def _thermal(t: Transport) -> ThermalSnapshot | None:
    try:
        return thermal_snapshot(t)
    except CommandTimeout:
        return None


def _memory_json(series: MemorySeries) -> dict[str, Any]:
    return {
        "peak_vm_rss_kb": series.peak("vm_rss_kb"), "peak_vm_hwm_kb": series.peak("vm_hwm_kb"),
        "peak_rss_anon_kb": series.peak("rss_anon_kb"), "peak_rss_file_kb": series.peak("rss_file_kb"),
        "peak_pss_kb": series.peak("pss_kb"), "peak_app_pss_kb": series.peak("app_total_pss_kb"),
        "interval_s": series.interval_s,
        "samples": [[round(s.t_s, 3), s.vm_rss_kb, s.rss_anon_kb, s.rss_file_kb, s.pss_kb]
                    for s in series.samples],  # [t_s, VmRSS, RssAnon, RssFile, Pss] in kB
        "errors": series.errors[:10],
    }


def workdir_for(cfg: BenchConfig, device: str, t: Transport) -> str:
    """The device's working dir: cfg.remote_dir with {device} filled in, else a per-transport default."""
    if cfg.remote_dir:
        return cfg.remote_dir.replace("{device}", _safe(device))
    if isinstance(t, LocalTransport):
        return str(Path(tempfile.gettempdir()) / "meki-bench")
    return "/data/local/tmp/meki-bench"


def _safe(device: str) -> str:
    """A device id as a folder name ('192.168.1.5:5555' -> '192.168.1.5_5555')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", device) or "device"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:600]
