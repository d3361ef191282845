"""Model configuration: one dataclass, named presets, strict JSON load."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MEMORY_KINDS = ("both", "static", "dynamic", "none")
VARIANTS = ("paper", "megatron")


class ConfigError(ValueError):
    """A config that cannot describe a model (unknown key, bad value)."""


@dataclass
class ModelConfig:
    vocab_size: int = 151_680  # V: tokenizer vocabulary (not a padded one)
    num_layers: int = 28  # L: decoder layers
    dim: int = 1024  # d: residual width
    ffn_dim: int = 3072  # SwiGLU hidden width
    num_heads: int = 16  # query heads
    num_kv_heads: int = 8  # key/value heads (GQA groups)
    head_dim: int = 128  # per-head width
    rope_theta: float = 500_000.0  # RoPE base (paper: 500000; stock Qwen3: 1e6)
    norm_eps: float = 1e-6  # RMSNorm epsilon, every norm
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3 has it; the MeKi script does not)
    tie_embeddings: bool = True  # output head shares the input embedding
    max_seq_len: int = 4096  # longest KV cache a preset is meant for
    d_mem: int = 128  # m: memory width per layer
    memory: str = "both"  # MeKi memories: both | static | dynamic | none (dense baseline)
    variant: str = "paper"  # paper (gate sees RMSNorm'd H) | megatron (gate sees raw A, normed G input)
    folded: bool = False  # inference form: tables folded out, rows arrive as an input
    name: str = "custom"  # preset or source name, informational

    def __post_init__(self) -> None:
        problems = []
        if self.memory not in MEMORY_KINDS:
            problems.append(f"memory={self.memory!r} (valid: {', '.join(MEMORY_KINDS)})")
        if self.variant not in VARIANTS:
            problems.append(f"variant={self.variant!r} (valid: {', '.join(VARIANTS)})")
        for key in ("vocab_size", "num_layers", "dim", "ffn_dim", "num_heads", "num_kv_heads", "head_dim"):
            if int(getattr(self, key)) <= 0:
                problems.append(f"{key}={getattr(self, key)} must be positive")
        if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.has_meki and (self.d_mem <= 0 or self.dim % 2):
            problems.append(f"d_mem={self.d_mem} must be positive and dim={self.dim} even for a MeKi branch")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    @property
    def has_meki(self) -> bool:
        return self.memory != "none"

    @property
    def has_static(self) -> bool:
        return self.memory in ("both", "static")

    @property
    def has_dynamic(self) -> bool:
        return self.memory in ("both", "dynamic")

    @property
    def dyn_hidden(self) -> int:
        """Hidden width of the dynamic projection G: d -> d/2 -> m."""
        return self.dim // 2

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)


def fake() -> ModelConfig:
    """2 layers, vocab 128: for unit tests; downloads nothing, runs in milliseconds."""
    return ModelConfig(vocab_size=128, num_layers=2, dim=64, ffn_dim=128, num_heads=4, num_kv_heads=2,
                       head_dim=16, max_seq_len=64, d_mem=16, name="fake")


def tiny() -> ModelConfig:
    """A small model that still reads like an LLM: for the demo and CPU export tests."""
    return ModelConfig(vocab_size=8192, num_layers=4, dim=256, ffn_dim=768, num_heads=4, num_kv_heads=2,
                       head_dim=64, max_seq_len=512, d_mem=64, name="tiny")


def qwen3_0_6b() -> ModelConfig:
    return ModelConfig(num_layers=28, dim=1024, ffn_dim=3072, num_heads=16, num_kv_heads=8, head_dim=128,
                       d_mem=128, tie_embeddings=True, name="qwen3-0.6b")


def qwen3_1_7b() -> ModelConfig:
    return ModelConfig(num_layers=28, dim=2048, ffn_dim=6144, num_heads=16, num_kv_heads=8, head_dim=128,
                       d_mem=256, tie_embeddings=True, name="qwen3-1.7b")


def qwen3_4b() -> ModelConfig:
    return ModelConfig(num_layers=36, dim=2560, ffn_dim=9728, num_heads=32, num_kv_heads=8, head_dim=128,
                       d_mem=512, tie_embeddings=False, name="qwen3-4b")


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "fake": fake,
    "tiny": tiny,
    "qwen3-0.6b": qwen3_0_6b,
    "qwen3-1.7b": qwen3_1_7b,
    "qwen3-4b": qwen3_4b,
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (valid: {', '.join(PRESETS)})") from None
