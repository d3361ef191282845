"""What the MeKi pack-row lookup costs a decode step (issue 16, item 4).

Four runs of the same prompt and NEW_TOKENS greedy tokens over bench_overhead.py's bundles:
  dense        the dense twin (no pack)
  meki         MeKi, `--lookup prefetch` (the default): a row not in the pack's cache is read by the
               worker thread from the moment its token is sampled, a cached one on the decode thread
  meki-thread  MeKi, `--lookup thread`: every row read by the worker (the hand-off each step)
  meki-sync    MeKi, `--lookup sync`: every row read on the decode thread just before the step
measured three ways:
  instructions  native runner (meki_runner --single-thread) under callgrind, per thread: the decode
                loop (Generator::decode_n, the backbone calls included) and the prefetch worker
                (Prefetcher::loop) counted separately; repeatable whatever else the machine does;
  native wall   meki_runner, interleaved rounds (--rounds, median), default threads;
  python wall   mobile_runtime.generate.Generator in this process, interleaved rounds.
The lookup costs a step nothing measurable when the exposed lookup (the time the loop waited for
the rows) is <= 1% of a step and meki decodes at least as fast as meki-sync and meki-thread.

    python benchmarks/bench_prefetch.py                 # demo bundles from bench_overhead.py (8da4w)
    python benchmarks/bench_prefetch.py --quant none --rounds 20
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_overhead import build_native, export_ours, source_checkpoints  # noqa: E402
from overhead_lib import add_step_args, generate_fixed, host, parse_step_args, prompt_ids  # noqa: E402

RUNS = {"dense": ("dense", "prefetch"), "meki": ("meki", "prefetch"), "meki-thread": ("meki", "thread"),
        "meki-sync": ("meki", "sync")}


def runner_cmd(tool_dir: Path, bundle: Path, lookup: str, a: argparse.Namespace, extra: list[str]) -> list[str]:
    return [str(tool_dir / "meki_runner"), str(bundle), "--prompt-ids", ",".join(map(str, prompt_ids(a.prompt_len))),
            "--max-new-tokens", str(a.new_tokens), "--ignore-eos", "--quiet", "--lookup", lookup, *extra]


def callgrind_threads(tool_dir: Path, bundle: Path, lookup: str, a: argparse.Namespace) -> dict:
    """Instructions per decode step on the decode thread (decode_n) and on the prefetch worker."""
    with tempfile.TemporaryDirectory(prefix="cgp-") as work:
        cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={work}/cg",
               "--toggle-collect=*Generator::decode_n*", "--toggle-collect=*Prefetcher::loop*",
               *runner_cmd(tool_dir, bundle, lookup, a, ["--single-thread", "--stats", f"{work}/stats.json"])]
        subprocess.run(cmd, check=True, capture_output=True)
        steps = len(json.loads(Path(f"{work}/stats.json").read_text())["tokens"]) - 1
        per_thread = {}
        for f in sorted(Path(work).glob("cg-*")):  # cg-THREADID (1: the main thread)
            m = re.search(r"^summary: (\d+)", f.read_text(errors="replace"), re.M)
            per_thread[int(f.name.rsplit("-", 1)[1])] = int(m.group(1)) if m else 0
    decode = per_thread.pop(1, 0)
    return {"decode_thread_per_step": decode / steps, "prefetch_thread_per_step": sum(per_thread.values()) / steps,
            "steps": steps}


def native_wall(tool_dir: Path, bundle: Path, lookup: str, a: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(runner_cmd(tool_dir, bundle, lookup, a, ["--warmup", "4", "--stats", f.name]), check=True,
                       capture_output=True)
        return step_figures(json.loads(Path(f.name).read_text()))


def step_figures(s: dict) -> dict:
    return {"decode_tok_s": s["decode_tok_s"], "step_median_s": statistics.median(s["x_decode_step_s"]),
            "exposed_fraction": s["exposed_lookup_fraction"]}


def python_generators(bundles: dict[str, Path]) -> dict:
    from mobile_runtime.generate import Generator

    return {name: Generator(bundles[kind], check_hashes=False, lookup=lookup)
            for name, (kind, lookup) in RUNS.items()}


def python_wall(gen, a: argparse.Namespace) -> dict:
    stats = generate_fixed(gen, a)
    return {"decode_tok_s": stats.decode_tok_s, "step_median_s": statistics.median(gen.times.decode_step_s),
            "exposed_fraction": stats.exposed_lookup_fraction}


def medians(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure(tool_dir: Path, bundles: dict[str, Path], a: argparse.Namespace) -> dict:
    res: dict = {"instructions": {}, "native": {}, "python": {}}
    if not a.no_callgrind:
        for name, (kind, lookup) in RUNS.items():
            res["instructions"][name] = callgrind_threads(tool_dir, bundles[kind], lookup, a)
    gens = python_generators(bundles)
    for g in gens.values():  # warm-up: first-call costs out of the timed rounds
        python_wall(g, a)
    native: dict[str, list] = {n: [] for n in RUNS}
    python: dict[str, list] = {n: [] for n in RUNS}
    for _ in range(a.rounds):  # interleaved: every run once per round
        for name, (kind, lookup) in RUNS.items():
            native[name].append(native_wall(tool_dir, bundles[kind], lookup, a))
            python[name].append(python_wall(gens[name], a))
    res["native"] = {n: medians(v) for n, v in native.items()}
    res["python"] = {n: medians(v) for n, v in python.items()}
    res["summary"] = summary(res)
    return res


def print_table(res: dict, a: argparse.Namespace) -> None:
    print(f"\n{a.quant}: prompt {a.prompt_len} + {a.new_tokens} new tokens, {a.rounds} interleaved rounds (medians)")
    ins = res["instructions"]
    if ins:
        print(f"{'run':10} {'decode thread instr/step':>25} {'prefetch thread instr/step':>27}")
        for n, r in ins.items():
            print(f"{n:10} {r['decode_thread_per_step']:25,.0f} {r['prefetch_thread_per_step']:27,.0f}")
    for runner in ("native", "python"):
        print(f"\n{runner:8} {'run':10} {'decode tok/s':>12} {'step ms':>9} {'exposed lookup':>15}")
        for n, r in res[runner].items():
            print(f"{'':8} {n:10} {r['decode_tok_s']:12.1f} {1e3 * r['step_median_s']:9.3f} "
                  f"{100 * r['exposed_fraction']:14.3f}%")
    print()
    for k, v in res["summary"].items():
        print(f"  {k:36} {v:9.4f}   {LIMITS.get(k, '')}")


LIMITS = {"native_meki_over_sync": "limit >= 1.0",
          "python_meki_over_sync": "limit >= 1.0",
          "native_exposed_fraction": "limit <= 0.01", "python_exposed_fraction": "limit <= 0.01",
          "native_meki_over_thread": "limit >= 1.0", "python_meki_over_thread": "limit >= 1.0",
          "instr_worker_share_meki": "of a decode step, on the worker thread",
          "instr_worker_share_thread": "of a decode step, on the worker thread"}


def summary(res: dict) -> dict:
    """MeKi-prefetch vs MeKi-sync vs dense (decode speed ratios), exposed lookup, per-thread instructions."""
    out = {}
    for runner in ("native", "python"):
        w = res[runner]
        out[f"{runner}_meki_over_sync"] = w["meki"]["decode_tok_s"] / w["meki-sync"]["decode_tok_s"]
        out[f"{runner}_meki_over_thread"] = w["meki"]["decode_tok_s"] / w["meki-thread"]["decode_tok_s"]
        out[f"{runner}_meki_over_dense"] = w["meki"]["decode_tok_s"] / w["dense"]["decode_tok_s"]
        out[f"{runner}_exposed_fraction"] = w["meki"]["exposed_fraction"]
        out[f"{runner}_thread_exposed_fraction"] = w["meki-thread"]["exposed_fraction"]
        out[f"{runner}_sync_exposed_fraction"] = w["meki-sync"]["exposed_fraction"]
    ins = res["instructions"]
    if ins:
        d, p, t, s = (ins[k]["decode_thread_per_step"] for k in ("dense", "meki", "meki-thread", "meki-sync"))
        out["instr_decode_thread_meki_over_dense"] = p / d
        out["instr_decode_thread_meki_over_sync"] = p / s
        out["instr_decode_thread_thread_over_sync"] = t / s
        out["instr_worker_share_meki"] = ins["meki"]["prefetch_thread_per_step"] / p
        out["instr_worker_share_thread"] = ins["meki-thread"]["prefetch_thread_per_step"] / t
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="8da4w", choices=("none", "8da4w"))
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_overhead" / "demo",
                    help="bench_overhead.py's work folder for the demo shape (bundles exported there if missing)")
    add_step_args(ap)
    ap.add_argument("--json", type=Path, default=None, help="default: WORK/prefetch_QUANT.json")
    a = parse_step_args(ap, argv)
    tool_dir = build_native()
    src, baseline = source_checkpoints("demo", a.work)
    ours = a.work / f"ours-{a.quant}"
    export_ours(src, baseline, ours, a.quant, a)
    res = measure(tool_dir, {"dense": ours / "dense", "meki": ours / "meki"}, a)
    print_table(res, a)
    out = a.json or a.work / f"prefetch_{a.quant}.json"
    out.write_text(json.dumps({"host": host(), "quant": a.quant, "prompt_len": a.prompt_len,
                               "new_tokens": a.new_tokens, "rounds": a.rounds, "results": res}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
