"""Pieces of bench_overhead.py: ExecuTorch's own LLM export, callgrind per phase, the ideal cost model.

Instruction counts: `step_bench --single-thread` under `valgrind --tool=callgrind --collect-atstart=no`;
the runner toggles collection around each Method::execute and dumps once after prefill and once after
the decode loop, so each dump is the instructions inside execute for that phase (the same for the
same binary and inputs, whatever else runs on the machine). Single-threaded because callgrind's
toggle acts on the calling thread only: XNNPACK's worker threads would escape the count.
Counted after a warm-up generation (WARMUP tokens, as the wall-clock runs): the first prefill after
loading also pays XNNPACK's first reshape of every runtime and its workspace allocation (a memset),
once per loaded program; that call is counted on its own ("first_prefill") and reported beside.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def add_step_args(ap: argparse.ArgumentParser, rounds: bool = True) -> None:
    """The step-benchmark options the benchmarks share (rounds=False: one that times no rounds)."""
    if rounds:
        ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--prefill-len", type=int, default=32)
    ap.add_argument("--no-callgrind", action="store_true", help="skip the x86 callgrind counts")


def prompt_ids(n: int) -> list[int]:
    """The fixed prompt every step benchmark feeds (token ids below 64: any vocabulary has them)."""
    return [(i * 7 + 3) % 64 for i in range(n)]


def generate_fixed(gen, a: argparse.Namespace):
    """One Python-loop run of the fixed prompt for a.new_tokens tokens (no stop token); its RunStats."""
    from mobile_runtime.sampling import SamplingConfig

    return gen.generate(prompt_ids(a.prompt_len), SamplingConfig(max_new_tokens=a.new_tokens, stop_ids=()))


def python_loop_round(gens: dict, a: argparse.Namespace, order: list[str], per_step: bool) -> dict[str, dict]:
    """One interleaved round of the Python loop over several bundles, in `order`: each prefills the
    fixed prompt and decodes a.new_tokens, every next() of Generator.decode_steps timed (the row read,
    the backbone step, sampling, the next read's issue). per_step: the bundles' decode steps alternate
    one by one, so the pair sees the same machine (on two shared cores whole runs drift +-15% between
    neighbours; steps ~40 ms apart much less); only for programs larger than the last-level cache, which
    stream their weights from memory every step anyway: two cache-sized programs alternating would each
    run cold. Returns {name: {prefill_tok_s, decode_tok_s}}."""
    import time

    import numpy as np

    from mobile_runtime.sampling import SamplingConfig, sample

    cfg, ids = SamplingConfig(max_new_tokens=a.new_tokens, stop_ids=()), prompt_ids(a.prompt_len)
    out: dict[str, dict] = {}

    def start(name: str):
        g, rng = gens[name], np.random.default_rng(cfg.seed)
        t0 = time.perf_counter()
        first = sample(g.prefill(ids), cfg, rng, ids)
        out[name] = {"prefill_tok_s": len(ids) / (time.perf_counter() - t0), "decode_s": 0.0}
        return g.decode_steps(first, len(ids), cfg, rng, ids + [first])

    def step(name: str, steps) -> None:
        t0 = time.perf_counter()
        next(steps)
        out[name]["decode_s"] += time.perf_counter() - t0

    if per_step:
        steps = {name: start(name) for name in order}
        for _ in range(a.new_tokens - 1):
            for name in order:
                step(name, steps[name])
    else:
        for name in order:
            steps = start(name)
            for _ in range(a.new_tokens - 1):
                step(name, steps)
    return {name: {"prefill_tok_s": r["prefill_tok_s"], "decode_tok_s": (a.new_tokens - 1) / r["decode_s"]}
            for name, r in out.items()}


def larger_than_cache(*files: Path) -> bool:
    """Every file larger than the last-level cache (os.sysconf; 32 MiB where it does not say)."""
    import os

    try:
        llc = os.sysconf("SC_LEVEL3_CACHE_SIZE") or 32 << 20
    except (ValueError, OSError):
        llc = 32 << 20
    return all(Path(f).stat().st_size > llc for f in files)


def parse_step_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    a = ap.parse_args(argv)
    check_step_args(ap, a)
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not a.no_callgrind and shutil.which("valgrind") is None:
        ap.error("valgrind not found (apt-get install valgrind), or pass --no-callgrind")
    return a


QUANTS = ("none", "8da4w")  # what both our export and ExecuTorch's export_llama run, and ideal_costs prices


def quant_list(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """--quants a,b: each one of QUANTS, refused in one line otherwise."""
    quants = [q.strip() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        ap.error(f"--quants takes a comma-separated list of {', '.join(QUANTS)}; got {text!r}")
    return quants


def check_step_args(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """The prompt is one prefill call and the whole run fits the KV cache: refused here, in one line,
    before anything is exported, rather than by the runner after it."""
    if a.new_tokens < 1:
        ap.error("--new-tokens must be at least 1")
    if not 0 < a.prompt_len <= a.prefill_len:
        ap.error(f"--prompt-len must be 1..--prefill-len ({a.prefill_len}): the prompt is one prefill call")
    if a.prompt_len + a.new_tokens > a.max_seq_len:
        ap.error(f"--prompt-len + --new-tokens ({a.prompt_len + a.new_tokens}) must fit --max-seq-len "
                 f"({a.max_seq_len})")


def host() -> dict:
    """Which machine the figures came from (CPU model, cores, kernel, memory), as the device harness records
    it for a host: wall-clock figures from different hosts are not comparable."""
    from device_tests.facts import host_facts

    return host_facts().to_json() | {"cpus": os.cpu_count()}


def host_line(info: dict) -> str:
    return (f"host: {info.get('soc') or '?'}, {info.get('cpus')} CPUs, {info.get('abi')}, "
            f"kernel {info.get('os_version')}")


def et_params(cfg: dict) -> dict:
    """Our config.json -> ExecuTorch's ModelArgs params (examples/models/llama/model_args.py), Qwen3 form."""
    return {"dim": cfg["dim"], "hidden_dim": cfg["ffn_dim"], "n_heads": cfg["num_heads"], "head_dim": cfg["head_dim"],
            "n_kv_heads": cfg["num_kv_heads"], "n_layers": cfg["num_layers"], "norm_eps": cfg["norm_eps"],
            "rope_theta": cfg["rope_theta"], "use_scaled_rope": False, "vocab_size": cfg["vocab_size"],
            "use_hf_rope": True, "attention_qkv_bias": False, "use_qk_norm": cfg["qk_norm"], "qk_norm_before_rope": True}


def export_et_llm(cfg: dict, out: Path, quant: str, max_seq_len: int, prefill_len: int, seed: int = 0) -> Path:
    """ExecuTorch's own LLM export (export_llama: custom SDPA + KV-cache ops, XNNPACK) of a random-weight
    Qwen3-shaped model: `forward(tokens [1, T], input_pos [1])`, T <= prefill_len, cache max_seq_len."""
    import torch
    from executorch.examples.models.llama.export_llama_lib import export_llama
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs
    from executorch.extension.llm.export.config.llm_config import LlmConfig, ModelType

    out.mkdir(parents=True, exist_ok=True)
    params = out / "params.json"
    params.write_text(json.dumps(et_params(cfg)))
    c = LlmConfig()
    c.base.model_class, c.base.params = ModelType.qwen3_0_6b, str(params)
    c.base.metadata = '{"get_bos_id": 0, "get_eos_ids": [1]}'
    c.model.use_kv_cache = c.model.use_sdpa_with_kv_cache = c.model.enable_dynamic_shape = True
    c.export.max_seq_length, c.export.max_context_length = prefill_len, max_seq_len
    # an output_name ending in .pte is used as the path itself (relative to the cwd), not under output_dir
    c.export.output_dir, c.export.output_name = str(out), str(out / f"et_{quant}.pte")
    c.backend.xnnpack.enabled = c.backend.xnnpack.extended_ops = True
    if quant != "none":
        # our 8da4w groups 32 weights per scale; export_llama's default (128) leaves every linear
        # whose input width is not a multiple of 128 in fp32 (at d=192, for one: most of them)
        c.quantization.qmode, c.quantization.group_size = quant, 32
    # without a checkpoint export_llama downloads Qwen3 from the Hub; and its Llama model takes a checkpoint
    # whose path contains "int8" or "8da4w" for one already quantised that way: so the random weights go to
    # a temporary folder of their own, never beside `out` (a folder named for its quantisation)
    with tempfile.TemporaryDirectory(prefix="et-random-weights-") as ck_dir:
        c.base.checkpoint = str(Path(ck_dir) / "random.pth")
        if any(word in c.base.checkpoint for word in ("int8", "8da4w")):
            raise ValueError(f"{c.base.checkpoint}: export_llama would take this path for a quantised "
                             "checkpoint; set TMPDIR to a folder whose path has neither 'int8' nor '8da4w' in it")
        torch.manual_seed(seed)
        model = construct_transformer(ModelArgs(**et_params(cfg)))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.02)
        torch.save(model.state_dict(), c.base.checkpoint)
        del model
        export_llama(c)
    from pipeline.export.common import forget_lowered_graphs
    forget_lowered_graphs()  # ExecuTorch's caches would keep its lowered graphs (and their blobs) alive
    return out / f"et_{quant}.pte"


