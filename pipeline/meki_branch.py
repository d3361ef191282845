"""The MeKi branch of one layer, in training form and in folded (inference) form.

Training form (MEKI.md): e = alpha * RMSNorm_mix(M[x] + beta * G(E[x])), v = e + sigmoid(W_gate h),
y = RMSNorm_post(W_out v). Folded form: e arrives as a looked-up row; only the fusion stays.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig


class RMSNorm(nn.Module):
    """Qwen3's RMSNorm: normalise in fp32, scale by the weight in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class DynamicProjection(nn.Module):
    """G: SwiGLU MLP d -> d/2 -> m over the global word embedding (megatron: RMSNorm first)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.dyn_hidden
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.variant == "megatron" else None
        self.w_gate = nn.Linear(cfg.dim, hidden, bias=False)
        self.w_up = nn.Linear(cfg.dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, cfg.d_mem, bias=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        # emb: [..., d] -> [..., m]
        if self.norm is not None:
            emb = self.norm(emb)
        return self.w_down(F.silu(self.w_gate(emb)) * self.w_up(emb))


class MekiMemory(nn.Module):
    """Training-form expert vector e for token ids; `fold_rows` computes the same for table rows."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.use_static = cfg.has_static
        self.table = nn.Embedding(cfg.vocab_size, cfg.d_mem) if cfg.has_static else None
        self.dyn = DynamicProjection(cfg) if cfg.has_dynamic else None
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.ones(())) if cfg.has_dynamic else None
        self.mix_norm = RMSNorm(cfg.d_mem, cfg.norm_eps)

    def mix(self, static_rows: torch.Tensor | None, emb_rows: torch.Tensor | None) -> torch.Tensor:
        """static_rows: [..., m] (M[x]); emb_rows: [..., d] (E[x]) -> e: [..., m]."""
        total = static_rows if self.use_static else None
        if self.dyn is not None:
            dyn = self.beta * self.dyn(emb_rows)
            total = dyn if total is None else total + dyn
        return self.alpha * self.mix_norm(total)

    def forward(self, tokens: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # tokens: [B, T], emb: [B, T, d] -> [B, T, m]
        static_rows = self.table(tokens) if self.use_static else None
        return self.mix(static_rows, emb)


class MekiFusion(nn.Module):
    """What stays in the compute graph: v = e + sigmoid(W_gate h); y = RMSNorm_post(W_out v)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.d_mem, bias=False)
        self.out_proj = nn.Linear(cfg.d_mem, cfg.dim, bias=False)
        self.post_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # e: [B, T, m], h: [B, T, d] -> y: [B, T, d]
        v = e + torch.sigmoid(self.gate_proj(h))
        return self.post_norm(self.out_proj(v))
