"""Text generation over a bundle: lookup -> prefill -> decode_one -> decode_n -> generate.

The MeKi rows of a token are keyed by its id alone, so the pack read for the next step is issued
the moment a token is sampled and runs while the loop does its bookkeeping (stop check, streaming
detokenisation); `collect` just before the backbone call records how long the loop really waited.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Callable

import numpy as np

from mobile_runtime.backends import open_runner
from contract.manifest import BundleError, verify_bundle
from mobile_runtime.memory import memory_snapshot
from mobile_runtime.pack import PrefetchHandle
from mobile_runtime.row_cache import RowCache
from mobile_runtime.sampling import SamplingConfig, sample
from mobile_runtime.stats import RunStats
from mobile_runtime import threads

BACKENDS = {"executorch": "executorch-xnnpack", "litert": "tflite", "qnn-sim": "tflite-qnn"}
# How a decode step's pack rows are read (benchmarks/bench_prefetch.py compares them):
#   prefetch  the moment a token is sampled: rows decoded for an earlier step from the loop's RowCache
#             (a dict lookup); rows at hand (pack LRU or OS page cache, probed without waiting) read on
#             this thread (~10 us); only rows that would wait for storage go to the worker thread, which
#             then waits on I/O, not on a core: a worker decoding rows while the backbone runs competes
#             with XNNPACK's threads (on the 2-core demo machine that cost ~10% of a step)
#   thread    every row by the worker;   sync  every row on this thread just before the step
LOOKUPS = ("prefetch", "thread", "sync")


@dataclass
class StepTimes:
    decode_step_s: list[float] = field(default_factory=list)
    exposed_lookup_s: list[float] = field(default_factory=list)
    lookup_total_s: float = 0.0


@dataclass
class _Issued:
    """A decode row read started at sampling time: rows read then, or the worker's handle."""
    rows: np.ndarray | None
    handle: PrefetchHandle | None
    issue_s: float  # spent on this thread at issue time (the read itself, or the hand-off)


