"""A Qwen3-style decoder with an optional MeKi branch per layer and a static KV cache.

One code path serves the dense baseline (memory="none"), the training form and the folded
inference form (config.folded: the rows e arrive as `meki_rows` instead of being computed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.meki_branch import MekiFusion, MekiMemory, RMSNorm


def rope_tables(cfg: ModelConfig, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_seq_len, head_dim] in fp32, half-split (rotate_half) layout as in Qwen3."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.int64).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, H, T, hd]; cos/sin: [T, hd]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache(nn.Module):
    """Static cache updated in place at input_pos (exportable as mutable buffers)."""

    def __init__(self, batch: int, kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # input_pos: [T]; k, v: [B, Hkv, T, hd] -> the whole cache [B, Hkv, S, hd]
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


def qkv_heads(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, T, d] -> q [B, T, H, hd], k and v [B, T, Hkv, hd], QK-normed where the config has it."""
    cfg, (bsz, seq, _) = attn.cfg, x.shape
    q = attn.wq(x).view(bsz, seq, cfg.num_heads, cfg.head_dim)
    k = attn.wk(x).view(bsz, seq, cfg.num_kv_heads, cfg.head_dim)
    v = attn.wv(x).view(bsz, seq, cfg.num_kv_heads, cfg.head_dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wq = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                input_pos: torch.Tensor | None) -> torch.Tensor:
        # x: [B, T, d]; mask: [T, S] bool (True = attend), None = causal over x alone
        cfg = self.cfg
        bsz, seq, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in qkv_heads(self, x))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if mask is None:  # full sequence, no cache (training): fused causal kernel, GQA without copies
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.wo(out.transpose(1, 2).reshape(bsz, seq, cfg.num_heads * cfg.head_dim))
        if self.cache is not None and input_pos is not None:
            k, v = self.cache.update(input_pos, k, v)
        groups = cfg.num_heads // cfg.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, cfg.num_heads * cfg.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.memory = MekiMemory(cfg) if cfg.has_meki and not cfg.folded else None
        self.fusion = MekiFusion(cfg) if cfg.has_meki else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                input_pos: torch.Tensor | None, tokens: torch.Tensor, emb: torch.Tensor,
                rows: torch.Tensor | None) -> torch.Tensor:
        # x: [B, T, d]; rows: [B, T, m] looked-up expert vectors (folded form) or None
        a = x + self.attn(self.attn_norm(x), cos, sin, mask, input_pos)
        h = self.ffn_norm(a)
        out = a + self.ffn(h)
        if self.fusion is not None:
            e = rows if self.memory is None else self.memory(tokens, emb)
            # paper: the gate sees the normalised H; megatron fuses that norm into fc1, so it sees A.
            out = out + self.fusion(e, a if self.cfg.variant == "megatron" else h)
        return out


class MekiModel(nn.Module):
    """logits = model(tokens [B, T], input_pos [T] | None, meki_rows [B, T, L, m] | None): [B, T, V]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg, cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.cache_len = 0

    def setup_cache(self, max_seq_len: int, batch: int = 1, dtype: torch.dtype | None = None) -> None:
        """Allocate a static KV cache of max_seq_len positions; calls then pass input_pos."""
        dtype = dtype or self.weight_dtype
        if max_seq_len > self.rope_cos.shape[0]:
            cos, sin = rope_tables(self.cfg, max_seq_len)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        for layer in self.layers:
            layer.attn.cache = KVCache(batch, self.cfg.num_kv_heads, max_seq_len, self.cfg.head_dim, dtype).to(
                self.rope_cos.device)
        self.cache_len = max_seq_len

    def _rope_cover(self, pos: torch.Tensor, length: int | None) -> None:
        """Eager calls without a KV cache may run past cfg.max_seq_len (an HF config's 40,960 positions
        are capped at 4,096 for the tables): the RoPE tables grow to cover them, as setup_cache's do.
        A model with a cache (an export copy's sin table may be signed) and tracing are left alone.
        length: the positions are 0..length-1 (a training step: no read of pos, no device sync)."""
        if self.cache_len or torch.compiler.is_compiling() or torch.compiler.is_exporting() or not pos.numel():
            return
        need = length if length is not None else int(pos.max()) + 1
        if need > self.rope_cos.shape[0]:
            cos, sin = rope_tables(self.cfg, need)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The embedding's dtype; an embedding held quantised (coreml_quant.Int4Embedding) names the
        dtype it dequantises to, so asking does not dequantise the whole table."""
        return getattr(self.embed, "dtype", None) or self.embed.weight.dtype

    def reset_cache(self) -> None:
        for layer in self.layers:
            if layer.attn.cache is not None:
                layer.attn.cache.k.zero_()
                layer.attn.cache.v.zero_()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None,
                meki_rows: torch.Tensor | None = None, last_only: bool = False,
                hidden_only: bool = False) -> torch.Tensor:
        """last_only: logits of the last position only, [B, 1, V] (what a generation step needs);
        hidden_only: the last layer's output [B, T, d] (before the final norm)."""
        cfg = self.cfg
        seq = tokens.shape[1]
        if cfg.has_meki and cfg.folded and meki_rows is None:
            raise ValueError("folded MeKi model needs meki_rows [B, T, L, m] (looked up from its tables)")
        if input_pos is None or self.cache_len == 0:
            pos = torch.arange(seq, device=tokens.device) if input_pos is None else input_pos
            self._rope_cover(pos, seq if input_pos is None else None)
            mask, input_pos = None, None
        else:
            pos = input_pos
            mask = torch.arange(self.cache_len, device=tokens.device)[None, :] <= input_pos[:, None]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        emb = self.embed(tokens)
        x = emb
        for i, layer in enumerate(self.layers):
            rows = meki_rows[:, :, i] if meki_rows is not None else None
            x = layer(x, cos, sin, mask, input_pos, tokens, emb, rows)
        if hidden_only:
            return x
        x = self.norm(x[:, -1:] if last_only else x)
        return self.head(x)

    def last_logits(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None,
                    meki_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the last position as [B, V]: the hidden row is made [B, d] before the head, so an
        exported step's output is the head's own ([1, V] out of [1, 1, V] is a copy of the whole logits
        row inside XNNPACK, ~600 KB per step at a 151k vocabulary; [1, d] costs d floats)."""
        h = self.forward(tokens, input_pos, meki_rows, hidden_only=True)
        return self.head(self.norm(h[:, -1:].reshape(h.shape[0], h.shape[-1])))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)


def init_weights(model: MekiModel, seed: int = 0, std: float = 0.02) -> MekiModel:
    """GPT-style init: N(0, std) for linear and embedding weights; norms, alpha, beta stay at 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
    return model
