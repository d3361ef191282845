"""Benchmark: MeKi vs dense decode speed and memory on a Qwen3-0.6B-shaped random model (CPU).

    python benchmarks/bench_decode.py --workdir /tmp/bench06 [--quant 8da4w] [--reps 3]

1. Builds (once, kept in --workdir/bundles for the same settings) a random folded MeKi model, its
   int8 memory pack, and two executorch-xnnpack bundles: MeKi and its dense baseline (the same
   backbone without the branch).
2. backbone (issue 4): prefill of 128 tokens (after one untimed prefill) and 64 decode steps
   through the ExecuTorch runtime, MeKi and dense interleaved; rows come precomputed, so this is
   the graph alone.
3. runtime (issue 5): the full Python loop (pack lookup prefetched, exposed wait recorded) in a
   fresh process per run, interleaved; plus the native runner when it has been built.
Prints tok/s, MeKi/dense ratios, exposed lookup share of a decode step, and peak RSS difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_cache import reuse_or_build  # noqa: E402
from mobile_runtime.backends import open_runner  # noqa: E402
from contract.manifest import load_manifest  # noqa: E402
from mobile_runtime.pack import MemoryPack  # noqa: E402
from pipeline.config import preset  # noqa: E402
from pipeline.export.bundle import dense_baseline, write_bundle  # noqa: E402
from pipeline.export.registry import ExportSettings  # noqa: E402
from pipeline.model import MekiModel, init_weights  # noqa: E402
from pipeline.pack_writer import PackWriter  # noqa: E402

FINGERPRINT = "0123456789abcdef" * 2
NATIVE = Path(__file__).resolve().parents[1] / "build" / "native" / "meki_runner"


def build(work: Path, quant: str, prefill: int, max_seq: int) -> tuple[Path, dict[str, float]]:
    """Random folded 0.6B model + int8 pack -> meki/ and dense/ bundles under work/bundles (kept from an
    earlier run with the same settings); returns that folder and the export seconds."""

    def write(out: Path) -> None:
        cfg = preset("qwen3-0.6b").replace(folded=True, max_seq_len=max_seq)
        model = init_weights(MekiModel(cfg), seed=0).eval()
        gen = np.random.default_rng(0)
        pack = out / "tables.mekipack"
        with PackWriter(pack, vocab_size=cfg.vocab_size, num_layers=cfg.num_layers, d_mem=cfg.d_mem,
                        dtype="int8", fingerprint=FINGERPRINT, overwrite=True) as w:
            for start in range(0, cfg.vocab_size, 8192):
                n = min(8192, cfg.vocab_size - start)
                w.write(start, gen.standard_normal((n, cfg.num_layers, cfg.d_mem), dtype=np.float32))
        settings = ExportSettings(quant=quant, max_seq_len=max_seq, prefill_len=prefill)
        times = {}
        for kind, m, p in (("meki", model, pack), ("dense", dense_baseline(model), None)):
            t0 = time.perf_counter()
            write_bundle(m, out / kind, ["executorch-xnnpack"], settings, FINGERPRINT, None, p, True, "random")
            times[kind] = round(time.perf_counter() - t0, 1)
            print(f"export {kind}: {times[kind]} s", flush=True)
        pack.unlink()
        (out / "export_times.json").write_text(json.dumps(times))

    out = reuse_or_build(work / "bundles", {"quant": quant, "prefill_len": prefill, "max_seq_len": max_seq}, write)
    return out, json.loads((out / "export_times.json").read_text())


def time_backbone(bundle: Path, prompt_len: int, steps: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of the graph alone; MeKi rows looked up before timing."""
    m = load_manifest(bundle)
    runner = open_runner(bundle, m.backbone("executorch-xnnpack"))
    vocab = m.config["vocab_size"]
    tokens = (np.arange(prompt_len + steps, dtype=np.int64) * 7919 % vocab)[None]
    rows = None
    if m.memory_pack is not None:
        with MemoryPack.open(bundle / m.memory_pack.file) as pack:
            rows = pack.lookup(tokens[0])[None]
    sl = (lambda a, b: rows[:, a:b]) if rows is not None else (lambda a, b: None)  # noqa: E731
    # one untimed prefill first: the first execute after loading pays one-off set-up costs
    runner.step("prefill", tokens[:, :prompt_len], np.arange(prompt_len), sl(0, prompt_len))
    t0 = time.perf_counter()
    runner.step("prefill", tokens[:, :prompt_len], np.arange(prompt_len), sl(0, prompt_len))
    prefill = prompt_len / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(prompt_len, prompt_len + steps):
        runner.step("decode", tokens[:, i:i + 1], np.array([i]), sl(i, i + 1))
    return prefill, steps / (time.perf_counter() - t0)


