"""`meki bench BUNDLE_DIR --device local|SERIAL ...`: argparse wiring for device_tests.bench.

meki/cli.py adds the verb with:  add_bench_args(sub.add_parser("bench")) ... run_bench_cli(args)
Also runnable alone: python -m device_tests.cli BUNDLE_DIR [...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from device_tests.bench import BenchConfig, run_bench
from device_tests.runners import RUNNER_KINDS
from contract.atomic import atomic_dir, output_lock
from contract.inputs import require_dir, nonneg_int, positive_float, positive_int
from contract.manifest import BundleError


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="`meki export` output (meki/ + dense/) or one bundle folder")
    p.add_argument("--device", action="append", dest="devices", metavar="local|SERIAL|adb:SERIAL",
                   help="repeatable; default $ANDROID_SERIAL, else local. SERIAL uses adb-shell "
                        "(host:port for TCP), adb:SERIAL the adb binary")
    p.add_argument("--runner", choices=RUNNER_KINDS, default="auto",
                   help="auto = native when build/native/meki_runner exists, else python")
    p.add_argument("--reps", type=positive_int, default=5, help="measured runs per bundle (alternating)")
    p.add_argument("--warmup", type=nonneg_int, default=1, help="warm-up runs per bundle")
    p.add_argument("--tokens", type=positive_int, default=32, help="new tokens per run")
    p.add_argument("--prompt-len", type=positive_int, default=16, help="prompt token ids per run")
    p.add_argument("--out", type=Path, help="output folder (default bench-UTCTIME); must not hold a bench")
    p.add_argument("--force", action="store_true", help="overwrite a bench already in --out")
    p.add_argument("--keep-pushed", action="store_true", help="leave bundles+runner on the device")
    p.add_argument("--native-runner", type=Path, help="meki_runner built for the device")
    p.add_argument("--app-package", default="ai.meki.app")
    p.add_argument("--backend", help="backbone to run: executorch, litert or a target name such as tflite-qnn "
                                     "(the app picks the model compiled for the phone's SoC); default: the runner's")
    p.add_argument("--remote-dir", help="working dir on the device (default /data/local/tmp/meki-bench)")
    p.add_argument("--sample-interval", type=positive_float, default=0.2, help="memory sampling period, s")
    p.add_argument("--timeout", type=positive_float, default=600.0, help="per-run limit, s")
    p.add_argument("--max-celsius", type=float, default=50.0, help="flag runs hotter than this")


def config_from_args(a: argparse.Namespace) -> BenchConfig:
    devices = a.devices or [os.environ.get("ANDROID_SERIAL") or "local"]
    return BenchConfig(
        devices=devices, runner=a.runner, prompt_len=a.prompt_len, new_tokens=a.tokens,
        warmup=a.warmup, reps=a.reps, keep_pushed=a.keep_pushed, sample_interval_s=a.sample_interval,
        run_timeout_s=a.timeout, max_celsius=a.max_celsius, remote_dir=a.remote_dir,
        native_path=str(a.native_runner) if a.native_runner else None, app_package=a.app_package,
        runner_args=["--backend", a.backend] if a.backend else [])


def _bench_into(bundle: Path, cfg: BenchConfig, out: Path):
    """A new folder appears whole (temp sibling, renamed at the end); an existing one (--force, or a
    folder without a bench) is written in place. Either way it is locked: a second bench to it fails."""
    if out.exists():
        with output_lock(out):
            return run_bench(bundle, cfg, out)
    with atomic_dir(out) as tmp:
        return run_bench(bundle, cfg, tmp)


def run_bench_cli(a: argparse.Namespace) -> int:
    """0 when every device measured every run, 1 when some failed, 2 on a usage/bundle error."""
    out = a.out or Path(time.strftime("bench-%Y%m%d-%H%M%S", time.gmtime()))
    if (out / "bench.json").exists() and not a.force:
        print(f"meki bench: error: {out} already holds a bench (bench.json); pass --force or another --out", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(a)
        if not (Path(a.bundle) / "manifest.json").exists():  # an export folder: meki/ + dense/
            require_dir(a.bundle, "bundle or export folder")
        result = _bench_into(a.bundle, cfg, out)
    except (BundleError, ValueError) as exc:
        print(f"meki bench: error: {exc}", file=sys.stderr)
        return 2
    print((out / "bench.md").read_text())
    for rep in result.devices:
        print(f"{rep.device}: {rep.status}" + (f" ({'; '.join(rep.errors)[:300]})" if rep.errors else ""),
              file=sys.stderr)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}"
          + "".join(f", {out / p}" for p in result.outputs.get("plots", [])), file=sys.stderr)
    return 0 if all(r.status == "ok" for r in result.devices) else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meki bench", description="Benchmark MeKi against dense on devices.")
    add_bench_args(p)
    return run_bench_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
