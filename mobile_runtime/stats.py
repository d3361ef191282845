"""The JSON stats of one run: the same fields from the Python loop, the native runner and the app.

Schema: contract/stats.schema.json.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import contract
from mobile_runtime.memory import MemorySnapshot

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
    prefill_s: float  # the prefill backbone calls and their lookups alone
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
    def build(cls, *, runner: str, bundle: str, target: str, memory: str, prompt_tokens: int, tokens: list[int],
              stop_reason: str, ttft_s: float, prefill_s: float, decode_s: float, decode_step_s: list[float],
              exposed_lookup_s: list[float], lookup_total_s: float, start: MemorySnapshot, end: MemorySnapshot,
              text: str | None) -> "RunStats":
        """Stats from plain measurements (derived rates and fractions computed here, once)."""
        steps = len(tokens) - 1  # the first token came from prefill
        exposed = sum(exposed_lookup_s)
        return cls(runner=runner, bundle=bundle, target=target, memory=memory, prompt_tokens=prompt_tokens,
                   generated_tokens=len(tokens), stop_reason=stop_reason, ttft_s=ttft_s, prefill_s=prefill_s,
                   prefill_tok_s=prompt_tokens / prefill_s if prefill_s > 0 else 0.0, decode_s=decode_s,
                   decode_tok_s=steps / decode_s if steps and decode_s > 0 else 0.0,
                   decode_step_median_s=statistics.median(decode_step_s) if decode_step_s else 0.0,
                   exposed_lookup_s=list(exposed_lookup_s), exposed_lookup_total_s=exposed,
                   exposed_lookup_fraction=exposed / decode_s if decode_s > 0 else 0.0,
                   lookup_total_s=lookup_total_s, rss_start_bytes=start.rss_bytes, rss_end_bytes=end.rss_bytes,
                   rss_peak_bytes=end.rss_peak_bytes, rss_anon_bytes=end.rss_anon_bytes,
                   rss_file_bytes=end.rss_file_bytes, pack_resident_bytes=end.pack_resident_bytes, tokens=tokens,
                   text=text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        from contract.atomic import atomic_write_text  # a full disk leaves the old file, not half a JSON

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


class StatsError(ValueError):
    """A stats file that does not match stats.schema.json (conformance/CHECKS.md: stats.schema)."""

    check = "stats.schema"


def load_stats(path: Path) -> dict[str, Any]:
    """Read and validate a stats JSON file (any runner's); raises StatsError naming the problem."""
    import jsonschema

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StatsError(f"{path}: cannot read stats JSON ({e})") from None
    schema = json.loads(SCHEMA_PATH.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = "/".join(map(str, errors[0].path)) or "(top)"
        raise StatsError(f"{path}: stats do not match the schema: {where}: {errors[0].message}")
    return data
