"""Benchmark (b) of issue 5: the native runner vs ExecuTorch's own LLM runner on a dense backbone.

ExecuTorch's TextLLMRunner (executorch.extension.llm.runner, C++ under a pybind) runs a program with
one `forward(tokens [1, T], input_pos [T]) -> logits` method plus constant metadata methods
(get_max_seq_len, get_max_context_len, get_vocab_size, use_kv_cache, enable_dynamic_shape, get_bos_id,
get_eos_ids). Our bundles have prefill/decode methods instead, so this script exports one random dense
model twice:

  dense/    the project's bundle (prefill + decode, `pipeline.export.bundle.write_bundle`)
  et_llm/   the ExecuTorch-LLM-runner program (forward + metadata), and a bundle whose manifest names
            that very program's `forward` for both prefill and decode, so the native runner and
            TextLLMRunner run byte-identical programs: the difference is the runners alone.

Then, interleaved over --rounds: native runner on et_llm (same program), native runner on dense (its
own decode method), both after an 8-token warm-up generate as TextLLMRunner does its own; TextLLMRunner
(in a child process: it prints every token to stdout like the
native runner does; both are piped here), and a bare C++ Module decode loop as a floor. Decode tok/s
is decode calls (generated tokens - 1) over the decode wall time for every runner; TextLLMRunner's clock
is in ms, so the runs are long enough (hundreds of steps) to keep that under 1%.

    .venv/bin/python benchmarks/bench_native_vs_et_runner.py --preset tiny --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from build_cache import reuse_or_build  # noqa: E402
from contract.manifest import load_manifest, write_manifest  # noqa: E402

PY = sys.executable


def make_tokenizer(vocab: int, path: Path) -> None:
    """An HF tokenizer.json mapping token id i <-> word "t{i}" (TextLLMRunner needs one to run).

    pytorch-tokenizers (inside TextLLMRunner) reads BPE models only (it requires `merges`) and the
    Split pre-tokenizer, not WordLevel/WhitespaceSplit: a BPE with whole words as its vocab and no merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={f"t{i}": i for i in range(vocab)}, merges=[], unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "removed")  # pytorch-tokenizers knows Split, not WhitespaceSplit
    tok.save(str(path))


