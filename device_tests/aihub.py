"""Qualcomm AI Hub profile jobs for the exported LiteRT backbone, in the bench's result format.

Two halves, kept apart:
- offline (runs anywhere, tested): `fold_profiles` turns the dicts that `ProfileJob.download_profile()`
  returns (saved as JSON) into a DeviceReport, so `report.write_all` gives the same bench.json,
  Markdown and plots as a phone bench;
- network (needs `qai-hub`, an API token from `qai-hub configure`, and the internet):
  `submit_profiles` uploads each bundle's .tflite to hosted phones and saves the profiles.

    python -m device_tests.aihub submit OUT --device "Samsung Galaxy S24 (Family)" --save profiles/
    python -m device_tests.aihub fold profiles/ --out bench-aihub/
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from device_tests import report
from device_tests.bench import resolve_bundles
from device_tests.results import BenchResult, DeviceReport, RunRecord
from contract.manifest import load_manifest

PROFILE_SUFFIX = ".aihub-profile.json"


def inference_times_us(profile: dict[str, Any]) -> list[float]:
    """Every timed inference (µs): all_inference_times when the client gives it, else the estimate."""
    summary = profile.get("execution_summary") or {}
    times = [float(t) for t in summary.get("all_inference_times") or [] if t]
    if not times and summary.get("estimated_inference_time"):
        times = [float(summary["estimated_inference_time"])]
    if not times:
        raise ValueError("AI Hub profile has no inference time (execution_summary)")
    return times


def peak_memory_bytes(profile: dict[str, Any]) -> int | None:
    """The process's peak memory after inference (what VmHWM is on a phone run); the upper end
    of the inference peak range when the point value is missing (older profile versions)."""
    summary = profile.get("execution_summary") or {}
    peak = summary.get("estimated_inference_peak_memory")
    if isinstance(peak, (int, float)) and peak > 0:
        return int(peak)
    rng = summary.get("inference_memory_peak_range")
    if isinstance(rng, (list, tuple)) and len(rng) == 2 and rng[1]:
        return int(rng[1])
    return None


def compute_units(profile: dict[str, Any]) -> dict[str, int]:
    """Layers per compute unit (NPU/GPU/CPU): how much of the graph the NPU took."""
    out: dict[str, int] = {}
    for layer in profile.get("execution_detail") or []:
        unit = str(layer.get("compute_unit", "?"))
        out[unit] = out.get(unit, 0) + 1
    return out


def fold_profiles(device_name: str, profiles: dict[str, dict[str, Any]], *, tokens_per_call: int = 1,
                  step: str = "decode") -> DeviceReport:
    """One DeviceReport from label -> profile (e.g. {'meki': ..., 'dense': ...}).

    step 'decode': one inference is one token, so tok/s = 1e6 / µs. step 'prefill': one
    inference takes tokens_per_call tokens (the bundle's prefill_len) and its time is the TTFT.
    Each timed inference becomes one run; the peak memory lands where a phone run's VmHWM does.
    """
    rep = DeviceReport(device=f"aihub:{device_name}", transport="aihub", runner="aihub",
                       facts={"kind": "aihub", "model": device_name, "errors": []})
    for label, profile in profiles.items():
        peak, units = peak_memory_bytes(profile), compute_units(profile)
        rng = (profile.get("execution_summary") or {}).get("inference_memory_peak_range")
        for i, us in enumerate(inference_times_us(profile)):
            s = us / 1e6
            stats: dict[str, Any] = {"runner": "aihub", "bundle": label, "rss_peak_bytes": peak,
                                     "x_compute_units": units, "x_inference_us": us,
                                     "x_inference_memory_peak_range": rng}
            if step == "decode":
                stats["decode_tok_s"] = 1.0 / s
            else:
                stats.update(prefill_tok_s=tokens_per_call / s, ttft_s=s)
            rep.runs.append(RunRecord(label, i, warmup=False, ok=True, attempts=1, wall_s=s, stats=stats))
    rep.status = "ok" if rep.runs else "failed"
    return rep


def fold_dir(profile_dir: Path, out_dir: Path) -> BenchResult:
    """Fold every saved profile (DEVICE__LABEL__STEP__TOKENS.aihub-profile.json, written by
    submit_profiles with its own metadata inside) into one bench result in out_dir."""
    grouped: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for path in sorted(Path(profile_dir).glob(f"*{PROFILE_SUFFIX}")):
        saved = json.loads(path.read_text())
        key = (saved["device"], saved["step"], int(saved["tokens_per_call"]))
        grouped.setdefault(key, {})[saved["label"]] = saved["profile"]
    if not grouped:
        raise ValueError(f"{profile_dir}: no *{PROFILE_SUFFIX} files")
    devices = [fold_profiles(dev, profs, tokens_per_call=tok, step=step)
               for (dev, step, tok), profs in grouped.items()]
    cfg = {"devices": [d.device for d in devices], "runner": "aihub", "prompt_len": 1, "new_tokens": 1,
           "warmup": 0, "reps": max(len(d.runs) for d in devices)}
    result = BenchResult(cfg, [], devices, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    report.write_all(result, Path(out_dir))
    return result


# -- network: everything below needs qai-hub, a configured token and the internet -------------

def hub_models(bundles: Path | Sequence[Path], target: str = "tflite") -> dict[str, Path]:
    """label -> the backbone file of `target` in each bundle (named by its manifest, not its file name)."""
    out = {}
    for info, path in resolve_bundles(bundles):
        bb = load_manifest(path).backbone(target)  # BundleError lists the targets it has
        out[info.label] = path / bb.file
    return out


def submit_profiles(bundles: Path | Sequence[Path], device_name: str, save_dir: Path, *,
                    target: str = "tflite", iterations: int = 20) -> list[Path]:  # pragma: no cover
    """Upload each backbone, profile it on the named hosted device, save the profiles as JSON."""
    try:
        import qai_hub as hub  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("AI Hub needs qai-hub in its own venv: .venv-aihub/bin/pip install "
                          "qai-hub==0.56.0 (see device_tests/README.md)") from exc
    save_dir.mkdir(parents=True, exist_ok=True)
    jobs = {label: hub.submit_profile_job(model=str(path), device=hub.Device(device_name),
                                          name=f"meki-{label}",
                                          options=f"--max_profiler_iterations {iterations}")
            for label, path in hub_models(bundles, target).items()}
    written = []
    for label, job in jobs.items():
        profile = job.download_profile()  # blocks until the job ends; raises if it failed
        dest = save_dir / f"{_slug(device_name)}__{label}__decode__1{PROFILE_SUFFIX}"
        dest.write_text(json.dumps({"device": device_name, "label": label, "step": "decode",
                                    "tokens_per_call": 1, "job_id": job.job_id, "profile": profile},
                                   indent=2, default=list) + "\n")
        written.append(dest)
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_tests.aihub", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="profile each bundle's backbone on AI Hub (network)")
    s.add_argument("bundle", type=Path)
    s.add_argument("--device", required=True, help='AI Hub device name, e.g. "Samsung Galaxy S24 (Family)"')
    s.add_argument("--target", default="tflite", help="backbone target in the manifest")
    s.add_argument("--save", type=Path, required=True)
    f = sub.add_parser("fold", help="saved profiles -> bench.json/bench.md/plots (offline)")
    f.add_argument("profiles", type=Path)
    f.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.cmd == "submit":
        for path in submit_profiles(a.bundle, a.device, a.save, target=a.target):
            print(path)
        return 0
    result = fold_dir(a.profiles, a.out)
    print((a.out / "bench.md").read_text())
    return 0 if all(d.status == "ok" for d in result.devices) else 1


if __name__ == "__main__":
    sys.exit(main())
