"""`meki demo`: the main job end to end on the embedded demo models, into one output folder.

models/demo/meki (a small trained MeKi model) and models/demo/dense (its dense twin) are folded,
packed (int8), lowered to executorch-xnnpack, verified against eager PyTorch, then run on this
machine through the device harness's local transport, the same path a phone run takes, and
compared side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from pipeline.export.verify import verify_bundle_artifacts
from contract.atomic import check_free

if TYPE_CHECKING:
    from device_tests.results import BenchResult, DeviceReport

console = Console()
DEMO_MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
PROMPT = "The function returns"


def _stage(title: str) -> None:
    console.rule(f"[bold]{title}")


def run_demo(out: Path, prompt: str = PROMPT, new_tokens: int = 48, reps: int = 3, overwrite: bool = False) -> int:
    """fold -> pack -> export (MeKi + dense) -> verify -> bench both locally -> side-by-side table."""
    from device_tests.bench import BenchConfig, run_bench

    meki, dense = DEMO_MODELS / "meki", DEMO_MODELS / "dense"
    if not (meki / "checkpoint.json").exists():
        raise FileNotFoundError(f"{meki}: the embedded demo model is missing (run from a clone of the repository)")
    check_free(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _stage("1/3 fold, pack (int8) and lower MeKi and dense to executorch-xnnpack")
    settings = ExportSettings(quant="none", max_seq_len=256, prefill_len=32)
    export_bundles(meki, out / "bundles", ["executorch-xnnpack"], settings, pack_dtype="int8",
                   tokenizer=meki / "tokenizer.json", baseline=dense, overwrite=True)
    _stage("2/3 verify every artifact against eager PyTorch")
    rows = [r for kind, ck in (("meki", meki), ("dense", dense))
            for r in verify_bundle_artifacts(out / "bundles" / kind, ck, steps=32)]
    for r in rows:
        console.print(f"  {r.bundle:6s} {r.target}: {r.status}, max |diff| {r.max_abs_diff:.1e}, "
                      f"same greedy tokens for 32 steps: {r.greedy_match}")
    _stage("3/3 run both on this machine through the device harness (local transport)")
    cfg = BenchConfig(devices=["local"], runner="python", new_tokens=new_tokens, warmup=1, reps=reps)
    result = run_bench([out / "bundles" / "meki", out / "bundles" / "dense"], cfg, out / "bench")
    _print_side_by_side(result)
    for kind in ("meki", "dense"):
        console.print(f"[bold]{kind}[/bold] on {prompt!r}: {_generate(out / 'bundles' / kind, prompt, new_tokens)!r}")
    console.print(f"everything is under {out}/ (bundles/, bench/bench.md, bench/bench.json, bench/*.png)")
    return 0 if all(r.status == "pass" for r in rows) and all(d.status == "ok" for d in result.devices) else 1


def _print_side_by_side(result: "BenchResult") -> None:
    from device_tests.report import METRICS

    for rep in result.devices:
        table = Table(title=f"MeKi vs dense on {rep.device} (median of {_measured_runs(rep)} measured runs each)")
        for col in ("metric", "MeKi", "dense", "MeKi/dense"):
            table.add_column(col, justify="right")
        for metric, (label, unit, _) in METRICS.items():
            meki, dense = rep.summary.get("meki", {}).get(metric), rep.summary.get("dense", {}).get(metric)
            ratio = rep.ratios.get(metric)
            table.add_row(f"{label} ({unit})", _median(meki), _median(dense), "-" if ratio is None else f"{ratio:.3f}")
        console.print(table)


def _measured_runs(rep: "DeviceReport") -> int:
    return rep.summary.get("meki", {}).get("runs", 0)


def _median(spread: dict | None) -> str:
    return "-" if not spread else f"{spread['median']:.1f}"


def _generate(bundle: Path, prompt: str, new_tokens: int) -> str:
    """Greedy text from the bundle with the Python loop (the harness runs use fixed token ids)."""
    from mobile_runtime.generate import Generator
    from mobile_runtime.sampling import SamplingConfig

    gen = Generator(bundle)
    stop = tuple(gen.manifest.tokenizer.eos_token_ids)
    stats = gen.generate(gen.encode(prompt), SamplingConfig(max_new_tokens=new_tokens, stop_ids=stop))
    return prompt + stats.text