class Generator:
    """One bundle, one backbone, one memory pack; `generate` runs one prompt."""

    def __init__(self, bundle: Path, backend: str = "executorch", pack_mode: str = "pread",
                 cache_bytes: int = 8 << 20, check_hashes: bool = True, lookup: str = "prefetch",
                 row_cache_bytes: int = 4 << 20, decode_threads: str = "auto") -> None:
        """decode_threads: auto | pool | calling, where XNNPACK runs decode steps (mobile_runtime/threads.py)."""
        if lookup not in LOOKUPS:
            raise ValueError(f"lookup must be one of {', '.join(LOOKUPS)}, got {lookup!r}")
        threads.check_setting(decode_threads)  # before the bundle's files are read
        self.bundle = Path(bundle)
        self.lookup_mode = lookup
        # decoded rows are the prefetch mode's; thread/sync stay what bench_prefetch.py compares
        self.row_cache = RowCache(row_cache_bytes if lookup == "prefetch" else 0)
        target = BACKENDS.get(backend, backend)
        self.manifest = verify_bundle(self.bundle, check_hashes)  # sizes always; sha256 unless told not to
        self.backbone = self.manifest.backbone(target)
        self.runner = open_runner(self.bundle, self.backbone,
                                  threads.decode_on_calling_thread(decode_threads, self.manifest.config))
        self.pack = None
        if self.manifest.memory_pack is not None:   # fingerprint and dimensions checked against the manifest
            from mobile_runtime.bundle_pack import open_bundle_pack

            self.pack = open_bundle_pack(self.bundle, self.manifest, mode=pack_mode, cache_bytes=cache_bytes)
        self.tokenizer = None
        if self.manifest.tokenizer is not None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.bundle / self.manifest.tokenizer.file))
        self.times = StepTimes()

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise BundleError(f"bundle {self.manifest.name!r} has no tokenizer: pass token ids")
        return self.tokenizer.encode(prompt).ids

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    def lookup(self, tokens: np.ndarray) -> np.ndarray | None:
        """tokens [1, T] -> rows [1, T, L, m] (None for a dense bundle)."""
        if self.pack is None:
            return None
        t0 = time.perf_counter()
        rows = self.pack.lookup(tokens.reshape(-1))[None]
        self.times.lookup_total_s += time.perf_counter() - t0
        return rows

    def prefill(self, prompt: list[int]) -> np.ndarray:
        """Feed the prompt in chunks of prefill_len (the last chunk may be shorter); logits [1, V]."""
        step = self.backbone.prefill_len
        for start in range(0, len(prompt), step):
            chunk = np.array([prompt[start:start + step]], dtype=np.int64)
            logits = self.runner.step("prefill", chunk, np.arange(start, start + chunk.shape[1]), self.lookup(chunk))
        return logits

    def decode_one(self, token: int, pos: int, rows: np.ndarray | None) -> np.ndarray:
        t0 = time.perf_counter()
        logits = self.runner.step("decode", np.array([[token]], dtype=np.int64), np.array([pos], dtype=np.int64), rows)
        self.times.decode_step_s.append(time.perf_counter() - t0)
        return logits

    def decode_n(self, first: int, pos: int, cfg: SamplingConfig, rng: np.random.Generator,
                 on_token: Callable[[int], None], prompt_ids: Sequence[int] = ()) -> tuple[list[int], str]:
        """Greedy/sampled decoding from `first` at position `pos`; returns (tokens, stop reason)."""
        out, token = [first], first
        steps = self.decode_steps(first, pos, cfg, rng, list(prompt_ids) + out)
        while True:
            on_token(token)  # bookkeeping overlaps the pack read decode_steps issued
            if token in cfg.stop_ids:
                return out, "eos"
            if len(out) >= cfg.max_new_tokens:
                return out, "max_tokens"
            token = next(steps, None)
            if token is None:
                return out, "max_seq_len"
            out.append(token)

    def decode_steps(self, token: int, pos: int, cfg: SamplingConfig, rng: np.random.Generator,
                     history: list[int]) -> Iterator[int]:
        """The tokens after `token` (at position `pos`), one backbone step per next(), until the KV cache
        is full. Each step's pack read is issued when the previous token is sampled (here, before the
        first next()), so whatever the caller does between next() calls overlaps it. `history` (what the
        repetition penalty looks back on) is extended with every token."""
        return self._steps(token, pos, cfg, rng, history, self._issue(token))

    def _steps(self, token: int, pos: int, cfg: SamplingConfig, rng: np.random.Generator, history: list[int],
               issued: _Issued | None) -> Iterator[int]:
        while pos < self.backbone.max_seq_len:
            rows = self._rows(token, issued)
            token = sample(self.decode_one(token, pos, rows), cfg, rng, history)
            pos += 1
            history.append(token)
            issued = self._issue(token)
            yield token

    def _issue(self, token: int) -> _Issued | None:
        """Start reading token's rows the way LOOKUPS says; None: read them at the step."""
        if self.pack is None or self.lookup_mode == "sync" or token in self.row_cache:
            return None
        t0 = time.perf_counter()
        if self.lookup_mode == "prefetch":
            rows = np.empty((1, 1, self.pack.num_layers, self.pack.d_mem), np.float32)
            if self.pack.read_now(token, rows[0, 0]):
                return _Issued(rows, None, time.perf_counter() - t0)
        return _Issued(None, self.pack.prefetch([token]), time.perf_counter() - t0)

    def _rows(self, token: int, issued: _Issued | None) -> np.ndarray | None:
        """The decode rows [1, 1, L, m] of token; the time the loop spent on them is recorded."""
        if self.pack is None:
            return None
        if issued is not None:
            rows, waited = issued.rows, 0.0
            if issued.handle is not None:
                rows, waited = self.pack.collect(issued.handle)[None], issued.handle.waited_s
            self.times.exposed_lookup_s.append(issued.issue_s + waited)
            return self.row_cache.put(token, rows)
        t0 = time.perf_counter()
        rows = self.row_cache.get(token)
        if rows is None:
            rows = self.row_cache.put(token, self.pack.lookup([token])[None])
        self.times.exposed_lookup_s.append(time.perf_counter() - t0)
        return rows

    def generate(self, prompt_ids: list[int], cfg: SamplingConfig,
                 on_text: Callable[[str], None] | None = None) -> RunStats:
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) + cfg.max_new_tokens > self.backbone.max_seq_len:
            raise ValueError(f"prompt ({len(prompt_ids)}) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
                             f"bundle's KV cache ({self.backbone.max_seq_len})")
        self.times = StepTimes()
        rng = np.random.default_rng(cfg.seed)
        mem_start = memory_snapshot(self.pack)
        t0 = time.perf_counter()
        logits = self.prefill(prompt_ids)
        prefill_s = time.perf_counter() - t0
        first = sample(logits, cfg, rng, prompt_ids)
        ttft = time.perf_counter() - t0
        streamed = _Streamer(self, on_text)
        t1 = time.perf_counter()
        tokens, reason = self.decode_n(first, len(prompt_ids), cfg, rng, streamed.push, prompt_ids)
        decode_s = time.perf_counter() - t1
        times, mem_end = self.times, memory_snapshot(self.pack)
        return RunStats.build(
            runner="python", bundle=self.manifest.name, target=self.backbone.target, memory=self.manifest.memory,
            prompt_tokens=len(prompt_ids), tokens=tokens, stop_reason=reason, ttft_s=ttft, prefill_s=prefill_s,
            decode_s=decode_s, decode_step_s=times.decode_step_s, exposed_lookup_s=times.exposed_lookup_s,
            lookup_total_s=times.lookup_total_s, start=mem_start, end=mem_end,
            text=self.decode_text(tokens) if self.tokenizer is not None else None)


class _Streamer:
    """Streams text as tokens arrive; decodes the whole tail so multi-byte characters come out whole."""

    def __init__(self, gen: Generator, on_text: Callable[[str], None] | None) -> None:
        self.gen, self.on_text, self.ids, self.sent = gen, on_text, [], ""

    def push(self, token: int) -> None:
        self.ids.append(token)
        if self.on_text is None or self.gen.tokenizer is None:
            return
        text = self.gen.decode_text(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self.on_text(text[len(self.sent):])
        self.sent = text
