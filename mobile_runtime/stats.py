"""The JSON stats of one run: the same fields from the Python loop, the native runner and the app.

Schema: contract/stats.schema.json.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import contract
from mobile_runtime.memory import MemorySnapshot

if TYPE_CHECKING:
    from mobile_runtime.generate import Generator

SCHEMA_PATH = Path(contract.__file__).with_name("stats.schema.json")


@dataclass
class RunStats:
    runner: str  # python | native | android
    bundle: str
    target: str
    memory: str  # both | static | dynamic | none (dense)
    prompt_tokens: int
    generated_tokens: int
    stop_reason: str  # eos | max_tokens | max_seq_len
    ttft_s: float  # prompt in -> first token out (prefill + first sample)
    prefill_s: float
    prefill_tok_s: float
    decode_s: float  # all decode steps, bookkeeping included
    decode_tok_s: float
    decode_step_median_s: float  # backbone call alone
    exposed_lookup_s: list[float]  # per decode step: how long the loop waited for the pack rows
    exposed_lookup_total_s: float
    exposed_lookup_fraction: float  # exposed lookup / decode time
    lookup_total_s: float  # prefill's synchronous lookups
    rss_start_bytes: int
    rss_end_bytes: int
    rss_peak_bytes: int
    rss_anon_bytes: int
    rss_file_bytes: int
    pack_resident_bytes: int
    tokens: list[int]
    text: str | None
    format: str = "meki-run-stats"
    version: int = 1

    @classmethod
    def build(cls, gen: "Generator", prompt: list[int], tokens: list[int], reason: str, ttft: float,
              decode_s: float, start: MemorySnapshot, end: MemorySnapshot) -> "RunStats":
        steps = len(tokens) - 1  # the first token came from prefill
        exposed = gen.times.exposed_lookup_s
        return cls(runner="python", bundle=gen.manifest.name, target=gen.backbone.target, memory=gen.manifest.memory,
                   prompt_tokens=len(prompt), generated_tokens=len(tokens), stop_reason=reason, ttft_s=ttft,
                   prefill_s=ttft, prefill_tok_s=len(prompt) / ttft, decode_s=decode_s,
                   decode_tok_s=steps / decode_s if steps and decode_s > 0 else 0.0,
                   decode_step_median_s=statistics.median(gen.times.decode_step_s) if steps else 0.0,
                   exposed_lookup_s=exposed, exposed_lookup_total_s=sum(exposed),
                   exposed_lookup_fraction=sum(exposed) / decode_s if decode_s > 0 else 0.0,
                   lookup_total_s=gen.times.lookup_total_s, rss_start_bytes=start.rss_bytes,
                   rss_end_bytes=end.rss_bytes, rss_peak_bytes=end.rss_peak_bytes, rss_anon_bytes=end.rss_anon_bytes,
                   rss_file_bytes=end.rss_file_bytes, pack_resident_bytes=end.pack_resident_bytes, tokens=tokens,
                   text=gen.decode_text(tokens) if gen.tokenizer is not None else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        from contract.atomic import atomic_write_text  # a full disk leaves the old file, not half a JSON

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
