"""`python -m mobile_runtime.run BUNDLE ...` (also `meki run`): generate once, stream text, write stats.

This is the Python runner the device harness starts; it needs no pipeline code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mobile_runtime.generate import BACKENDS, LOOKUPS, Generator
from contract.inputs import (nonneg_float, nonneg_int, output_file, positive_float, positive_int, require_bundle,
                             unit_interval)
from contract.manifest import BundleError
from mobile_runtime.sampling import SamplingConfig
from mobile_runtime.threads import DECODE_THREADS


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder (manifest.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text prompt (needs the bundle's tokenizer)")
    src.add_argument("--prompt-ids", help="comma-separated token ids")
    p.add_argument("--backend", default="executorch", help=f"{' | '.join(BACKENDS)} or a target name")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=nonneg_int, default=0)
    p.add_argument("--top-p", type=unit_interval, default=1.0)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--repeat-penalty", type=positive_float, default=1.0,
                   help="> 1 makes tokens among the last --repeat-last-n less likely (1 = off)")
    p.add_argument("--repeat-last-n", type=nonneg_int, default=64)
    p.add_argument("--ignore-eos", action="store_true", help="always decode max-new-tokens (benchmarks)")
    p.add_argument("--pack-mode", choices=["pread", "mmap"], default="pread")
    p.add_argument("--cache-mib", type=nonneg_float, default=8.0, help="LRU cache of hot pack rows")
    p.add_argument("--stats", type=output_file, help="write the run's JSON stats here")
    p.add_argument("--quiet", action="store_true", help="do not stream text to stdout")
    p.add_argument("--lookup", choices=LOOKUPS, default="prefetch",
                   help="decode rows: prefetched by a worker thread unless cached (prefetch), always by the "
                        "worker (thread), or on the decode thread (sync); benchmarks/bench_prefetch.py")
    p.add_argument("--decode-threads", choices=DECODE_THREADS, default="auto",
                   help="where XNNPACK runs decode steps: its threadpool (pool), one thread (calling), or auto: one "
                        "thread for models whose FFN projection (dim x ffn_dim) is under 2^20 multiply-adds; in "
                        "this runtime the choice applies to prefill too (one threadpool per process)")
    p.add_argument("--skip-hash-check", action="store_true", help="trust file sizes, skip sha256 (large bundles)")


def prompt_token_ids(text: str, vocab_size: int) -> list[int]:
    """`--prompt-ids 1,2,3` checked: integers in [0, vocab_size), at least one."""
    if not text.strip():
        raise ValueError("--prompt-ids is empty; give at least one token id")
    items = text.split(",")  # an empty item (1,,2 or a trailing comma) is a typo: refused, as the C++ runner does
    try:
        if not all(x.strip() for x in items):
            raise ValueError
        ids = [int(x) for x in items]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r}: expected comma-separated integers such as 1,2,3") from None
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"--prompt-ids: token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    return ids


def checked_prompt(text: str) -> str:
    """The text prompt as valid UTF-8 (argv bytes that are not UTF-8 arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"--prompt is not valid UTF-8 (position {exc.start}); pass UTF-8 text or --prompt-ids") from None
    if not text:
        raise ValueError("--prompt is empty; give some text or --prompt-ids")
    return text


def run(a: argparse.Namespace) -> int:
    prompt = checked_prompt(a.prompt) if a.prompt is not None else None
    require_bundle(a.bundle)
    gen = Generator(a.bundle, a.backend, a.pack_mode, int(a.cache_mib * (1 << 20)), not a.skip_hash_check,
                    lookup=a.lookup, decode_threads=a.decode_threads)
    vocab = int(gen.manifest.config["vocab_size"])
    ids = prompt_token_ids(a.prompt_ids, vocab) if a.prompt_ids is not None else gen.encode(prompt)
    stop = () if a.ignore_eos or gen.manifest.tokenizer is None else tuple(gen.manifest.tokenizer.eos_token_ids)
    cfg = SamplingConfig(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed, stop, a.repeat_penalty,
                         a.repeat_last_n)
    echo = None if a.quiet else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    stats = gen.generate(ids, cfg, echo)
    if not a.quiet:
        sys.stdout.write("\n")
    if a.stats:
        stats.write(a.stats)
    print(f"[{stats.bundle}] prefill {stats.prefill_tok_s:.1f} tok/s, decode {stats.decode_tok_s:.1f} tok/s, "
          f"exposed lookup {stats.exposed_lookup_fraction:.2%} of decode, peak RSS {stats.rss_peak_bytes >> 20} MiB",
          file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mobile_runtime.run", description=__doc__)
    add_run_args(p)
    a = p.parse_args(argv)
    try:
        return run(a)
    except (BundleError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