def dense_model(preset: str, layers: int | None, dim: int | None, seed: int, max_seq_len: int):
    from pipeline.config import preset as get_preset
    from pipeline.model import MekiModel, init_weights

    cfg = get_preset(preset).replace(memory="none", name=f"{preset}-dense", max_seq_len=max_seq_len)
    if layers:
        cfg = cfg.replace(num_layers=layers)
    if dim:  # keep head_dim; scale heads and FFN with the width
        cfg = cfg.replace(dim=dim, ffn_dim=3 * dim, num_heads=dim // cfg.head_dim,
                          num_kv_heads=max(1, dim // cfg.head_dim // 2))
    return init_weights(MekiModel(cfg), seed=seed).eval()


def export_et_llm(model, out: Path, settings, eos_id: int) -> None:
    """model -> a .pte in the form ExecuTorch's LLM runner loads: `forward` (dynamic T <= prefill_len,
    KV cache inside) plus the metadata methods it reads at load."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    from pipeline.export.common import export_steps

    forward = export_steps(model, settings)["prefill"]  # same graph as the bundle's prefill
    meta = {"get_max_seq_len": settings.prefill_len,  # tokens per forward call (prefill chunk)
            "get_max_context_len": settings.max_seq_len,  # KV cache positions
            "get_vocab_size": model.cfg.vocab_size, "use_kv_cache": True, "use_sdpa_with_kv_cache": False,
            "enable_dynamic_shape": True, "get_bos_id": 0, "get_eos_ids": [eos_id]}
    edge = to_edge_transform_and_lower({"forward": forward}, partitioner=[XnnpackPartitioner()],
                                       constant_methods=meta, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    program = edge.to_executorch(ExecutorchBackendConfig(
        passes=[InitializedMutableBufferPass(["cache"])],
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False), emit_mutable_buffer_names=True))
    out.write_bytes(program.buffer)


def programs(work: Path, a: argparse.Namespace) -> dict[str, Path]:
    """work/programs: the bundles build_bundles writes, kept from an earlier run with the same model and
    export options."""
    key = {k: getattr(a, k) for k in ("preset", "layers", "dim", "seed", "max_seq_len", "prefill_len", "eos_id")}
    out = reuse_or_build(work / "programs", key, lambda tmp: build_bundles(tmp, a))
    return {"dense": out / "dense", "et_llm": out / "et_llm", "tokenizer": out / "tokenizer.json"}


def build_bundles(work: Path, a: argparse.Namespace) -> dict[str, Path]:
    """dense/ (project bundle) and et_llm/ (the ET-runner program behind a bundle manifest)."""
    from pipeline.checkpoint import model_fingerprint
    from pipeline.export.bundle import write_bundle
    from pipeline.export.registry import ExportSettings

    model = dense_model(a.preset, a.layers, a.dim, a.seed, a.max_seq_len)
    settings = ExportSettings(quant="none", max_seq_len=a.max_seq_len, prefill_len=a.prefill_len)
    tok = work / "tokenizer.json"
    make_tokenizer(model.cfg.vocab_size, tok)
    fp = model_fingerprint(model)
    write_bundle(model, work / "dense", ["executorch-xnnpack"], settings, fp, None, None, True, "bench")
    # the ET program is a copy of the dense bundle whose backbone is the forward-only .pte
    et = work / "et_llm"
    subprocess.run(["cp", "-r", str(work / "dense"), str(et)], check=True)
    (et / "model_xnnpack.pte").unlink()
    export_et_llm(model, et / "model_et_llm.pte", settings, eos_id=a.eos_id)
    m = load_manifest(et)
    bb = m.backbones[0]
    bb.file = "model_et_llm.pte"
    for v in bb.methods.values():
        v.entry = "forward"
    m.name = f"{m.name}-et-llm"
    write_manifest(et, m)
    return {"dense": work / "dense", "et_llm": et, "tokenizer": tok}


def run_native(runner: Path, bundle: Path, prompt: list[int], n: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        res = subprocess.run([str(runner), str(bundle), "--prompt-ids", ",".join(map(str, prompt)),
                              "--max-new-tokens", str(n), "--ignore-eos", "--warmup", "8", "--stats", f.name],
                             capture_output=True, text=True, check=True)
        s = json.loads(Path(f.name).read_text())
    assert res.stdout.split() == [str(t) for t in s["tokens"]]  # it streamed what it generated (not the warm-up)
    return {"decode_tok_s": s["decode_tok_s"], "tokens": s["tokens"], "rss_peak_bytes": s["rss_peak_bytes"]}


def run_et_runner(pte: Path, tok: Path, prompt: list[int], n: int) -> dict:
    res = subprocess.run([PY, __file__, "--et-child", str(pte), str(tok), ",".join(map(str, prompt)), str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stderr.strip().splitlines()[-1])


def et_child(pte: str, tok: str, prompt_ids: str, n: int) -> None:
    """In a child process: warm-up generate, then a timed one; one JSON line on stderr."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    prompt = " ".join(f"t{i}" for i in prompt_ids.split(","))
    runner = TextLLMRunner(pte, tok)
    pieces, stats = [], []
    cfg = GenerationConfig(echo=False, max_new_tokens=n, temperature=0.0)
    runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=8, temperature=0.0, warming=True))
    runner.reset()
    runner.generate(prompt, cfg, token_callback=pieces.append, stats_callback=stats.append)
    s = stats[-1]
    decode_s = (s.inference_end_ms - s.prompt_eval_end_ms) / s.SCALING_FACTOR_UNITS_PER_SECOND
    tokens = [int(p.strip()[1:]) for p in pieces if p.strip()]
    # num_generated_tokens counts the decode calls (the prefill's token is not in it): calls / time,
    # the same measure as the native runner's (generated - 1) / decode_s
    assert len(tokens) == s.num_generated_tokens + 1, (len(tokens), s.num_generated_tokens)
    print(json.dumps({"decode_tok_s": s.num_generated_tokens / decode_s, "tokens": tokens,
                      "num_generated_tokens": s.num_generated_tokens, "num_prompt_tokens": s.num_prompt_tokens,
                      "decode_s": decode_s}), file=sys.stderr)


