"""MeKi overhead without noise (issue 16): our dense and MeKi bundles vs ExecuTorch's own LLM export.

For each quantisation, three programs of the same shape run the same fixed prompt (PROMPT_LEN tokens)
and NEW_TOKENS greedy tokens through `step_bench` (mobile_runtime/native):
  ours-dense, ours-meki   the bundles' model_xnnpack.pte (prefill/decode methods; MeKi rows as input)
  et-llm                  ExecuTorch's export_llama of a random-weight Qwen3 with the same config
                          (its custom SDPA and KV-cache ops, XNNPACK; `forward` with input_pos [1])
and are measured two ways:
  instructions  inside Method::execute under callgrind, per phase (prefill; decode per step), one
                thread, after a warm-up generation (the first prefill after loading, which also pays
                XNNPACK's set-up, reported apart; see overhead_lib.py): repeatable whatever else the
                machine does;
  wall clock    interleaved rounds (--rounds, median), the runners' decode thread rule (decode on the
                calling thread for small models: mobile_runtime/threads.py; the raw programs' decode loaded
                the same way, `step_bench --decode-threads calling`); plus both runners on our
                two bundles: the native runner (meki_runner, fresh process per run, the pair's order
                alternating; and runner_ab: its loop over both bundles in one process, steps alternating
                as below) and the Python loop (mobile_runtime.generate, one warm Generator per
                bundle, memory pack and prefetch; the two bundles' decode steps alternate one by one where
                the programs are larger than the last-level cache, else whole runs alternate:
                overhead_lib.python_loop_round). "paired": the median of each round's MeKi/dense
                ratio (and ours/ExecuTorch's for the raw programs, whose order alternates between
                rounds), the figure to read on a shared machine (whole runs drift +-15% here).
The ideal MeKi/dense ratio comes from the config and the quantisation (bytes read per decode step,
FLOPs per prefill token; MeKi adds 2*d*d_mem weights per layer and one row per token);
efficiency = measured ratio / ideal ratio (1.0: MeKi costs exactly its bytes/FLOPs).

    python benchmarks/bench_overhead.py                      # demo shape, fp32 and 8da4w
    nice python benchmarks/bench_overhead.py --shape qwen3-0.6b --quants 8da4w   # heavy: ~1 h here
    nice python benchmarks/bench_overhead.py --shape qwen3-0.6b --layers 2 --quants 8da4w  # same widths, 2 layers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from build_cache import files_stamp, reuse_or_build  # noqa: E402
from overhead_lib import (WARMUP, Program, add_step_args, callgrind_phases, decode_ops, export_et_llm,  # noqa: E402
                          generate_fixed, host, host_line, ideal_costs, larger_than_cache, parse_step_args,
                          prompt_ids, python_loop_round, quant_list, wall_clock)

PACK_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


def build_native() -> Path:
    env = os.environ | {"PYTHON": sys.executable}
    out = subprocess.run([str(REPO / "mobile_runtime" / "native" / "build.sh")], check=True, capture_output=True,
                         text=True, env=env)
    return Path(out.stdout.strip().splitlines()[-1])


def source_checkpoints(shape: str, work: Path, layers: int | None = None) -> tuple[Path, Path | None]:
    """demo: the repo's trained pair; qwen3-0.6b: a random MeKi model (its dense twin is derived),
    with `layers` layers instead of the preset's where given (same widths, vocabulary and head)."""
    if shape == "demo":
        if layers:
            raise ValueError("--layers applies to the qwen3-0.6b shape (the demo pair is trained)")
        return REPO / "models" / "demo" / "meki", REPO / "models" / "demo" / "dense"

    def build(tmp: Path) -> None:
        from pipeline.checkpoint import save_checkpoint
        from pipeline.config import preset
        from pipeline.model import MekiModel, init_weights

        cfg = preset("qwen3-0.6b")
        if layers:
            cfg = cfg.replace(num_layers=layers, name=f"qwen3-0.6b-{layers}L")
        save_checkpoint(init_weights(MekiModel(cfg)), tmp, overwrite=True)

    return reuse_or_build(work / "ck-qwen3-0.6b", {"preset": "qwen3-0.6b", "layers": layers, "seed": 0}, build), None


