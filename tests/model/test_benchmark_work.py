"""The benchmarks' own plumbing: exported programs reused only for the options and the source files they
were built from (benchmarks/build_cache.py), an interrupted build leaving nothing that looks reusable; bad
options refused in one line before anything is built."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from build_cache import KEY_FILE, built_for, files_stamp, reuse_or_build  # noqa: E402


def builder(calls: list, text: str = "programs"):
    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "model.pte").write_text(text)
    return build


def test_reused_for_the_same_key_rebuilt_for_another(tmp_path):
    calls: list = []
    out = reuse_or_build(tmp_path / "work", {"max_seq_len": 256, "quant": "8da4w"}, builder(calls))
    assert (out / "model.pte").read_text() == "programs" and len(calls) == 1
    reuse_or_build(out, {"quant": "8da4w", "max_seq_len": 256}, builder(calls, "other"))  # key order: same
    assert len(calls) == 1 and (out / "model.pte").read_text() == "programs"
    reuse_or_build(out, {"quant": "8da4w", "max_seq_len": 512}, builder(calls, "other"))
    assert len(calls) == 2 and (out / "model.pte").read_text() == "other"
    assert built_for(out) == {"quant": "8da4w", "max_seq_len": 512}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # no temporary siblings, no lock left


def test_a_failed_build_keeps_the_old_folder_and_leaves_nothing(tmp_path):
    out = reuse_or_build(tmp_path / "work", {"v": 1}, builder([]))

    def fails(tmp: Path) -> None:
        (tmp / "model.pte").write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        reuse_or_build(out, {"v": 2}, fails)
    assert (out / "model.pte").read_text() == "programs" and built_for(out) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_folder_without_its_record_is_rebuilt(tmp_path):
    """What an older benchmark left (or anything else) is not taken for a build of this key."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "model.pte").write_text("stale")
    calls: list = []
    reuse_or_build(tmp_path / "work", {"v": 1}, builder(calls))
    assert len(calls) == 1 and (tmp_path / "work" / "model.pte").read_text() == "programs"
    (tmp_path / "work" / KEY_FILE).write_text("{not json")
    reuse_or_build(tmp_path / "work", {"v": 1}, builder(calls))
    assert len(calls) == 2


def test_the_stamp_changes_when_a_source_file_is_rewritten(tmp_path):
    ck = tmp_path / "ck"
    (ck / "sub").mkdir(parents=True)
    (ck / "config.json").write_text("{}")
    (ck / "sub" / "model.safetensors").write_bytes(b"0" * 16)
    before = files_stamp(ck, None)
    assert len(before) == 2 and files_stamp(ck) == before
    st = (ck / "config.json").stat()
    os.utime(ck / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert files_stamp(ck) != before
    (ck / "extra.json").write_text("{}")
    assert len(files_stamp(ck)) == 3
    assert json.loads(json.dumps(files_stamp(ck / "config.json")))[0][1] == 2



def refused_in_one_line(script: str, args: list[str], says: str, tmp_path: Path) -> None:
    """Exit 2, the last stderr line naming the problem, no traceback, nothing written to --work."""
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--no-callgrind",
                          "--work", str(tmp_path / "w")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2 and says in res.stderr.splitlines()[-1] and "Traceback" not in res.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("script", ["bench_overhead.py", "bench_meki_parts.py", "bench_prefetch.py", "bench_arm64.py"])
@pytest.mark.parametrize("args,says", [
    (["--new-tokens", "300"], "must fit --max-seq-len (256)"),
    (["--prompt-len", "40"], "--prompt-len must be 1..--prefill-len (32)"),
    (["--new-tokens", "0"], "--new-tokens must be at least 1"),
])
def test_step_options_refused_before_anything_is_built(script, args, says, tmp_path):
    """A run that cannot fit the programs' KV cache or prefill is refused up front, not by the runner
    after minutes of exports."""
    refused_in_one_line(script, args, says, tmp_path)


@pytest.mark.parametrize("script,args,says", [
    ("bench_overhead.py", ["--quants", "8da4w,int3"], "--quants takes a comma-separated list of none, 8da4w"),
    ("bench_arm64.py", ["--quants", ""], "--quants takes a comma-separated list"),
    ("bench_overhead.py", ["--shape", "qwen3-0.6b", "--layers", "0"], "--layers takes a positive layer count"),
    ("bench_overhead.py", ["--layers", "2"], "with --shape qwen3-0.6b"),
    ("bench_meki_parts.py", ["--quant", "int3"], "invalid choice: 'int3'"),
    ("bench_meki_parts.py", ["--checkpoint", "/nonexistent/ck"], "not a checkpoint folder"),
    ("bench_meki_parts.py", ["--checkpoint", str(REPO / "models" / "demo" / "dense")], "is a dense checkpoint"),
])
def test_bad_benchmark_options_named_in_one_line(script, args, says, tmp_path):
    refused_in_one_line(script, args, says, tmp_path)


@pytest.mark.slow
def test_executorch_llm_export_in_a_folder_named_for_its_quantisation(tmp_path):
    """bench_overhead's baseline, ExecuTorch's own export_llama, in `et-8da4w/`: its Llama model takes a
    checkpoint path containing "8da4w" (or "int8") for an already quantised one, so the random weights
    must be written elsewhere. The program quantises its activations (8da4w applied) and runs."""
    import numpy as np
    import torch
    from executorch.runtime import Runtime
    from overhead_lib import decode_ops, export_et_llm

    from pipeline.config import preset

    cfg = preset("fake").replace(dim=64, ffn_dim=128).to_dict()
    out = tmp_path / "int8-runs" / "et-8da4w"
    pte = export_et_llm(cfg, out, "8da4w", max_seq_len=32, prefill_len=8)
    assert pte == out / "et_8da4w.pte" and sorted(p.name for p in out.iterdir()) == ["et_8da4w.pte", "params.json"]
    assert decode_ops(pte, "forward").get("xnn:Convert", 0) >= cfg["num_layers"]  # dynamic activation quant
    method = Runtime.get().load_program(pte).load_method("forward")
    logits = method.execute([torch.tensor([[3, 5, 7, 9]]), torch.tensor([0])])[0]
    assert logits.shape[-1] == cfg["vocab_size"] and np.isfinite(logits.numpy()).all()
