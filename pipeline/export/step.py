"""The exported entry points: one generation step of the backbone, with or without the MeKi rows."""

from __future__ import annotations

import torch
from torch import nn

from mobile_runtime.manifest import MethodSpec, TensorSpec
from pipeline.config import ModelConfig
from pipeline.model import MekiModel


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, 1, V] -> [B, V] as a view: `[:, 0]` lowers to select_copy, a copy of the whole logits row
    every step (ExecuTorch: 3% of a demo decode step), while a view costs nothing."""
    return logits.view(logits.shape[0], logits.shape[-1])


class MekiStep(nn.Module):
    """(tokens [1, T] int64, input_pos [T] int64, meki_rows [1, T, L, m] f32) -> logits [1, V] (last position)."""

    def __init__(self, model: MekiModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, meki_rows: torch.Tensor) -> torch.Tensor:
        return last_logits(self.model(tokens, input_pos, meki_rows, last_only=True))


class DenseStep(nn.Module):
    """(tokens [1, T] int64, input_pos [T] int64) -> logits [1, V] (last position); no MeKi input."""

    def __init__(self, model: MekiModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return last_logits(self.model(tokens, input_pos, last_only=True))


def make_step(model: MekiModel) -> nn.Module:
    if model.cfg.has_meki and not model.cfg.folded:
        raise ValueError("export takes the folded (inference-form) model: fold it first")
    return MekiStep(model) if model.cfg.has_meki else DenseStep(model)


def example_inputs(cfg: ModelConfig, seq: int, start: int = 0) -> tuple[torch.Tensor, ...]:
    tokens = (torch.arange(seq, dtype=torch.int64) % cfg.vocab_size)[None]
    pos = torch.arange(start, start + seq, dtype=torch.int64)
    if not cfg.has_meki:
        return tokens, pos
    return tokens, pos, torch.zeros(1, seq, cfg.num_layers, cfg.d_mem)


def method_spec(cfg: ModelConfig, seq: int, entry: str) -> MethodSpec:
    inputs = [TensorSpec("tokens", [1, seq], "int64"), TensorSpec("input_pos", [seq], "int64")]
    if cfg.has_meki:
        inputs.append(TensorSpec("meki_rows", [1, seq, cfg.num_layers, cfg.d_mem], "float32"))
    return MethodSpec(inputs, [TensorSpec("logits", [1, cfg.vocab_size], "float32")], entry)