def run_bare(loop: Path, pte: Path, prompt_len: int, n: int) -> dict:
    res = subprocess.run([str(loop), str(pte), str(prompt_len), str(n - 1)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int, help="override num_layers")
    p.add_argument("--dim", type=int, help="override dim (heads/FFN scale with it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--prefill-len", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=960)
    p.add_argument("--eos-id", type=int, default=1, help="the ET program's EOS (checked not to stop the run)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", type=Path, help="keep the exported programs here (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write all runs and the summary here")
    a = p.parse_args()
    build = subprocess.run([str(REPO / "mobile_runtime/native/build.sh")], check=True, capture_output=True, text=True)
    native_dir = Path(build.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(prefix="bench-native-et-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        b = programs(work, a)
        prompt = [(7 * i + 3) % 64 + 2 for i in range(a.prompt_len)]  # ids >= 2: never the EOS/BOS
        pte = b["et_llm"] / "model_et_llm.pte"
        runs: dict[str, list[dict]] = {"native_same_pte": [], "native_dense_bundle": [], "et_text_llm_runner": [],
                                       "bare_module_loop_dense": []}
        for r in range(a.rounds):
            runs["native_same_pte"].append(run_native(native_dir / "meki_runner", b["et_llm"], prompt, a.new_tokens))
            runs["et_text_llm_runner"].append(run_et_runner(pte, b["tokenizer"], prompt, a.new_tokens))
            runs["native_dense_bundle"].append(run_native(native_dir / "meki_runner", b["dense"], prompt, a.new_tokens))
            runs["bare_module_loop_dense"].append(run_bare(native_dir / "et_decode_loop", b["dense"] / "model_xnnpack.pte",
                                                           a.prompt_len, a.new_tokens))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]['decode_tok_s']:.1f}" for k, v in runs.items()),
                  file=sys.stderr)
        med = {k: statistics.median(x["decode_tok_s"] for x in v) for k, v in runs.items()}
        best = {k: max(x["decode_tok_s"] for x in v) for k, v in runs.items()}  # least disturbed by other load
        same = runs["native_same_pte"][0]["tokens"] == runs["et_text_llm_runner"][0]["tokens"]
        summary = {"config": vars(a) | {"work": str(work), "json": str(a.json)}, "median_decode_tok_s": med,
                   "ratio_native_vs_et_runner_same_pte": med["native_same_pte"] / med["et_text_llm_runner"],
                   "ratio_native_dense_bundle_vs_et_runner": med["native_dense_bundle"] / med["et_text_llm_runner"],
                   "best_decode_tok_s": best,
                   "best_ratio_native_vs_et_runner_same_pte": best["native_same_pte"] / best["et_text_llm_runner"],
                   "paired_ratios_same_pte": [n["decode_tok_s"] / e["decode_tok_s"] for n, e in
                                              zip(runs["native_same_pte"], runs["et_text_llm_runner"])],
                   "same_tokens_native_vs_et_runner": same,
                   "et_runner_generated": runs["et_text_llm_runner"][0]["num_generated_tokens"]}
        print(json.dumps(summary, indent=2))
        if a.json:
            a.json.write_text(json.dumps(summary | {"runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--et-child":
        et_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())
