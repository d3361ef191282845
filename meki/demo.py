"""`meki demo`: the main job end to end on the embedded demo models, ending in one comparison table.

models/demo/meki (a small trained MeKi model) and models/demo/dense (its dense twin, same backbone)
are folded, packed (int8), lowered to executorch-xnnpack with 8da4w-h8 weights (int4 body, int8 LM
head), verified against eager PyTorch, scored on held-out text through the exported bundles themselves (`meki eval` on a fixed
slice of models/demo/heldout), and run on this machine through the device harness's local
transport, the same path a phone run takes. The last screen: perplexity, prefill/decode speed and
resident memory of MeKi vs dense with their ratios, then both models' text for the same prompt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.console import Console
from rich.table import Table

from pipeline.evaluate import EvalConfig, evaluate_bundle
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from pipeline.export.verify import verify_bundle_artifacts
from contract.atomic import check_free

if TYPE_CHECKING:
    from device_tests.results import BenchResult

console = Console()
DEMO_MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
PROMPT = "The function returns"
TARGET = "executorch-xnnpack"
BENCH_TOKENS = 128  # decoded per measured run
TEXT_REPEAT_PENALTY = 1.3  # greedy + llama.cpp's repetition penalty over the last 64 tokens
QUANT = "8da4w-h8"  # int4 body, int8 LM head: the whole export costs MeKi < 1% perplexity
EVAL_SLICE = EvalConfig(windows=16, window_len=128)  # fixed: 2,048 held-out tokens, same for both
ROWS = (("decode_tok_s", "decode (tok/s)"), ("prefill_tok_s", "prefill (tok/s)"),
        ("rss_anon_mib", "resident anon (MiB)"), ("rss_file_mib", "resident file (MiB)"))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters and runtimes warn freely (deprecations, torchao notes); the demo shows results."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.level
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
            logging.root.setLevel(level)


def _stage(title: str) -> None:
    console.rule(f"[bold]{title}")


def run_demo(out: Path, prompt: str = PROMPT, new_tokens: int = 48, reps: int = 5, overwrite: bool = False) -> int:
    """export -> verify -> held-out perplexity -> bench both locally -> one table and the two texts."""
    from device_tests.bench import BenchConfig, run_bench

    meki, dense = DEMO_MODELS / "meki", DEMO_MODELS / "dense"
    if not (meki / "checkpoint.json").exists():
        raise FileNotFoundError(f"{meki}: the embedded demo model is missing (run from a clone of the repository)")
    check_free(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    bundles = out / "bundles"
    with _quiet():
        _stage(f"1/4 fold, pack (int8) and lower MeKi and dense to {TARGET} ({QUANT} weights)")
        settings = ExportSettings(quant=QUANT, max_seq_len=256, prefill_len=32)
        export_bundles(meki, bundles, [TARGET], settings, pack_dtype="int8", tokenizer=meki / "tokenizer.json",
                       baseline=dense, overwrite=True)
        _stage("2/4 verify every artifact against eager PyTorch")
        rows = [r for kind, ck in (("meki", meki), ("dense", dense))
                for r in verify_bundle_artifacts(bundles / kind, ck, steps=32)]
        for r in rows:
            console.print(f"  {r.bundle:6s} {r.target}: {r.status} (SNR {r.snr_db:.1f} dB, same greedy tokens "
                          f"for 32 steps: {r.greedy_match})")
        _stage(f"3/4 held-out perplexity through the bundles ({EVAL_SLICE.windows} x {EVAL_SLICE.window_len} tokens)")
        # the artifacts alone (the eager steps before them: `meki eval ... --checkpoint`, printed at the end)
        evals = {kind: evaluate_bundle(bundles / kind, DEMO_MODELS / "heldout", EVAL_SLICE)
                 for kind in ("meki", "dense")}
        ppl = {kind: e.stage(TARGET).ppl for kind, e in evals.items()}
        _stage("4/4 run both on this machine through the device harness (local transport)")
        # each run is a fresh process (as on a phone): startup dominates, so decode 128 tokens per run for a
        # steadier tok/s; no warm-up run (the bundles' files are in the page cache from the export)
        cfg = BenchConfig(devices=["local"], runner="python", new_tokens=BENCH_TOKENS, warmup=0, reps=reps)
        result = run_bench([bundles / "meki", bundles / "dense"], cfg, out / "bench")
        texts = {kind: _generate(bundles / kind, prompt, new_tokens) for kind in ("meki", "dense")}
    console.print(_summary_table(result, ppl))
    for kind in ("meki", "dense"):
        console.print(f"[bold]{kind:5s}[/bold] {texts[kind]!r}")
    console.print(f"everything is under {out}/ (bundles/, bench/bench.md, bench/bench.json); "
                  f"every export step's loss: meki eval {bundles}/meki {bundles}/dense --data {DEMO_MODELS / 'heldout'} "
                  f"--checkpoint {meki} --checkpoint {dense}")
    return 0 if all(r.status == "pass" for r in rows) and all(d.status == "ok" for d in result.devices) else 1


def _summary_table(result: "BenchResult", ppl: dict[str, float]) -> Table:
    rep = result.devices[0]
    table = Table(title=f"MeKi vs dense, {TARGET} {QUANT} + int8 pack, on {rep.device} "
                        f"(speed and memory: median of {rep.summary.get('meki', {}).get('runs', 0)} runs)")
    for col in ("", "MeKi", "dense", "MeKi / dense"):
        table.add_column(col, justify="right")
    table.add_row("held-out perplexity", f"{ppl['meki']:.2f}", f"{ppl['dense']:.2f}", f"{ppl['meki'] / ppl['dense']:.3f}")
    for metric, label in ROWS:
        m, d = rep.summary.get("meki", {}).get(metric), rep.summary.get("dense", {}).get(metric)
        ratio = rep.ratios.get(metric)
        table.add_row(label, _median(m), _median(d), "-" if ratio is None else f"{ratio:.3f}")
    return table


def _median(spread: dict | None) -> str:
    return "-" if not spread else f"{spread['median']:.1f}"


def _generate(bundle: Path, prompt: str, new_tokens: int) -> str:
    """Greedy text from the bundle with the Python loop (the harness runs use fixed token ids), with a
    repetition penalty: plain greedy decoding loops on a model this small ("The function returns the
    number of arguments to the function." over and over), for MeKi and dense alike."""
    from mobile_runtime.generate import Generator
    from mobile_runtime.sampling import SamplingConfig

    gen = Generator(bundle)
    stop = tuple(gen.manifest.tokenizer.eos_token_ids)
    stats = gen.generate(gen.encode(prompt), SamplingConfig(max_new_tokens=new_tokens, stop_ids=stop,
                                                                 repeat_penalty=TEXT_REPEAT_PENALTY))
    return prompt + stats.text