@dataclass
class Program:
    """One .pte as step_bench runs it."""
    name: str
    pte: Path
    args: list[str]  # step_bench flags: methods, --start-pos, --rows


def step_bench_cmd(tool: Path, prog: Program, prompt_len: int, new_tokens: int, extra: list[str]) -> list[str]:
    return [str(tool), str(prog.pte), str(prompt_len), str(new_tokens), *prog.args, *extra]


def callgrind_phases(tool: Path, prog: Program, prompt_len: int, new_tokens: int, tries: int = 3) -> dict:
    """Instructions inside Method::execute: prefill (one call) and decode (new_tokens - 1 calls).
    Valgrind here now and then ends a run with nothing counted (seen 1 in ~20 on this machine): retried."""
    for _ in range(tries):
        res = _callgrind_once(tool, prog, prompt_len, new_tokens)
        if res["prefill_instr"] > 0 and res["decode_instr"] > 0:
            return res
    raise RuntimeError(f"callgrind counted nothing for {prog.name} in {tries} runs")


WARMUP = 4  # tokens of the uncounted warm-up generation (step_bench --warmup), callgrind and wall clock alike


def _callgrind_once(tool: Path, prog: Program, prompt_len: int, new_tokens: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cg-") as work:
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={work}/cg.%p",
               *step_bench_cmd(tool, prog, prompt_len, new_tokens, ["--single-thread", "--warmup", str(WARMUP)])]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        dumps = {"prefill": 0, "decode": 0, "first_prefill": 0, "decode_top": []}
        for f in Path(work).glob("cg.*"):
            text = f.read_text(errors="replace")
            trigger = re.search(r"^desc: Trigger: Client Request: (\w+)", text, re.M)
            if trigger:
                dumps[trigger.group(1)] = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
                if trigger.group(1) == "decode":
                    dumps["decode_top"] = top_functions(text)
        run = json.loads(res.stdout.strip().splitlines()[-1])
    steps = run["decode_steps"]
    return {"prefill_instr": dumps["prefill"], "first_prefill_instr": dumps["first_prefill"],
            "decode_instr": dumps["decode"], "decode_steps": steps,
            "decode_instr_per_step": dumps["decode"] / steps, "tokens": run["tokens"],
            "decode_top": dumps["decode_top"]}


