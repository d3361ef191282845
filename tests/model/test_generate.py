"""The Python generation loop over a real ExecuTorch bundle: tokens equal eager greedy, stats valid."""

import json

import jsonschema
import numpy as np
import pytest

from mobile_runtime.generate import Generator
from mobile_runtime.sampling import SamplingConfig, sample
from mobile_runtime.stats import SCHEMA_PATH
from pipeline.export.verify import eager_runner, greedy_trace, reference_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
@pytest.mark.parametrize("kind", ["meki", "dense"])
def test_loop_matches_eager_greedy_and_writes_valid_stats(bundles, kind, tmp_path):
    out, _ = bundles
    gen = Generator(out / kind)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]  # longer than prefill_len=8: two prefill chunks
    stats = gen.generate(prompt, SamplingConfig(max_new_tokens=24))
    lookup = (lambda t: gen.pack.lookup(t.reshape(-1))[None]) if gen.pack else (lambda t: None)
    ref_tokens, _ = greedy_trace(eager_runner(reference_model(gen.manifest, out.parent / "ck"), 64), prompt, 24, 8, lookup)
    assert stats.tokens == ref_tokens
    data = stats.to_dict()
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    assert len(data["exposed_lookup_s"]) == (23 if kind == "meki" else 0)
    assert data["rss_peak_bytes"] >= data["rss_end_bytes"] > 0


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_lookup_modes_give_the_same_tokens(bundles):
    out, _ = bundles
    prompt, cfg = [3, 1, 4, 1, 5, 9, 2, 6], SamplingConfig(max_new_tokens=16)
    gens = {mode: Generator(out / "meki", lookup=mode) for mode in ("prefetch", "thread", "sync")}
    cold = Generator(out / "meki")  # as if the pack were not in memory: every row through the worker
    cold.pack.read_now = lambda token, out: False
    gens["prefetch-cold"] = cold
    runs = {mode: gen.generate(prompt, cfg) for mode, gen in gens.items()}
    assert runs["prefetch"].tokens == runs["thread"].tokens == runs["sync"].tokens == runs["prefetch-cold"].tokens
    assert all(len(r.exposed_lookup_s) == 15 for r in runs.values())
    # the pack was in memory (page cache): prefetch read it on the loop's thread, no worker competing
    assert gens["prefetch"].pack._pool is None and cold.pack._pool is not None
    with pytest.raises(ValueError, match="lookup"):
        Generator(out / "meki", lookup="eager")


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_decode_steps_of_two_bundles_interleaved_match_their_own_runs(bundles):
    """What bench_overhead's paired Python loop relies on: two bundles stepped alternately in one process
    give each the tokens of its own generate(); the steps end where the KV cache does."""
    out, _ = bundles
    prompt, cfg = [3, 1, 4, 1, 5, 9, 2, 6], SamplingConfig(max_new_tokens=12)
    gens = {kind: Generator(out / kind) for kind in ("meki", "dense")}
    want = {kind: g.generate(prompt, cfg).tokens for kind, g in gens.items()}
    steps, got = {}, {}
    for kind, g in gens.items():
        rng = np.random.default_rng(cfg.seed)
        got[kind] = [sample(g.prefill(prompt), cfg, rng, prompt)]
        steps[kind] = g.decode_steps(got[kind][0], len(prompt), cfg, rng, prompt + got[kind])
    for _ in range(cfg.max_new_tokens - 1):
        for kind in gens:
            got[kind].append(next(steps[kind]))
    assert got == want
    left = gens["dense"].backbone.max_seq_len - len(prompt) - (cfg.max_new_tokens - 1)
    assert sum(1 for _ in steps["dense"]) == left


def test_sampling_is_seeded_and_respects_top_k():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    cfg = SamplingConfig(temperature=1.0, top_k=2, seed=0)
    draws = [sample(logits, cfg, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same token
    rng = np.random.default_rng(0)
    assert {sample(logits, cfg, rng) for _ in range(200)} == {2, 3}
    assert {sample(logits, SamplingConfig(temperature=1.0, top_p=0.35), rng) for _ in range(50)} == {3}
    assert sample(logits, SamplingConfig(), rng) == 3
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)


@pytest.mark.parametrize("penalty,last_n,logits,history,want", [
    (1.1, 64, [2.0, 1.9, -3.0], [0], 1),  # a positive logit is divided
    (1.1, 64, [-1.0, -1.05], [0], 1),  # a negative one multiplied
    (1.0, 64, [2.0, 1.9], [0], 0),  # 1: off
    (1.1, 1, [2.0, 1.9], [0, 1], 0),  # only the last n count
    (1.1, 64, [2.0, 1.6], [0, 0, 0], 0),  # each token once, however often it occurred
    (1.1, 64, [2.0, 1.9], [7, -1], 0),  # ids outside the vocabulary ignored
])
def test_repeat_penalty_as_llama_cpp(penalty, last_n, logits, history, want):
    # the same cases as android_app's SamplerTest.java; the C++ sampler is checked against this one in
    # tests/model/test_native_runner.py (same tokens with --repeat-penalty)
    cfg = SamplingConfig(repeat_penalty=penalty, repeat_last_n=last_n)
    assert sample(np.array(logits), cfg, np.random.default_rng(0), history) == want
    with pytest.raises(ValueError):
        SamplingConfig(repeat_penalty=0)


def test_sampling_at_the_edges_of_its_settings():
    """A temperature or repetition penalty so small that dividing by it overflows gives the limit (greedy;
    the largest finite logit) without numpy warnings; a top-k past the vocabulary keeps every token."""
    import warnings
    logits = np.array([[0.5, 3.0, -1.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sample(logits, SamplingConfig(temperature=1e-320), np.random.default_rng(0)) == 1
        assert sample(logits, SamplingConfig(repeat_penalty=1e-320), np.random.default_rng(0), recent=[0]) in (0, 1)
        got = {sample(logits, SamplingConfig(temperature=1.0, top_k=5), np.random.default_rng(s)) for s in range(64)}
    assert got == {0, 1, 2, 3}
