"""MeKi vs dense on aarch64 (issue 16, item 5): the native runner cross-built for aarch64 Linux
(mobile_runtime/native/cross_aarch64.sh) and run under qemu-user with ARM's XNNPACK kernels.

For each quantisation, on the demo pair's bundles (exported as bench_overhead.py does, and shared
with it through --work):
  tokens        meki_runner's greedy tokens on aarch64 (qemu) = on x86 (native) = the Python loop
  instructions  step_bench --single-thread under qemu-aarch64 with qemu_insn_phases.so: guest (ARM)
                instructions inside Method::execute, prefill (one call) and decode per step, for each
                emulated CPU of --cpus (XNNPACK picks its kernels from the CPU's features: `max` has
                i8mm/SVE, cortex-a76 dot-product only); beside them the x86 count of the same
                programs under callgrind (--no-callgrind skips it)
MeKi/dense = dense instructions / MeKi instructions; efficiency = that / the ideal ratio (bytes per
decode step, FLOPs per prefill token: overhead_lib.ideal_costs). Counts are of emulated instructions:
the same for the same binary and inputs, whatever else the machine does; not a time.

    python benchmarks/bench_arm64.py                  # demo, fp32 and 8da4w (~10 min here after export)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_overhead import PACK_BYTES, build_native, export_ours, source_checkpoints  # noqa: E402
from overhead_lib import (Program, add_step_args, callgrind_phases, check_step_args, host,  # noqa: E402
                          ideal_costs, quant_list, step_bench_cmd)

QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


def qemu(cpu: str) -> list[str]:
    return [*QEMU, "-cpu", cpu]


def build_aarch64() -> Path:
    env = os.environ | {"PYTHON": sys.executable}
    out = subprocess.run([str(REPO / "mobile_runtime" / "native" / "cross_aarch64.sh")], check=True,
                         capture_output=True, text=True, env=env)
    return Path(out.stdout.strip().splitlines()[-1])


def qemu_phases(arm: Path, cpu: str, prog: Program, prompt_len: int, new_tokens: int) -> dict:
    """ARM instructions inside Method::execute per phase (step_bench's markers, qemu_insn_phases.c)."""
    with tempfile.TemporaryDirectory(prefix="qemu-") as work:
        counts = Path(work) / "counts.json"
        cmd = [*qemu(cpu), "-plugin", f"{arm / 'libqemu_insn_phases.so'},out={counts}",
               *step_bench_cmd(arm / "step_bench", prog, prompt_len, new_tokens, ["--single-thread"])]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        c = json.loads(counts.read_text())
    run = json.loads(res.stdout.strip().splitlines()[-1])
    steps = run["decode_steps"]
    return {"prefill_instr": c["prefill"], "decode_instr": c["decode"], "decode_steps": steps,
            "decode_instr_per_step": c["decode"] / steps, "all_instr": c["all"], "tokens": run["tokens"]}


def runner_tokens(cmd: list[str], bundle: Path, prompt: list[int], new_tokens: int) -> list[int]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([*cmd, str(bundle), "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens",
                        str(new_tokens), "--ignore-eos", "--quiet", "--stats", f.name], check=True, capture_output=True)
        return json.loads(Path(f.name).read_text())["tokens"]


def tokens_agree(arm: Path, x86: Path, ours: Path, a: argparse.Namespace) -> dict:
    """meki_runner on aarch64 (qemu) and x86, and the Python loop, same prompt, greedy."""
    from mobile_runtime.generate import Generator
    from mobile_runtime.sampling import SamplingConfig

    prompt = [(i * 7 + 3) % 64 for i in range(a.prompt_len)]
    out = {}
    for kind in ("dense", "meki"):
        t = {"aarch64": runner_tokens([*QEMU, str(arm / "meki_runner")], ours / kind, prompt, a.new_tokens),
             "x86": runner_tokens([str(x86 / "meki_runner")], ours / kind, prompt, a.new_tokens),
             "python": Generator(ours / kind).generate(
                 prompt, SamplingConfig(max_new_tokens=a.new_tokens)).tokens}
        out[kind] = {"tokens": t, "equal": t["aarch64"] == t["x86"] == t["python"]}
    return out


def measure(arm: Path, x86: Path, ours: Path, cfg: dict, quant: str, a: argparse.Namespace) -> dict:
    rows = ["--rows", f"{cfg['num_layers']},{cfg['d_mem']}"]
    progs = {"dense": Program("ours-dense", ours / "dense" / "model_xnnpack.pte", []),
             "meki": Program("ours-meki", ours / "meki" / "model_xnnpack.pte", rows)}
    res: dict = {"tokens": tokens_agree(arm, x86, ours, a), "x86": {}}
    for cpu in a.cpus.split(","):
        res[f"aarch64-{cpu}"] = {k: qemu_phases(arm, cpu, p, a.prompt_len, a.new_tokens) for k, p in progs.items()}
    for kind, p in progs.items():
        if not a.no_callgrind:
            res["x86"][kind] = callgrind_phases(x86 / "step_bench", p, a.prompt_len, a.new_tokens)
    pack = json.loads((ours / "meki" / "manifest.json").read_text())["memory_pack"]["dtype"]
    ideal = {k: ideal_costs(cfg, quant, PACK_BYTES[pack], a.prompt_len, a.new_tokens, k == "meki")
             for k in ("dense", "meki")}
    res["ideal"] = {"decode_ratio": ideal["dense"]["decode_bytes"] / ideal["meki"]["decode_bytes"],
                    "prefill_ratio": ideal["dense"]["prefill_flops_per_token"]
                    / ideal["meki"]["prefill_flops_per_token"]}
    res["ratios"] = {}
    for isa in [f"aarch64-{cpu}" for cpu in a.cpus.split(",")] + ["x86"]:
        if res[isa]:
            d, m = res[isa]["dense"], res[isa]["meki"]
            dec, pre = d["decode_instr"] / m["decode_instr"], d["prefill_instr"] / m["prefill_instr"]
            res["ratios"][isa] = {"decode_meki_dense": dec, "prefill_meki_dense": pre,
                                  "decode_efficiency": dec / res["ideal"]["decode_ratio"],
                                  "prefill_efficiency": pre / res["ideal"]["prefill_ratio"]}
    if res["x86"]:  # step_bench's own greedy tokens (fixed prompt) on both ISAs
        res["step_bench_tokens_equal"] = all(res["x86"][k]["tokens"] == res[f"aarch64-{cpu}"][k]["tokens"]
                                             for k in progs for cpu in a.cpus.split(","))
    return res


def print_table(results: dict, a: argparse.Namespace) -> None:
    print(f"\ndemo: prompt {a.prompt_len} + {a.new_tokens} new tokens, max_seq_len {a.max_seq_len}, one thread; "
          "instructions inside Method::execute")
    print(f"{'quant':6} {'isa':18} {'program':6} {'prefill Minstr':>14} {'decode Minstr/step':>18}")
    for quant, r in results.items():
        for isa in [k for k in r if k.startswith("aarch64-")] + ["x86"]:
            for kind, c in r[isa].items():
                print(f"{quant:6} {isa:18} {kind:6} {c['prefill_instr'] / 1e6:14.3f} "
                      f"{c['decode_instr_per_step'] / 1e6:18.4f}")
    for quant, r in results.items():
        same = {k: v["equal"] for k, v in r["tokens"].items()}
        print(f"\n{quant}: meki_runner greedy tokens aarch64 = x86 = python: {same}; step_bench tokens "
              f"aarch64 = x86: {r.get('step_bench_tokens_equal', '-')}")
        print(f"  ideal MeKi/dense: decode {r['ideal']['decode_ratio']:.4f}, prefill {r['ideal']['prefill_ratio']:.4f}")
        for isa, v in r["ratios"].items():
            print(f"  {isa:18} MeKi/dense decode {v['decode_meki_dense']:.4f} "
                  f"(efficiency {v['decode_efficiency']:.4f}), prefill {v['prefill_meki_dense']:.4f} "
                  f"(efficiency {v['prefill_efficiency']:.4f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quants", default="none,8da4w")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_overhead",
                    help="bundles under WORK/demo/ours-QUANT (bench_overhead.py's, exported if missing)")
    add_step_args(ap, rounds=False)
    ap.add_argument("--cpus", default="max,cortex-a76", help="qemu -cpu models to count on (qemu-aarch64 -cpu help)")
    ap.add_argument("--json", type=Path, default=None, help="default: WORK/demo/arm64.json")
    a = ap.parse_args(argv)
    check_step_args(ap, a)
    quants = quant_list(ap, a.quants)
    for tool in ("qemu-aarch64", "aarch64-linux-gnu-g++") + (() if a.no_callgrind else ("valgrind",)):
        if shutil.which(tool) is None:
            ap.error(f"{tool} not found (make system-deps)")
    arm, x86 = build_aarch64(), build_native()
    work = a.work / "demo"
    src, baseline = source_checkpoints("demo", work)
    cfg = json.loads(baseline.joinpath("config.json").read_text()) | {
        "d_mem": json.loads((src / "config.json").read_text())["d_mem"]}
    results = {}
    for quant in quants:
        export_ours(src, baseline, work / f"ours-{quant}", quant, a)
        results[quant] = measure(arm, x86, work / f"ours-{quant}", cfg, quant, a)
    print_table(results, a)
    out = a.json or work / "arm64.json"
    out.write_text(json.dumps({"host": host(), "shape": "demo", "config": cfg, "prompt_len": a.prompt_len,
                               "new_tokens": a.new_tokens, "max_seq_len": a.max_seq_len, "qemu": subprocess.run(
                                   ["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
                               "results": results}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
