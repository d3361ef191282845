"""Benchmark: Qwen3-0.6B-shaped MeKi vs dense compiled for a Qualcomm HTP (tflite-qnn), and simulator parity.

    python benchmarks/bench_npu.py --workdir /tmp/bench_npu [--layers 28] [--soc SM8750] [--max-seq-len 256]
        [--quant none|w8a16|w4a16] [--kinds meki,dense]

For each of MeKi (folded: the rows are an input) and its dense baseline, a random model of the
qwen3-0.6b preset (optionally with fewer layers: --layers) is converted (npu_graph, in .venv-litert)
and AOT-compiled by LiteRT's Qualcomm plugin. Prints: conversion and compile time, peak RSS of the
converter and of the compiler (child processes), context binary sizes and the MeKi/dense ratio
(goal <= 1.03), op coverage and partitions per signature (goal: 100%, 1), and each output's worst
SNR on the HTP simulator against eager PyTorch over a held-out window (random tokens and rows).
With --quant w8a16|w4a16 the float graph is calibrated and quantised as `meki export` does. Each
stage's wall time and peak RSS (this process and its children: pipeline.profile) go to the JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import preset  # noqa: E402
from pipeline.export.qnn_backend import _coverage, compile_for_soc, compiled_facts, quantize, simulator_snr  # noqa: E402
from pipeline.export.qnn_quant import QNN_QUANTS, CalibConfig, step_feeds  # noqa: E402
from pipeline.export.registry import ExportSettings  # noqa: E402
from pipeline.export.litert import convert  # noqa: E402
from pipeline.model import MekiModel, init_weights  # noqa: E402
from pipeline.profile import StageProfiler, stage  # noqa: E402


def child_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


def random_rows(layers: int, d_mem: int) -> Callable[[np.ndarray], np.ndarray]:
    """A random pack's rows, each token's made from its id when asked (the whole table would be 2.2 GB at 0.6B)."""
    return lambda t: np.stack([np.random.default_rng(int(i)).standard_normal((layers, d_mem), np.float32)
                               for i in t.reshape(-1)])[None]


def stage_peaks(prof: StageProfiler) -> dict[str, dict[str, float]]:
    """Wall time and peak RSS (this process and its children) of each stage so far."""
    return {s["name"]: {"wall_s": s["wall_s"], "peak_mib": s["peak_mib"]} for s in prof.to_json()["stages"]}


def build(kind: str, layers: int | None) -> MekiModel:
    cfg = preset("qwen3-0.6b")
    cfg = cfg.replace(num_layers=layers or cfg.num_layers, name=f"qwen3-0.6b-{kind}")
    cfg = cfg.replace(memory="none") if kind == "dense" else cfg.replace(folded=True)
    return init_weights(MekiModel(cfg), seed=0).eval()  # random: sizes, coverage and parity need no training


def run_one(kind: str, args: argparse.Namespace, record: Callable[[dict], None]) -> None:
    """Compile one bundle; `record` gets its figures once compiled, and the simulator's are added to that dict."""
    model = build(kind, args.layers)
    settings = ExportSettings(max_seq_len=args.max_seq_len, prefill_len=args.prefill_len)
    work = args.workdir / kind
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "npu_graph.tflite", work / f"model_litert_qnn_{args.soc.lower()}.tflite"
    cfg = model.cfg
    rng = np.random.default_rng(0)
    lookup = random_rows(cfg.num_layers, cfg.d_mem) if cfg.has_meki else (lambda t: None)
    tokens = rng.integers(0, cfg.vocab_size, 4096)  # random weights: random text is as real as any
    with StageProfiler(0.5) as prof:  # peaks of this process and its children, per stage
        t0 = time.perf_counter()
        with stage("convert"):
            convert(model, src, settings, graph="npu")
        convert_s, convert_rss = time.perf_counter() - t0, child_peak_rss_mib()
        quantise_s = 0.0
        if args.quant != "none":
            t0, float_src, src = time.perf_counter(), src, work / f"npu_graph_{args.quant}.tflite"
            with stage("calibration feeds"):
                feeds = step_feeds(model, settings.max_seq_len, settings.prefill_len, tokens[2048:], lookup,
                                   CalibConfig())[0]
            with stage("quantise"):
                quantize(float_src, src, args.quant, feeds, work)
            del feeds
            quantise_s = time.perf_counter() - t0
        with stage("compile"):
            report = compile_for_soc(src, out, args.soc)
        compile_rss = child_peak_rss_mib()  # the max over every child so far: >= the converter's
        facts = compiled_facts(out)
        ctx = sorted({(d["offset"], d["bytes"]) for f in facts.values() for d in f["dispatch_ops"]})
        result = {"kind": kind, "layers": cfg.num_layers, "quant": args.quant, "convert_s": round(convert_s, 1),
                  "quantise_s": round(quantise_s, 1), "compile_s": report["compile_s"],
                  "converter_peak_rss_mib": round(convert_rss), "children_peak_rss_mib": round(compile_rss),
                  "context_binaries": len(ctx), "context_binary_bytes": sum(b for _, b in ctx),
                  "tflite_bytes": out.stat().st_size, "coverage": _coverage({}, report, facts, args.soc),
                  "qairt": report["qairt"], "stages": stage_peaks(prof)}
        record(result)  # written now: the compile's figures stand even if the simulator then fails
        t1 = time.perf_counter()
        try:
            with stage("simulator"):
                held_out = step_feeds(model, settings.max_seq_len, settings.prefill_len, tokens, lookup,
                                      CalibConfig(windows=1, prefill_chunks=1, decode_steps=2))
                result["snr_db"] = simulator_snr(out, held_out)
        except Exception as exc:  # noqa: BLE001 - reported as the benchmark's finding, not swallowed
            result["simulator_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        result |= {"simulator_s": round(time.perf_counter() - t1, 1), "stages": stage_peaks(prof),
                   "self_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--layers", type=int, help="fewer layers than the preset's 28 (machine limits)")
    ap.add_argument("--soc", default="SM8750")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--prefill-len", type=int, default=32)
    ap.add_argument("--quant", choices=QNN_QUANTS, default="none", help="none = fp16 on the HTP")
    ap.add_argument("--kinds", default="meki,dense")
    args = ap.parse_args()
    results: list[dict] = []
    out = args.workdir / "bench_npu.json"

    def write(extra: dict | None = None) -> None:
        out.write_text(json.dumps({"results": results} | (extra or {}), indent=1))

    def compiled(result: dict) -> None:
        results.append(result)
        write()

    for kind in args.kinds.split(","):
        run_one(kind, args, compiled)
        write()  # with the simulator's figures
    for r in results:
        cov = r["coverage"]
        sim = (f"simulator SNR min {min(r['snr_db'].values())} dB (logits {r['snr_db']['logits']} dB)"
               if "snr_db" in r else f"simulator FAILED: {r['simulator_error']}")
        print(f"{r['kind']:5s} layers {r['layers']} {r['quant']}: convert {r['convert_s']} s, quantise "
              f"{r['quantise_s']} s, compile {r['compile_s']} s, children peak RSS {r['children_peak_rss_mib']} MiB, "
              f"{r['context_binaries']} context binary {r['context_binary_bytes'] / 2**20:.1f} MiB, "
              f"NPU ops prefill {cov['prefill.npu_ops']}/{cov['prefill.total_ops']} ({cov['prefill.partitions']} "
              f"partition), decode {cov['decode.npu_ops']}/{cov['decode.total_ops']} ({cov['decode.partitions']}), "
              f"{sim}, {r['simulator_s']} s")
    if len(results) == 2:
        ratio = results[0]["context_binary_bytes"] / results[1]["context_binary_bytes"]
        print(f"context binary {results[0]['kind']}/{results[1]['kind']}: {ratio:.4f} (goal <= 1.03); "
              f"QAIRT {results[0]['qairt']}")
        write({"meki_over_dense": ratio})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