def export_ours(src: Path, baseline: Path | None, out: Path, quant: str, a: argparse.Namespace) -> None:
    """Our dense and MeKi bundles in out/dense, out/meki (kept from an earlier run with the same inputs)."""
    from pipeline.export.bundle import export_bundles
    from pipeline.export.registry import ExportSettings

    settings = ExportSettings(quant=quant, max_seq_len=a.max_seq_len, prefill_len=a.prefill_len)
    key = {"quant": quant, "max_seq_len": a.max_seq_len, "prefill_len": a.prefill_len,
           "source": files_stamp(src, baseline)}
    reuse_or_build(out, key, lambda tmp: export_bundles(src, tmp, ["executorch-xnnpack"], settings,
                                                        baseline=baseline, overwrite=True))


def export_et(cfg: dict, out: Path, quant: str, a: argparse.Namespace) -> Path:
    """ExecuTorch's own export of the shape (kept from an earlier run with the same inputs)."""
    key = {"quant": quant, "max_seq_len": a.max_seq_len, "prefill_len": a.prefill_len, "config": cfg}
    reuse_or_build(out, key, lambda tmp: export_et_llm(cfg, tmp, quant, a.max_seq_len, a.prefill_len))
    return out / f"et_{quant}.pte"


def programs(work: Path, cfg: dict, quant: str) -> list[Program]:
    ours = work / f"ours-{quant}"
    rows = ["--rows", f"{cfg['num_layers']},{cfg['d_mem']}"]
    return [Program("ours-dense", ours / "dense" / "model_xnnpack.pte", []),
            Program("ours-meki", ours / "meki" / "model_xnnpack.pte", rows),
            Program("et-llm", work / f"et-{quant}" / f"et_{quant}.pte", ["--prefill", "forward", "--decode", "forward",
                                                                "--start-pos"])]


def native_runner(tool_dir: Path, bundle: Path, a: argparse.Namespace) -> dict:
    prompt = ",".join(map(str, prompt_ids(a.prompt_len)))
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([str(tool_dir / "meki_runner"), str(bundle), "--prompt-ids", prompt, "--max-new-tokens",
                        str(a.new_tokens), "--ignore-eos", "--warmup", str(WARMUP), "--quiet", "--stats", f.name],
                       check=True, capture_output=True)
        s = json.loads(Path(f.name).read_text())
    return {"prefill_tok_s": s["prefill_tok_s"], "decode_tok_s": s["decode_tok_s"]}


def runner_ab(tool_dir: Path, ours: Path, a: argparse.Namespace, per_step: bool) -> dict[str, list[dict]]:
    """The native runner's loop over both bundles in one process, decode steps alternating (whole runs for
    cache-sized programs): mobile_runtime/native/runner_ab.cpp, a.rounds rounds."""
    cmd = [str(tool_dir / "runner_ab"), str(ours / "dense"), str(ours / "meki"), "--prompt-ids",
           ",".join(map(str, prompt_ids(a.prompt_len))), "--max-new-tokens", str(a.new_tokens), "--rounds", str(a.rounds)]
    out = subprocess.run(cmd + ([] if per_step else ["--whole-runs"]), check=True, capture_output=True, text=True).stdout
    rounds = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {f"runner-ab-{kind}": [{"prefill_tok_s": a.prompt_len / r[side]["prefill_s"],
                                   "decode_tok_s": r[side]["decode_steps"] / r[side]["decode_s"]} for r in rounds]
            for kind, side in (("dense", "a"), ("meki", "b"))}


