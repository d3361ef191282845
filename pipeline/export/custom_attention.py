"""Export-only attention over ExecuTorch's LLM kernels: in-place KV cache update, GQA without copies.

The eager model's attention writes the cache with index_copy_ and expands K/V heads for SDPA over the
whole static cache; lowered to ExecuTorch that is a full cache copy and a head expansion every step,
growing with max_seq_len. Here the cache is [B, S, Hkv, hd] (the layout llama::update_cache and
llama::custom_sdpa take), written in place at start_pos, and custom_sdpa attends causally to
positions < start_pos + T only, reading the Hkv heads directly (GQA inside the kernel).

Programs using these ops need the `llama` kernels at run time: the wheel's
executorch.extension.llm.custom_ops (Python) and mobile_runtime/native's custom_ops library (C++).
The train-form / eager model is untouched: `use_custom_attention` swaps modules on the export copy.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model import Attention, MekiModel, qkv_heads

LLAMA_KERNELS = "llama"  # manifest Backbone.extra["kernels"]: kernel libraries a runner must register


def load_llama_ops() -> None:
    """Registers torch.ops.llama.* for torch (export, eager) and the ExecuTorch kernels for the
    Python runtime (the wheel's libcustom_ops_aot_lib.so, loaded into the same libexecutorch)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


class CacheBHSD(nn.Module):
    """Static cache [B, S, Hkv, hd]; buffer names keep 'cache' (InitializedMutableBufferPass zeroes them)."""

    def __init__(self, batch: int, kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch, max_seq_len, kv_heads, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin [..., hd] with its first half negated: rotate_half(x) * sin == swap_halves(x) * signed_sin(sin)
    bit for bit (negation is exact), one op fewer per tensor per layer than negating x every step."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rope_bthd(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """pipeline.model.apply_rope for x [B, T, H, hd] (cos [T, hd], sin_signed = signed_sin(sin)):
    the same values, other layout."""
    cos, sin = cos[:, None, :], sin_signed[:, None, :]
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + swapped * sin).to(x.dtype)


class CustomOpAttention(nn.Module):
    """The same projections/norms as `Attention` (shared modules), attention through llama ops."""

    def __init__(self, attn: Attention, max_seq_len: int, dtype: torch.dtype) -> None:
        super().__init__()
        cfg = attn.cfg
        self.cfg, self.max_seq_len = cfg, max_seq_len
        self.wq, self.wk, self.wv, self.wo = attn.wq, attn.wk, attn.wv, attn.wo
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.cache = CacheBHSD(1, cfg.num_kv_heads, max_seq_len, cfg.head_dim, dtype).to(attn.wq.weight.device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                input_pos: torch.Tensor | None) -> torch.Tensor:
        # x: [1, T, d]; input_pos: [T] consecutive positions (the runners always pass them so)
        cfg = self.cfg
        bsz, seq, _ = x.shape
        q, k, v = qkv_heads(self, x)
        q, k = rope_bthd(q, cos, sin), rope_bthd(k, cos, sin)  # sin: signed (use_custom_attention)
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + seq <= self.max_seq_len)
        torch.ops.llama.update_cache(k, self.cache.k, start)
        torch.ops.llama.update_cache(v, self.cache.v, start)
        out = torch.ops.llama.custom_sdpa(q, self.cache.k, self.cache.v, start, None, 0, True)
        return self.wo(out.reshape(bsz, seq, cfg.num_heads * cfg.head_dim))


def use_custom_attention(model: MekiModel) -> MekiModel:
    """In place on an export copy whose cache was set up (model.cache_len): every layer's attention."""
    if model.cache_len == 0:
        raise ValueError("use_custom_attention needs setup_cache(max_seq_len) first")
    if all(isinstance(layer.attn, CustomOpAttention) for layer in model.layers):
        return model  # done already (the sin table must not be signed twice)
    load_llama_ops()
    dtype = model.embed.weight.dtype
    model.rope_sin = signed_sin(model.rope_sin)  # what rope_bthd takes (only these layers read it)
    for layer in model.layers:
        layer.attn = CustomOpAttention(layer.attn, model.cache_len, dtype)
    return model
