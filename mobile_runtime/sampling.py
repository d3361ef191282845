"""Next-token choice from logits: greedy, or temperature with top-k / top-p, seeded; optional repetition
penalty over the last tokens (llama.cpp's --repeat-penalty / --repeat-last-n)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64  # generated tokens, the first (from prefill) included
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens (0: all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p
    seed: int = 0  # numpy Generator seed: the same seed gives the same text
    stop_ids: tuple[int, ...] = ()  # generation ends after emitting one of these
    repeat_penalty: float = 1.0  # > 1: tokens among the last repeat_last_n are made less likely (1: off)
    repeat_last_n: int = 64  # how many of the latest tokens (prompt included) the penalty looks at

    def __post_init__(self) -> None:
        if (self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1
                or not self.repeat_penalty > 0 or self.repeat_last_n < 0):
            raise ValueError(f"invalid sampling settings: {self}")


def penalize(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """CTRL's repetition penalty as llama.cpp applies it: each distinct recent token's logit is divided
    by `penalty` when positive and multiplied by it when negative."""
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < logits.size)]
    z = logits[ids]
    with np.errstate(over="ignore"):  # a tiny penalty: the largest finite value, as the C++ runner clamps
        fmax = np.finfo(np.float64).max
        logits[ids] = np.clip(np.where(z > 0, z / penalty, z * penalty), -fmax, fmax)
    return logits


def sample(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator, recent: Sequence[int] = ()) -> int:
    """logits: [1, V] or [V] -> token id. recent: the tokens so far (only the last repeat_last_n count)."""
    logits = np.array(logits, dtype=np.float64).reshape(-1)  # a copy: the penalty writes into it
    if cfg.repeat_penalty != 1.0 and cfg.repeat_last_n and len(recent):
        penalize(logits, recent[-cfg.repeat_last_n:], cfg.repeat_penalty)
    if cfg.temperature == 0:
        return int(logits.argmax())
    with np.errstate(over="ignore"):
        scaled = logits / cfg.temperature
    if not np.isfinite(scaled).all():  # a temperature so small it overflows: its limit, greedy (as the C++ runner)
        return int(logits.argmax())
    logits = scaled
    if cfg.top_k and cfg.top_k < logits.size:  # top-k past the vocabulary keeps every token
        kth = np.partition(logits, -cfg.top_k)[-cfg.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if cfg.top_p < 1:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < cfg.top_p  # always keeps the top token
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))