def measure_quant(tool_dir: Path, work: Path, cfg: dict, quant: str, pack_dtype: str, a: argparse.Namespace) -> dict:
    progs = programs(work, cfg, quant)
    res: dict = {"programs": {}}
    for p in progs:
        res["programs"][p.name] = callgrind_phases(tool_dir / "step_bench", p, a.prompt_len, a.new_tokens) \
            if not a.no_callgrind else {}
    from mobile_runtime.generate import Generator
    from mobile_runtime.threads import decode_on_calling_thread

    gens = {kind: Generator(work / f"ours-{quant}" / kind, check_hashes=False) for kind in ("dense", "meki")}
    for g in gens.values():  # first-call costs out of the timed rounds
        generate_fixed(g, a)
    per_step = larger_than_cache(*(g.bundle / g.backbone.file for g in gens.values()))
    res["python_loop_interleaved"] = "steps" if per_step else "runs"
    # the runners' decode thread rule (auto), applied to the raw programs too, so that all rows compare alike
    calling = decode_on_calling_thread("auto", cfg)
    res["decode_threads"] = "calling" if calling else "pool"
    raw_extra = ["--decode-threads", res["decode_threads"]]
    runs: dict[str, list[dict]] = {p.name: [] for p in progs} | {f"{r}-{k}": [] for r in ("runner", "python")
                                                                   for k in ("dense", "meki")}
    for i in range(a.rounds):  # interleaved: every program once per round; the pairs in both orders
        order = ["dense", "meki"] if i % 2 == 0 else ["meki", "dense"]
        for p in progs if i % 2 == 0 else progs[::-1]:
            runs[p.name].append(wall_clock(tool_dir / "step_bench", p, a.prompt_len, a.new_tokens, raw_extra))
        for kind in order:
            runs[f"runner-{kind}"].append(native_runner(tool_dir, work / f"ours-{quant}" / kind, a))
        for kind, r in python_loop_round(gens, a, order, per_step).items():
            runs[f"python-{kind}"].append(r)
    runs |= runner_ab(tool_dir, work / f"ours-{quant}", a, per_step)
    res["wall"] = {k: {m: statistics.median(r[m] for r in v) for m in ("prefill_tok_s", "decode_tok_s")}
                   for k, v in runs.items()}
    res["rounds"] = runs
    res["paired"] = {f"{r.replace('-', '_')}_decode_meki_dense": paired_ratio(runs[f"{r}-meki"], runs[f"{r}-dense"])
                     for r in ("runner", "runner-ab", "python")} | {
        "wall_decode_meki_dense": paired_ratio(runs["ours-meki"], runs["ours-dense"]),
        "wall_decode_ours_vs_et": paired_ratio(runs["ours-dense"], runs["et-llm"])}
    ideal = {k: ideal_costs(cfg, quant, PACK_BYTES[pack_dtype], a.prompt_len, a.new_tokens, k == "meki")
             for k in ("dense", "meki")}
    res["ideal"] = {"decode_ratio": ideal["dense"]["decode_bytes"] / ideal["meki"]["decode_bytes"],
                    "prefill_ratio": ideal["dense"]["prefill_flops_per_token"] / ideal["meki"]["prefill_flops_per_token"],
                    "detail": ideal}
    res["ratios"] = ratios(res)
    res["meki_adds"] = meki_adds(work / f"ours-{quant}", res)
    return res


def meki_adds(ours: Path, res: dict) -> dict:
    """Where MeKi's decode cost goes: the ops it adds per decode step (counted in the two .pte files) and
    what the step costs more, by the raw programs' wall clock (medians) and by instructions."""
    ops = {kind: decode_ops(ours / kind / "model_xnnpack.pte") for kind in ("dense", "meki")}
    added = {k: ops["meki"].get(k, 0) - ops["dense"].get(k, 0) for k in sorted(set(ops["meki"]) | set(ops["dense"]))}
    added = {k: v for k, v in added.items() if v}
    n = sum(added.values())
    w = res["wall"]
    extra_s = 1 / w["ours-meki"]["decode_tok_s"] - 1 / w["ours-dense"]["decode_tok_s"]
    out = {"ops": added, "ops_total": n, "xnnpack_nodes_dense": sum(v for k, v in ops["dense"].items() if k.startswith("xnn:")),
           "wall_extra_us_per_step": extra_s * 1e6, "wall_extra_ns_per_added_op": extra_s * 1e9 / n if n else None}
    p = res["programs"]
    if p.get("ours-dense"):
        out["instr_extra_per_step"] = p["ours-meki"]["decode_instr_per_step"] - p["ours-dense"]["decode_instr_per_step"]
    return out