def top_functions(text: str, n: int = 8) -> list[tuple[str, float]]:
    """Self cost share of the n costliest functions in one callgrind dump (name compression aware)."""
    names: dict[str, str] = {}
    cost: dict[str, int] = {}
    fn, skip = None, False
    for line in text.splitlines():
        if line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn=") and m:
                fn = m.group(1)
        elif line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
                continue
            parts = line.split()
            if fn is not None and len(parts) >= 2:
                cost[fn] = cost.get(fn, 0) + int(parts[1])
    total = sum(cost.values()) or 1
    top = sorted(cost.items(), key=lambda kv: -kv[1])[:n]
    return [(re.sub(r"\(.*", "", names.get(k, k))[:80], round(v / total, 4)) for k, v in top]


def wall_clock(tool: Path, prog: Program, prompt_len: int, new_tokens: int, extra: list[str] = ()) -> dict:
    """extra: step_bench flags (bench_overhead passes the runners' decode thread policy)."""
    res = subprocess.run(step_bench_cmd(tool, prog, prompt_len, new_tokens, ["--warmup", str(WARMUP), *extra]),
                         check=True, capture_output=True, text=True)
    run = json.loads(res.stdout.strip().splitlines()[-1])
    return {"prefill_tok_s": prompt_len / run["prefill_s"], "decode_tok_s": run["decode_steps"] / run["decode_s"]}