def run_loop(cmd: list[str], stats: Path) -> dict:
    subprocess.run(cmd + ["--stats", str(stats)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(stats.read_text())


def loop_cmd(runner: str, bundle: Path, prompt: str, steps: int) -> list[str]:
    args = [str(bundle), "--prompt-ids", prompt, "--max-new-tokens", str(steps + 1), "--ignore-eos", "--quiet"]
    if runner == "native":  # checks sizes, never sha256
        return [str(NATIVE), *args]
    return [sys.executable, "-m", "mobile_runtime.run", *args, "--skip-hash-check"]


def summarise(label: str, meki: list[float], dense: list[float]) -> None:
    mm, dm = statistics.median(meki), statistics.median(dense)
    print(f"{label:28s} MeKi {mm:8.2f}  dense {dm:8.2f}  ratio {mm / dm:.3f}   (runs: {len(meki)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/decode06"))
    ap.add_argument("--quant", default="8da4w")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--phase", choices=["all", "backbone", "runtime"], default="all")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    bundles, times = build(a.workdir, a.quant, a.prompt_len, a.prompt_len + a.steps + 8)
    print(f"export times (s): {times}   threads: {torch.get_num_threads()}")
    if a.phase in ("all", "backbone"):
        res = {"meki": [], "dense": []}
        for _ in range(a.reps):
            for kind in ("meki", "dense"):  # interleaved, so drift hits both alike
                res[kind].append(time_backbone(bundles / kind, a.prompt_len, a.steps))
        summarise("backbone prefill tok/s", [r[0] for r in res["meki"]], [r[0] for r in res["dense"]])
        summarise("backbone decode tok/s", [r[1] for r in res["meki"]], [r[1] for r in res["dense"]])
    if a.phase in ("all", "runtime"):
        prompt = ",".join(str(i * 7919 % 151_680) for i in range(a.prompt_len))
        for runner in ("python", "native") if NATIVE.exists() else ("python",):
            out = {"meki": [], "dense": []}
            for rep in range(a.reps):
                for kind in ("meki", "dense"):
                    out[kind].append(run_loop(loop_cmd(runner, bundles / kind, prompt, a.steps),
                                              a.workdir / f"stats_{runner}_{kind}_{rep}.json"))
            summarise(f"{runner} loop decode tok/s", [s["decode_tok_s"] for s in out["meki"]],
                      [s["decode_tok_s"] for s in out["dense"]])
            exposed = [s["exposed_lookup_total_s"] / max(1, len(s["exposed_lookup_s"])) for s in out["meki"]]
            step = [s["decode_step_median_s"] for s in out["meki"]]
            print(f"{runner} exposed lookup per step: {statistics.median(exposed) * 1e6:.0f} us = "
                  f"{statistics.median(exposed) / statistics.median(step):.3%} of a decode step")
            peak = {k: statistics.median(s["rss_peak_bytes"] for s in v) / 2**20 for k, v in out.items()}
            anon = {k: statistics.median(s["rss_anon_bytes"] for s in v) / 2**20 for k, v in out.items()}
            print(f"{runner} peak RSS MiB: MeKi {peak['meki']:.1f}  dense {peak['dense']:.1f}  "
                  f"diff {peak['meki'] - peak['dense']:+.1f}   (anon diff {anon['meki'] - anon['dense']:+.1f})")


if __name__ == "__main__":
    main()