def paired_ratio(top: list[dict], bottom: list[dict]) -> dict:
    """top/bottom decode tok/s of each round's pair (MeKi/dense, ours/ExecuTorch's); the median and the
    middle half's range."""
    from device_tests.report import spread  # the device harness's paired ratios: one definition of the middle half

    s = spread([t["decode_tok_s"] / b["decode_tok_s"] for t, b in zip(top, bottom)])
    return {"median": s["median"], "q1": s["q1"], "q3": s["q3"], "rounds": s["n"]}


def ratios(res: dict) -> dict:
    """MeKi/dense speed ratios (dense cost / MeKi cost) and ours vs ExecuTorch's export (ET cost / ours)."""
    p, w, ideal = res["programs"], res["wall"], res["ideal"]
    out = {"wall_decode_meki_dense": w["ours-meki"]["decode_tok_s"] / w["ours-dense"]["decode_tok_s"],
           "wall_prefill_meki_dense": w["ours-meki"]["prefill_tok_s"] / w["ours-dense"]["prefill_tok_s"],
           "runner_decode_meki_dense": w["runner-meki"]["decode_tok_s"] / w["runner-dense"]["decode_tok_s"],
           "python_decode_meki_dense": w["python-meki"]["decode_tok_s"] / w["python-dense"]["decode_tok_s"],
           "wall_decode_ours_vs_et": w["ours-dense"]["decode_tok_s"] / w["et-llm"]["decode_tok_s"]}
    if p.get("ours-dense"):
        d, m, et = p["ours-dense"], p["ours-meki"], p["et-llm"]
        out |= {"instr_decode_meki_dense": d["decode_instr"] / m["decode_instr"],
                "instr_prefill_meki_dense": d["prefill_instr"] / m["prefill_instr"],
                "instr_decode_et_over_ours": et["decode_instr"] / d["decode_instr"],
                "instr_prefill_et_over_ours": et["prefill_instr"] / d["prefill_instr"],
                "instr_first_prefill_et_over_ours": et["first_prefill_instr"] / d["first_prefill_instr"],
                "instr_first_prefill_meki_dense": d["first_prefill_instr"] / m["first_prefill_instr"]}
        out["decode_efficiency"] = out["instr_decode_meki_dense"] / ideal["decode_ratio"]
        out["prefill_efficiency"] = out["instr_prefill_meki_dense"] / ideal["prefill_ratio"]
    return out