def decode_ops(pte: Path, method: str = "decode") -> dict[str, int]:
    """What one call of `method` dispatches: ExecuTorch's instructions by kernel ("<delegate>" per delegate
    call) and the XNNPACK nodes inside its delegates by type ("xnn:Type"), read from the .pte (the
    delegate blobs' flatbuffers decoded with the wheel's own flatc and schema)."""
    import collections
    import sys

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._program import deserialize_pte_binary

    prog = deserialize_pte_binary(Path(pte).read_bytes())
    prog = getattr(prog, "program", prog)
    plan = next(p for p in prog.execution_plan if p.name == method)
    counts: collections.Counter = collections.Counter()
    for chain in plan.chains:
        for ins in chain.instructions:
            kind = type(ins.instr_args).__name__
            if kind == "KernelCall":
                counts[plan.operators[ins.instr_args.op_index].name] += 1
            elif kind == "DelegateCall":
                counts["<delegate>"] += 1
    schema = Path(sys.modules[XNNHeader.__module__].__file__).with_name("schema.fbs")
    flatc = shutil.which("flatc", path=str(Path(sys.executable).parent)) or "flatc"
    with tempfile.TemporaryDirectory(prefix="xnn-") as work:
        for i, d in enumerate(plan.delegates):
            if d.id != "XnnpackBackend" or d.processed.location.name != "INLINE":
                continue
            blob = prog.backend_delegate_data[d.processed.index].data
            h = XNNHeader.from_bytes(blob[:XNNHeader.EXPECTED_LENGTH])
            (Path(work) / f"{i}.bin").write_bytes(blob[h.flatbuffer_offset:h.flatbuffer_offset + h.flatbuffer_size])
            subprocess.run([flatc, "--json", "--strict-json", "--raw-binary", "-o", work, str(schema), "--",
                            f"{work}/{i}.bin"], check=True, capture_output=True)
            for node in json.loads((Path(work) / f"{i}.json").read_text())["xnodes"]:
                counts["xnn:" + node["xnode_union_type"].removeprefix("XNN")] += 1
    return dict(counts)


# ---- the ideal cost (what the bytes and FLOPs alone say)

def bytes_per_weight(quant: str, group: int = 32) -> float:
    """fp32; 8da4w: int4 + one bf16 scale per group of 32 (XNNPACK qb4w); int8wo: int8 + fp32 per row (~0)."""
    return {"none": 4.0, "8da4w": 0.5 + 2.0 / group, "int8wo": 1.0}[quant]


def linear_weights(cfg: dict, meki: bool) -> int:
    d, hd = cfg["dim"], cfg["head_dim"]
    attn = d * cfg["num_heads"] * hd * 2 + d * cfg["num_kv_heads"] * hd * 2
    layer = attn + 3 * d * cfg["ffn_dim"] + (2 * d * cfg["d_mem"] if meki else 0)
    return cfg["num_layers"] * layer + cfg["vocab_size"] * d  # + the LM head


def ideal_costs(cfg: dict, quant: str, pack_bytes_per_value: float, prompt_len: int, new_tokens: int,
                meki: bool) -> dict:
    """Decode: bytes read per step (weights, the embedding row, the KV cache at the mean context, the
    MeKi row); prefill: FLOPs per prompt token (2 per weight, attention QK^T and PV at the mean context)."""
    L, hd, hkv, hq = cfg["num_layers"], cfg["head_dim"], cfg["num_kv_heads"], cfg["num_heads"]
    w = linear_weights(cfg, meki)
    ctx_decode = prompt_len + new_tokens / 2
    kv_bytes = 2 * L * hkv * hd * ctx_decode * 4
    row = L * cfg["d_mem"] * pack_bytes_per_value if meki else 0
    decode_bytes = w * bytes_per_weight(quant) + cfg["dim"] * 4 + kv_bytes + row
    attn_flops = 4 * L * hq * hd * (prompt_len + 1) / 2
    return {"weights": w, "decode_bytes": decode_bytes, "prefill_flops_per_token": 2 * w + attn_flops}
