"""The backbone step as an NPU compiler wants it: static shapes, no in-graph cache write, no SELECT.

The CPU .tflite (litert.LiteRTStep) writes the KV cache with DYNAMIC_UPDATE_SLICE and masks
with SDPA's boolean mask; Qualcomm's compiler refuses both in the prefill signature (DUS with T > 1 is
"not supported in Qualcomm Compiler", the SELECT's broadcast fails validation), which leaves 5
partitions and 8 ops on the CPU. This graph instead
  - reads the cache as an input and never writes it: attention runs over the cache (positions
    < input_pos[0], an additive bias) and over the chunk's own k, v (causal, a constant bias);
  - returns only the chunk's new k, v (`k_new_i`, `v_new_i` [1, Hkv, T, hd]); the runner writes them
    into its cache at input_pos (so the cache is read once per step and never copied back out);
  - groups the query heads per KV head (a reshape) instead of repeat_interleave over the cache, in
    blocks of at most KV_BLOCK KV heads (see SplitCacheAttention._attend).
Same weights, same maths as pipeline.model.Attention; `verify` checks it against eager PyTorch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from contract.manifest import MethodSpec, TensorSpec
from pipeline.config import ModelConfig
from pipeline.export.common import NormAt
from pipeline.model import MekiModel, apply_rope

# Additive bias of a masked score: finite in fp16 (the HTP computes in fp16), and small enough that a
# w8a16 graph's int16 scores (one scale per tensor, masked and real alike) keep ~0.004 resolution; with
# -30000 the scale was 0.46 and w8a16 logits fell to 10 dB SNR. exp(-200) is 0 in fp16 and fp32.
MASKED = -200.0
# KV heads per batched attention block (see SplitCacheAttention._attend): 4 measured right, 8 wrong
KV_BLOCK = 4


class SplitCacheAttention(nn.Module):
    """pipeline.model.Attention over a read-only cache input plus the chunk's own k, v."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.cache_k: torch.Tensor | None = None  # [1, Hkv, S, hd], set per call by NpuStep
        self.cache_v: torch.Tensor | None = None
        self.cache_bias: torch.Tensor | None = None  # [1, 1, 1, S]
        self.new_k: torch.Tensor | None = None  # outputs: [1, Hkv, T, hd]
        self.new_v: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, _mask: torch.Tensor | None,
                _input_pos: torch.Tensor | None) -> torch.Tensor:
        a, cfg = self.attn, self.attn.cfg
        bsz, seq, _ = x.shape
        hkv, hd = cfg.num_kv_heads, cfg.head_dim
        q = a.wq(x).view(bsz, seq, cfg.num_heads, hd)
        k = a.wk(x).view(bsz, seq, hkv, hd)
        v = a.wv(x).view(bsz, seq, hkv, hd)
        if a.q_norm is not None:
            q, k = a.q_norm(q), a.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.new_k, self.new_v = k, v
        return a.wo(self._attend(q * (1.0 / math.sqrt(hd)), k, v))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [1, H, T, hd] (scaled), k, v [1, Hkv, T, hd] -> [1, T, H * hd], in blocks of <= KV_BLOCK KV heads.

        One batched 4-D block over all KV heads is miscomputed by QAIRT 2.51's HTP (simulator) with 8
        KV heads and more than one layer (Qwen3-0.6B's width: 2.9 dB logits, 0.8 dB layer-1 k; 2 or 4
        KV heads were right). One KV head at a time (3-D) is right but lowers the score matmuls to
        FULLY_CONNECTED ops with the cache as weights, which the HTP leaves on the CPU at S=512."""
        cfg = self.attn.cfg
        hkv, groups = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
        outs = []
        for h0 in range(0, hkv, KV_BLOCK):
            h1 = min(h0 + KV_BLOCK, hkv)
            outs.append(self._attend_block(q[:, h0 * groups:h1 * groups], k[:, h0:h1], v[:, h0:h1],
                                           self.cache_k[:, h0:h1], self.cache_v[:, h0:h1]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def _attend_block(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_k: torch.Tensor,
                      cache_v: torch.Tensor) -> torch.Tensor:
        bsz, heads, seq, hd = q.shape
        hkv = k.shape[1]
        groups = heads // hkv
        # head h uses KV head h // groups (repeat_interleave's order): [1, hkv, groups * T, hd]
        qg = q.reshape(bsz, hkv, groups * seq, hd)
        causal = torch.triu(torch.full((seq, seq), MASKED), diagonal=1).repeat(groups, 1)  # a constant
        scores = torch.cat([qg @ cache_k.transpose(-1, -2) + self.cache_bias,
                            qg @ k.transpose(-1, -2) + causal], dim=-1)
        p = F.softmax(scores, dim=-1)
        s = cache_k.shape[2]
        out = p[..., :s] @ cache_v + p[..., s:] @ v  # [1, hkv, groups * T, hd]
        return out.reshape(bsz, heads, seq, hd).transpose(1, 2).reshape(bsz, seq, heads * hd)


class NpuStep(nn.Module):
    """Keyword inputs and a dict output: the signatures' tensor names (see `npu_signature_specs`)."""

    def __init__(self, model: MekiModel, max_seq_len: int) -> None:
        super().__init__()
        model.setup_cache(max_seq_len)  # rope tables; the cache buffers are not used
        for layer in model.layers:
            layer.attn = SplitCacheAttention(layer.attn)
        model.norm = NormAt(model.norm)
        self.model = model
        self.max_seq_len = max_seq_len

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, meki_rows: torch.Tensor | None = None,
                last_index: torch.Tensor | None = None, **kv: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        start = input_pos[:1].to(torch.float32)
        # cache positions >= the chunk's first position are stale or empty: masked
        bias = (torch.arange(self.max_seq_len, dtype=torch.float32) >= start).to(torch.float32) * MASKED
        for i, layer in enumerate(m.layers):
            att = layer.attn
            att.cache_k, att.cache_v, att.cache_bias = kv[f"kv_k_{i}"], kv[f"kv_v_{i}"], bias.view(1, 1, 1, -1)
        m.norm.index = last_index
        logits = m(tokens, input_pos, meki_rows, last_only=last_index is None)[:, 0]  # [1, V]
        out = {"logits": logits}
        for i, layer in enumerate(m.layers):
            out[f"k_new_{i}"], out[f"v_new_{i}"] = layer.attn.new_k, layer.attn.new_v
        return out


