"""Where XNNPACK runs decode steps in the Python runtime (mobile_runtime/threads.py): the rule, the
process's threadpool sized before a program loads and left alone while a loaded program holds it, and
the same greedy tokens either way. The pool is process-wide, so the runtime parts run in a child."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobile_runtime.threads import POOLED_DECODE_MACS, decode_on_calling_thread

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("setting,config,calling", [
    ("auto", {"dim": 256, "ffn_dim": 768}, True),             # the demo pair
    ("auto", {"dim": 1024, "ffn_dim": 3072}, False),          # Qwen3-0.6B
    ("auto", {"dim": 1024, "ffn_dim": POOLED_DECODE_MACS // 1024}, False),  # the threshold itself: pool
    ("auto", {"dim": 256}, False),                            # widths unknown: pool
    ("auto", {"dim": True, "ffn_dim": 768}, False),           # not an integer
    ("pool", {"dim": 256, "ffn_dim": 768}, False),
    ("calling", {"dim": 4096, "ffn_dim": 12288}, True),
])
def test_rule(setting, config, calling):
    assert decode_on_calling_thread(setting, config) is calling


def test_bad_setting_names_the_choices():
    with pytest.raises(ValueError, match="decode_threads must be one of auto, pool, calling, got 'four'"):
        decode_on_calling_thread("four", {})


CHILD = """
import gc, json, os, sys
from pathlib import Path
from executorch.extension.pybindings import portable_lib as lib
from mobile_runtime.generate import Generator
from mobile_runtime.sampling import SamplingConfig

bundle, out = Path(sys.argv[1]), {}
cfg = SamplingConfig(max_new_tokens=10)
g = Generator(bundle, decode_threads="calling")
out["calling"] = (g.runner.calling_thread, lib._threadpool_get_thread_count(), g.generate([3, 1, 4], cfg).tokens)
h = Generator(bundle, decode_threads="pool")  # g still holds the one-thread pool: kept
out["kept"] = (h.runner.calling_thread, lib._threadpool_get_thread_count(), h.generate([3, 1, 4], cfg).tokens)
del g, h
gc.collect()
p = Generator(bundle, decode_threads="pool")
out["pool"] = (p.runner.calling_thread, lib._threadpool_get_thread_count(), p.generate([3, 1, 4], cfg).tokens)
out["cpus"] = os.cpu_count()
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("bundles", ["8da4w"], indirect=True)
def test_threadpool_sized_before_load_and_kept_while_held(bundles):
    out, _ = bundles
    res = subprocess.run([sys.executable, "-c", CHILD, str(out / "meki")], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["calling"][:2] == [True, 1]
    assert got["kept"][:2] == [True, 1] and "stays at 1 thread(s)" in res.stderr
    assert got["pool"][:2] == [got["cpus"] == 1, got["cpus"]]
    assert got["calling"][2] == got["kept"][2] == got["pool"][2]
    assert "Resetting threadpool" not in res.stderr  # ExecuTorch's line is filtered as noise


def test_xnnpack_node_benchmark_runs(tmp_path):
    """benchmarks/bench_xnnpack_node.py (the per-node cost docs/speed.md quotes), on tiny settings: a figure
    per op kind. In a child: it sizes the process's threadpool."""
    out = tmp_path / "node.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_xnnpack_node.py"), "--chain", "2",
                          "--calls", "20", "--repeats", "1", "--json", str(out)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    assert sorted(got["ns_per_node"]) == ["add", "fully_connected", "multiply", "sigmoid"]
    assert got["one_node_program_us"] > 0 and "ns per node" in res.stdout


def test_meki_parts_benchmark_runs(tmp_path):
    """benchmarks/bench_meki_parts.py (docs/speed.md's cost of each part of the MeKi branch) on the fake
    preset, tiny settings: five programs, each part adding nodes, a figure per part. In a child: its
    programs size the process's threadpool."""
    from pipeline.checkpoint import save_checkpoint
    from tests.model.helpers import trained_like_model

    save_checkpoint(trained_like_model(), tmp_path / "ck")
    out = tmp_path / "parts.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_meki_parts.py"), "--checkpoint",
                          str(tmp_path / "ck"), "--quant", "none", "--rounds", "2", "--prompt-len", "4",
                          "--new-tokens", "4", "--max-seq-len", "64", "--prefill-len", "8", "--no-callgrind",
                          "--work", str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    nodes = {n: sum(v for k, v in ops.items() if k.startswith("xnn:")) for n, ops in got["ops"].items()}
    assert nodes["dense"] < nodes["out"] < nodes["out+norm"] < nodes["full"]
    assert nodes["out"] < nodes["gate+out"] < nodes["full"]
    assert sorted(got["parts_us"]) == ["gate", "interaction", "norm", "row + out"]
    assert got["host"]["kind"] == "host" and got["host"]["cpus"] >= 1 and "host: " in res.stdout  # whose figures
    assert all(len(r) == 2 for r in got["rounds"].values()) and "each part of the branch adds" in res.stdout
    assert "outside" not in got["ops"] and "outside" not in got["parts_us"]  # only asked for
    # another prefill length: every program exported again for it; the fold (same source) kept; with
    # --outside a sixth program leaves the delegate where the branch is: one more delegate call a layer
    work = tmp_path / "work" / "ck"
    folded_key = (work / "folded" / "built-for.json").stat().st_mtime_ns
    res = subprocess.run([*res.args[:res.args.index("--prefill-len")], "--prefill-len", "6",
                          *res.args[res.args.index("--prefill-len") + 2:], "--outside"], capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr
    keys = [json.loads((work / "none" / n / "built-for.json").read_text()) for n in got["ops"]]
    assert len(keys) == 5 and all(k["prefill_len"] == 6 and k["max_seq_len"] == 64 for k in keys)
    assert (work / "folded" / "built-for.json").stat().st_mtime_ns == folded_key
    again = json.loads(out.read_text())
    ops, layers = again["ops"], again["layers"]
    assert ops["outside"]["<delegate>"] == ops["dense"]["<delegate>"] + layers
    assert ops["outside"]["aten::flip"] == layers and "a fused kernel's floor" in res.stdout
