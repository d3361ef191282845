"""Model configuration: one dataclass, named presets, strict JSON load."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MEMORY_KINDS = ("both", "static", "dynamic", "none")
VARIANTS = ("paper", "megatron")


class ConfigError(ValueError):
    """A config that cannot describe a model (unknown key, bad value)."""


def _type_ok(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1e6 as 1000000.0 but people write 1000000
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def check_types(cls: type, data: dict[str, Any], what: str) -> None:
    """Refuse unknown keys and values of the wrong JSON type, naming each (no silent coercion)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"unknown {what} key(s): {', '.join(unknown)}")
    wrong = [f"{k}={v!r} (expected {getattr(hints[k], '__name__', str(hints[k]))})"
             for k, v in data.items() if not _type_ok(v, hints[k])]
    if wrong:
        raise ConfigError(f"{what} values of the wrong type: {'; '.join(wrong)}")


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
        check_types(type(self), self.to_dict(), "model config")  # also configs built by importers
        problems = []
        if self.memory not in MEMORY_KINDS:
            problems.append(f"memory={self.memory!r} (valid: {', '.join(MEMORY_KINDS)})")
        if self.variant not in VARIANTS:
            problems.append(f"variant={self.variant!r} (valid: {', '.join(VARIANTS)})")
        for key in ("vocab_size", "num_layers", "dim", "ffn_dim", "num_heads", "num_kv_heads", "head_dim",
                    "max_seq_len"):
            if int(getattr(self, key)) <= 0:
                problems.append(f"{key}={getattr(self, key)} must be positive")
        if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if not (self.rope_theta > 0 and self.norm_eps > 0):
            problems.append(f"rope_theta={self.rope_theta} and norm_eps={self.norm_eps} must be positive")
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
        check_types(cls, data, "config")
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        from contract.inputs import InputError, read_text

        try:
            data = json.loads(read_text(Path(path), "config.json"))
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


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