def npu_signature_specs(cfg: ModelConfig, max_seq_len: int, prefill_len: int) -> dict[str, MethodSpec]:
    """Inputs in feeding order; outputs: logits and each layer's new k, v for the chunk."""
    cache = [1, cfg.num_kv_heads, max_seq_len, cfg.head_dim]
    kv_in = [TensorSpec(f"kv_{kind}_{i}", cache, "float32") for i in range(cfg.num_layers) for kind in ("k", "v")]
    specs = {}
    for step, seq in (("prefill", prefill_len), ("decode", 1)):
        inputs = [TensorSpec("tokens", [1, seq], "int32"), TensorSpec("input_pos", [seq], "int32")]
        if cfg.has_meki:
            inputs.append(TensorSpec("meki_rows", [1, seq, cfg.num_layers, cfg.d_mem], "float32"))
        if step == "prefill":
            inputs.append(TensorSpec("last_index", [1], "int32"))
        new = [TensorSpec(f"{kind}_new_{i}", [1, cfg.num_kv_heads, seq, cfg.head_dim], "float32")
               for i in range(cfg.num_layers) for kind in ("k", "v")]
        specs[step] = MethodSpec(inputs + kv_in, [TensorSpec("logits", [1, cfg.vocab_size], "float32")] + new, step)
    return specs


def npu_sample_kwargs(cfg: ModelConfig, max_seq_len: int, prefill_len: int, step: str) -> dict[str, torch.Tensor]:
    spec = npu_signature_specs(cfg, max_seq_len, prefill_len)[step]
    feeds = {t.name: torch.zeros(t.shape, dtype=getattr(torch, t.dtype)) for t in spec.inputs}
    feeds["input_pos"] = torch.arange(feeds["input_pos"].shape[0], dtype=torch.int32)
    if "last_index" in feeds:
        feeds["last_index"] = torch.tensor([prefill_len - 1], dtype=torch.int32)
    return feeds