def print_table(shape: str, results: dict, a: argparse.Namespace) -> None:
    print(f"\n{shape}: prompt {a.prompt_len} + {a.new_tokens} new tokens, max_seq_len {a.max_seq_len}")
    print(f"{'quant':6} {'program':11} {'prefill Minstr':>14} {'decode Minstr/step':>18} {'prefill tok/s':>13} "
          f"{'decode tok/s':>12}")
    for quant, r in results.items():
        for name, wall in r["wall"].items():
            cg = r["programs"].get(name) or {}
            pre = f"{cg['prefill_instr'] / 1e6:14.2f}" if cg else f"{'-':>14}"
            dec = f"{cg['decode_instr_per_step'] / 1e6:18.3f}" if cg else f"{'-':>18}"
            print(f"{quant:6} {name:11} {pre} {dec} {wall['prefill_tok_s']:13.1f} {wall['decode_tok_s']:12.1f}")
    limits = {"instr_decode_et_over_ours": ">= 1.0", "instr_prefill_et_over_ours": ">= 1.0",
              "instr_first_prefill_et_over_ours": "(the cold call after loading: pays XNNPACK's set-up)",
              "wall_decode_ours_vs_et": ">= 1.0", "wall_decode_meki_dense": ">= 0.95 (demo), 0.98 (0.6B)",
              "runner_decode_meki_dense": ">= 0.95 (demo), 0.98 (0.6B)",
              "python_decode_meki_dense": ">= 0.95 (demo), 0.98 (0.6B)",
              "runner_ab_decode_meki_dense": ">= 0.95 (demo), 0.98 (0.6B)",
              "decode_efficiency": ">= 0.995 (0.6B)", "prefill_efficiency": ">= 0.99 (0.6B)"}
    for quant, r in results.items():
        print(f"\n{quant}: ideal MeKi/dense decode {r['ideal']['decode_ratio']:.4f}, "
              f"prefill {r['ideal']['prefill_ratio']:.4f}; wall-clock decode on the "
              f"{'calling thread' if r['decode_threads'] == 'calling' else 'threadpool'} (mobile_runtime/threads.py)")
        for k, v in r["ratios"].items():
            print(f"  {k:36} {v:8.4f}   limit {limits.get(k, '')}")
        for k, v in r.get("paired", {}).items():  # the decode ratio of each round's pair, then its median
            print(f"  {k + ', paired':36} {v['median']:8.4f}   middle half {v['q1']:.4f}-{v['q3']:.4f} of "
                  f"{v['rounds']} rounds; limit {limits[k]}")
        m = r["meki_adds"]
        instr = f", {m['instr_extra_per_step'] / 1e3:.1f} k instructions" if "instr_extra_per_step" in m else ""
        print(f"  where MeKi's decode cost goes: {m['ops_total']} ops more per step than dense's "
              f"{m['xnnpack_nodes_dense']} XNNPACK nodes ({', '.join(f'{v} {k}' for k, v in m['ops'].items())}); "
              f"the step takes {m['wall_extra_us_per_step']:.1f} us more (raw programs, medians{instr}): "
              f"{m['wall_extra_ns_per_added_op'] or 0:.0f} ns per added op")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("demo", "qwen3-0.6b"), default="demo")
    ap.add_argument("--layers", type=int, help="qwen3-0.6b with fewer layers (same widths): a shorter export")
    ap.add_argument("--quants", default="none,8da4w")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_overhead")
    add_step_args(ap)
    ap.add_argument("--json", type=Path, default=None, help="default: WORK/SHAPE/results.json")
    a = parse_step_args(ap, argv)
    quants = quant_list(ap, a.quants)
    if a.layers is not None and (a.shape != "qwen3-0.6b" or a.layers < 1):
        ap.error("--layers takes a positive layer count, with --shape qwen3-0.6b (the demo pair is trained)")
    tool_dir = build_native()
    work = a.work / (f"{a.shape}-{a.layers}L" if a.layers else a.shape)
    src, baseline = source_checkpoints(a.shape, work, a.layers)
    cfg = json.loads(((baseline or src) / "config.json").read_text())
    cfg["d_mem"] = json.loads((src / "config.json").read_text())["d_mem"]
    results = {}
    for quant in quants:
        export_ours(src, baseline, work / f"ours-{quant}", quant, a)
        export_et(cfg, work / f"et-{quant}", quant, a)
        pack = json.loads((work / f"ours-{quant}" / "meki" / "manifest.json").read_text())["memory_pack"]["dtype"]
        results[quant] = measure_quant(tool_dir, work, cfg, quant, pack, a)
    print_table(work.name, results, a)
    machine = host()
    print(host_line(machine))
    out = a.json or work / "results.json"
    out.write_text(json.dumps({"host": machine, "shape": a.shape, "layers": cfg["num_layers"], "config": cfg,
                               "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "max_seq_len": a.max_seq_len,
                               "results": results}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
