"""The native runner (mobile_runtime/native): builds here, reads the golden packs exactly, generates
the same greedy tokens as the Python loop on a real ExecuTorch bundle, writes valid stats, and
refuses a damaged pack with a clear message and a non-zero exit."""

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from mobile_runtime.generate import Generator
from mobile_runtime.sampling import SamplingConfig
from mobile_runtime.stats import SCHEMA_PATH

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "conformance" / "golden"
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]  # longer than prefill_len=8: two prefill chunks


@pytest.fixture(scope="module")
def native() -> Path:
    """Build (or bring up to date) the runner under build/native (git-ignored, kept between runs)."""
    out = subprocess.run([str(REPO / "mobile_runtime" / "native" / "build.sh"), str(REPO / "build" / "native")],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def run_native(native: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(native / "meki_runner"), str(bundle), "--quiet", *args],
                          capture_output=True, text=True, timeout=300)


def test_golden_vectors(native):
    res = subprocess.run([str(native / "pack_golden_check"), str(GOLDEN)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    packs = json.loads((GOLDEN / "pack_golden.json").read_text())["packs"]
    assert res.stdout.count("ok ") == 2 * len(packs)  # pread and mmap per pack


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
@pytest.mark.parametrize("kind,penalty", [("meki", 1.0), ("dense", 1.0), ("meki", 1.3)])
def test_native_tokens_match_python_loop(native, bundles, kind, penalty, tmp_path):
    out, _ = bundles
    stats_path = tmp_path / "stats.json"
    res = run_native(native, out / kind, "--prompt-ids", ",".join(map(str, PROMPT)), "--max-new-tokens", "24",
                     "--stats", str(stats_path), "--repeat-penalty", str(penalty), "--repeat-last-n", "8")
    assert res.returncode == 0, res.stderr
    stats = json.loads(stats_path.read_text())
    jsonschema.validate(stats, json.loads(SCHEMA_PATH.read_text()))
    python = Generator(out / kind).generate(PROMPT, SamplingConfig(max_new_tokens=24, repeat_penalty=penalty,
                                                                    repeat_last_n=8))
    assert stats["tokens"] == python.tokens
    assert (stats["runner"], stats["generated_tokens"], stats["stop_reason"]) == ("native", 24, "max_tokens")
    assert len(stats["exposed_lookup_s"]) == (23 if kind == "meki" else 0)
    assert stats["rss_peak_bytes"] >= stats["rss_end_bytes"] > 0 and stats["decode_tok_s"] > 0
    assert (stats["pack_resident_bytes"] > 0) == (kind == "meki")


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
@pytest.mark.parametrize("mode", [[], ["--whole-runs"]])
def test_runner_ab_takes_turns_without_mixing_the_bundles(native, bundles, mode):
    """runner_ab (bench_overhead's paired native figure) runs meki_runner's loop over two bundles in one
    process: each gets its own greedy tokens, every round, whichever bundle starts."""
    out, _ = bundles
    ids = ",".join(map(str, PROMPT))
    res = subprocess.run([str(native / "runner_ab"), str(out / "dense"), str(out / "meki"), "--prompt-ids", ids,
                          "--max-new-tokens", "12", "--rounds", "2", *mode], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rounds = [json.loads(line) for line in res.stdout.splitlines()]
    want = {side: Generator(out / kind).generate(PROMPT, SamplingConfig(max_new_tokens=12)).tokens
            for side, kind in (("a", "dense"), ("b", "meki"))}
    assert [r["first"] for r in rounds] == ["a", "b"]
    for r in rounds:
        for side in "ab":
            assert r[side]["tokens"] == want[side] and r[side]["decode_steps"] == 11
            assert r[side]["decode_s"] > 0 and r[side]["prefill_s"] > 0
    bad = subprocess.run([str(native / "runner_ab"), str(out / "dense"), "--prompt-ids", ids], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "two bundles" in bad.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (make system-deps)")
@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_step_bench_counts_the_cold_prefill_apart(native, bundles, monkeypatch):
    """bench_overhead's instruction counts: callgrind dumps the warm-up's prefill ("first_prefill": XNNPACK's
    first reshape and workspace set-up included) apart from the measured generation's two phases; the
    warm-up changes nothing the measured generation computes."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from overhead_lib import Program, callgrind_phases

    pte = bundles[0] / "dense" / "model_xnnpack.pte"
    counted = callgrind_phases(native / "step_bench", Program("dense", pte, []), 6, 5)
    plain = subprocess.run([str(native / "step_bench"), str(pte), "6", "5", "--single-thread"], check=True,
                           capture_output=True, text=True)
    assert counted["tokens"] == json.loads(plain.stdout.splitlines()[-1])["tokens"]
    assert counted["decode_steps"] == 4 and counted["decode_instr"] > 0
    assert counted["first_prefill_instr"] > counted["prefill_instr"] > 0  # the cold call pays the set-up


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_pack_lookup_modes_and_warmup_agree(native, bundles, tmp_path):
    out, _ = bundles
    tokens = []
    runs = (("pread", "8", "0", "prefetch"), ("pread", "0", "0", "prefetch"), ("mmap", "0", "0", "prefetch"),
            ("pread", "8", "5", "prefetch"), ("pread", "8", "0", "thread"), ("pread", "8", "0", "sync"),
            ("pread", "8", "0", "sync", "--single-thread"))
    for mode, cache, warmup, lookup, *extra in runs:
        path = tmp_path / f"{mode}-{cache}-{warmup}-{lookup}-{len(extra)}.json"
        res = run_native(native, out / "meki", "--prompt-ids", "7,8,9", "--max-new-tokens", "12", "--pack-mode", mode,
                         "--cache-mib", cache, "--warmup", warmup, "--lookup", lookup, *extra, "--stats", str(path))
        assert res.returncode == 0, res.stderr
        tokens.append(json.loads(path.read_text())["tokens"])
    assert all(t == tokens[0] for t in tokens)  # a warm-up run leaves no trace in the next


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_damaged_pack_is_refused(native, bundles, tmp_path):
    out, _ = bundles
    bad = tmp_path / "bad"
    shutil.copytree(out / "meki", bad)
    pack = bad / "tables.mekipack"
    with open(pack, "r+b") as fh:  # flip one byte of data block 0: same size, wrong checksum
        fh.seek(16384 + 5)
        byte = fh.read(1)[0]
        fh.seek(16384 + 5)
        fh.write(bytes([byte ^ 0xFF]))
    res = run_native(native, bad, "--prompt-ids", "0,1,2", "--max-new-tokens", "4")
    assert res.returncode == 3 and "block_checksum" in res.stderr and "data block 0" in res.stderr, res.stderr

    with open(pack, "r+b") as fh:
        fh.truncate(pack.stat().st_size - 8)
    res = subprocess.run([str(native / "pack_golden_check"), "--verify", str(pack)], capture_output=True, text=True)
    assert res.returncode == 3 and "(truncated)" in res.stderr, res.stderr
    res = run_native(native, bad, "--prompt-ids", "0,1,2", "--max-new-tokens", "4")
    assert res.returncode == 2 and "tables.mekipack" in res.stderr and "manifest says" in res.stderr, res.stderr


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_bad_requests_exit_with_a_message(native, bundles):
    out, _ = bundles
    res = run_native(native, out / "dense", "--prompt-ids", "1,2", "--max-new-tokens", "100")
    assert res.returncode == 2 and "exceeds the bundle's KV cache (64)" in res.stderr
    res = run_native(native, out / "dense", "--prompt", "hello")
    assert res.returncode == 2 and "--prompt-ids" in res.stderr
    res = run_native(native, out / "dense", "--prompt-ids", "1", "--backend", "tflite")
    assert res.returncode == 2 and "no backbone for target 'tflite'" in res.stderr


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
@pytest.mark.parametrize("args,text", [
    (["--max-new-tokens", "9223372036854775807"], "--max-new-tokens '9223372036854775807': expected an integer"),
    (["--max-new-tokens", "5abc"], "--max-new-tokens '5abc'"),      # no leading-number reads (5)
    (["--max-new-tokens", "2.9"], "--max-new-tokens '2.9'"),
    (["--temperature", "nan"], "--temperature 'nan': expected a finite number"),
    (["--repeat-penalty", "inf"], "--repeat-penalty 'inf'"),
    (["--cache-mib", "1e30"], "--cache-mib '1e30'"),
    (["--seed", "-1"], "--seed '-1'"),                                # no wrap to 2^64 - 1
    (["--prompt-ids", "3,,1"], "bad token id '' in --prompt-ids"),
    (["--prompt-ids", "3,99999999999999999999"], "bad token id '99999999999999999999'"),
    (["--prompt-ids", "3,128"], "prompt token id 128 is outside the vocabulary [0, 128)"),
    (["--warmup", "64"], "--warmup 64 with a 2-token prompt exceeds the bundle's KV cache"),
    (["--stats", "/dev/null"], "--stats /dev/null exists and is not a regular file"),  # rename would replace it
    (["--stats", "{tmp}/nope/s.json"], "nope is not a folder"),
])
def test_runner_flags_are_read_whole_and_checked_first(native, bundles, tmp_path, args, text):
    """Each bad value names its flag, exit 2, before anything runs (the --stats path too)."""
    out, _ = bundles
    argv = ["--prompt-ids", "1,2", "--max-new-tokens", "2", *[a.format(tmp=tmp_path) for a in args]]
    res = run_native(native, out / "dense", *argv)
    assert res.returncode == 2 and text in res.stderr, res.stderr


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_runner_stats_written_beside_under_a_fresh_name(native, bundles, tmp_path):
    """A file planted at the old fixed temporary name (PATH.partial, here a link elsewhere) is not
    written through; the stats replace PATH whole."""
    out, _ = bundles
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    (tmp_path / "s.json.partial").symlink_to(victim)
    res = run_native(native, out / "dense", "--prompt-ids", "1,2", "--max-new-tokens", "2", "--stats",
                     str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == "keep\n"
    assert json.loads((tmp_path / "s.json").read_text())["format"] == "meki-run-stats"
    assert not list(tmp_path.glob(".s.json.partial-*"))


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_runner_refuses_what_the_manifest_rules_refuse(native, bundles, tmp_path):
    """Issue 12, classes 3 and 8: pack dimensions that disagree with the header, a pack at ../,
    a symlinked pack: exit 2 with the CHECKS.md name, before anything runs."""
    out, _ = bundles
    cases = {"d_mem": ("bundle.pack_mismatch", lambda m, b: m["memory_pack"].update(d_mem=m["memory_pack"]["d_mem"] * 2)),
             "dotdot": ("manifest.path", lambda m, b: m["memory_pack"].update(file="../outside/tables.mekipack")),
             "symlink": ("bundle.symlink", lambda m, b: ((b / "tables.mekipack").rename(b / "real.mekipack"),
                                                        (b / "tables.mekipack").symlink_to("real.mekipack")))}
    for name, (check, damage) in cases.items():
        bad = tmp_path / name
        shutil.copytree(out / "meki", bad)
        m = json.loads((bad / "manifest.json").read_text())
        damage(m, bad)
        (bad / "manifest.json").write_text(json.dumps(m))
        res = run_native(native, bad, "--prompt-ids", "0,1,2", "--max-new-tokens", "4")
        assert res.returncode == 2 and f"({check})" in res.stderr, (name, res.stderr)


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_decode_thread_rule_is_the_python_runtimes_and_changes_no_token(native, bundles, tmp_path):
    """--decode-threads: decode loaded without XNNPACK's threadpool (calling) or with it (pool); auto
    decides by the manifest's dim x ffn_dim as mobile_runtime/threads.py does, widths unknown: pool.
    The greedy tokens are the same every way, and step_bench's --decode-threads too."""
    from mobile_runtime.threads import decode_on_calling_thread

    out, _ = bundles
    wide = tmp_path / "wide"  # the same program, a manifest that says Qwen3-0.6B's widths
    shutil.copytree(out / "meki", wide)
    m = json.loads((wide / "manifest.json").read_text())
    m["config"].update(dim=1024, ffn_dim=3072)
    (wide / "manifest.json").write_text(json.dumps(m))
    unknown = tmp_path / "unknown"
    shutil.copytree(out / "meki", unknown)
    m["config"].pop("ffn_dim")
    (unknown / "manifest.json").write_text(json.dumps(m))
    got = {}
    for bundle, setting in ((out / "meki", "auto"), (out / "meki", "pool"), (out / "meki", "calling"), (wide, "auto"),
                            (unknown, "auto")):
        path = tmp_path / f"{bundle.name}-{setting}.json"
        res = run_native(native, bundle, "--prompt-ids", "7,8,9", "--max-new-tokens", "12", "--decode-threads", setting,
                         "--stats", str(path))
        assert res.returncode == 0, res.stderr
        stats = json.loads(path.read_text())
        config = json.loads((bundle / "manifest.json").read_text())["config"]
        want = "calling" if decode_on_calling_thread(setting, config) else "pool"
        assert stats["x_decode_threads"] == want, (bundle.name, setting)
        got[(bundle.name, setting)] = (want, stats["tokens"])
    assert [w for w, _ in got.values()] == ["calling", "pool", "calling", "pool", "pool"]
    assert all(t == got[("meki", "auto")][1] for _, t in got.values())
    pte = out / "dense" / "model_xnnpack.pte"
    plain, calling = (json.loads(subprocess.run([str(native / "step_bench"), str(pte), "6", "8", *flag], check=True,
                                                capture_output=True, text=True).stdout.splitlines()[-1])["tokens"]
                      for flag in (["--decode-threads", "pool"], ["--decode-threads", "calling"]))
    assert plain == calling
    bad = run_native(native, out / "meki", "--prompt-ids", "1", "--decode-threads", "four")
    assert bad.returncode == 2 and "--decode-threads must be auto, pool or calling, got four" in bad.stderr
