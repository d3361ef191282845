"""Export-only rewrites of a decoder layer so that XNNPACK takes it whole and MeKi costs its bytes.

1. RMSNorm as delegated ops: XNNPACK (ExecuTorch 1.5.1) does not take `mean.dim` over the last axis
   of a 3-D tensor, so every RMSNorm cut the delegate into partitions with a portable mean between
   them (per layer: attention norm, FFN norm, and MeKi's post norm). mean(x^2) + eps is written as
   a [d -> 1] linear with weights 1/d and bias eps, which XNNPACK runs like any other fully
   connected layer (every op costs XNNPACK a reshape per call: one op fewer than a separate add).
2. FFN and MeKi gate projections as separate linears, ExecuTorch's own form: rows of a linear are
   independent, so one fused [d -> 2F (+ m)] projection gives the same numbers, but it must then be
   sliced, and XNNPACK's slice copies each [F] half (at F 3072, two 12 KB copies per layer per decode
   step: 0.25% of a Qwen3-0.6B step by instructions, the whole of what ours executed beyond ExecuTorch's
   export); a separate [d -> F] linear costs one small activation quantisation instead. Megatron
   variant: the MeKi gate reads A (before the FFN norm), and the FFN reads
   norm(A) = r * (A * w) with r = rsqrt(mean(A^2) + eps) a per-token scalar; so
   W norm(A) = r * ((W diag(w)) A): the FFN linears read A with the norm weight folded into their
   input columns, their outputs scaled by r (r computed once, shared). In fp32 this is the same
   arithmetic reassociated; quantised, the folded weights quantise slightly differently (parity
   within the quantised tolerances).
3. MeKi's post-norm weight folded into out_proj's output rows, one mul fewer per layer: with
   z_w = diag(w) W_o v, w * norm(z) = z_w * rsqrt(mean(z_w^2 / w^2) + eps), the mean a [d -> 1] linear
   with weights 1/(d w^2) (kept unfolded if some w is ~0). An output row scales whole 8da4w groups,
   so the int4 values do not change. (Folding the attention/FFN norm weights into their consumers'
   input columns would save two more muls per layer, but it changes the int4 groups: on the demo
   pair it cost 0.2 dB logit SNR and 1 greedy token in 10 at 8da4w, so it is not done.)
The train-form / eager model is untouched: `fuse_layers` swaps modules on the export copy, or the
loader fuses each layer as it loads (eager_quant.py); layers already fused are left as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.meki_branch import RMSNorm
from pipeline.model import DecoderLayer, MekiModel


class DelegatedRMSNorm(nn.Module):
    """RMSNorm with mean(x^2) as a [d -> 1] linear (XNNPACK fully connected) instead of mean.dim.

    weighted=False: no weight multiply (only inv_rms is used, or the weight is folded elsewhere).
    input_scale=w: the input is w * x (w folded into the producer's rows); returns w * norm(x)."""

    def __init__(self, norm: RMSNorm, weighted: bool = True, input_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.eps, dim = norm.eps, norm.weight.shape[0]
        self.weight = norm.weight if weighted and input_scale is None else None
        mean_w = torch.full((1, dim), 1.0 / dim)
        if input_scale is not None:
            mean_w = mean_w / input_scale.detach().float()[None, :] ** 2
        self.register_buffer("mean_w", mean_w, persistent=False)
        self.register_buffer("eps_b", torch.full((1,), float(norm.eps)), persistent=False)  # + eps as the bias

    def inv_rms(self, x32: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(F.linear(x32 * x32, self.mean_w, self.eps_b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = (x32 * self.inv_rms(x32)).to(x.dtype)
        return y if self.weight is None else self.weight * y


def _bias_free(weight: torch.Tensor) -> nn.Linear:
    with torch.device("meta"):  # its own initial weight would be allocated and filled for nothing
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    out.weight = nn.Parameter(weight, requires_grad=False)
    return out


def scaled_rows(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """A new bias-free Linear whose output row i is scale[i] times linear's."""
    return _bias_free(linear.weight.detach() * scale.detach().to(linear.weight.dtype)[:, None])


def scaled_inputs(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """A new bias-free Linear computing linear(scale * x) (scale folded into the input columns)."""
    return _bias_free(linear.weight.detach() * scale.detach().to(linear.weight.dtype)[None, :])


def foldable_into_rows(weight: torch.Tensor) -> bool:
    """1/w^2 in the post norm's mean stays well inside fp32 for |w| not ~0."""
    w = weight.detach().float().abs()
    return bool(w.min() > 1e-3 * w.max())


class FusedDecoderLayer(nn.Module):
    """DecoderLayer.forward in the export form: delegated norms, separate FFN/MeKi-gate projections
    (the Megatron FFN norm folded into its inputs), the MeKi post-norm weight folded into out_proj."""

    def __init__(self, layer: DecoderLayer, meki: bool = True) -> None:
        """meki=False: the dense baseline's layer (no MeKi branch) over the same backbone modules (the
        FFN linears too, except where the Megatron MeKi layer folds its norm weight into them)."""
        super().__init__()
        cfg = layer.cfg
        if layer.memory is not None:
            raise ValueError("fuse_layers takes the folded (inference-form) model")
        self.cfg, self.attn = cfg, layer.attn
        self.attn_norm = DelegatedRMSNorm(layer.attn_norm)
        self.w_down = layer.ffn.w_down
        self.fusion = layer.fusion if meki else None
        self.megatron = self.fusion is not None and cfg.variant == "megatron"
        self.ffn_norm = DelegatedRMSNorm(layer.ffn_norm, weighted=not self.megatron)
        self.w_gate, self.w_up = layer.ffn.w_gate, layer.ffn.w_up
        if self.megatron:  # the linears read A itself
            w = layer.ffn_norm.weight
            self.w_gate, self.w_up = scaled_inputs(self.w_gate, w), scaled_inputs(self.w_up, w)
        if self.fusion is not None:
            post = self.fusion.post_norm
            self.out_proj, self.post_norm = self.fusion.out_proj, DelegatedRMSNorm(post)
            if foldable_into_rows(post.weight):
                self.out_proj = scaled_rows(self.out_proj, post.weight)
                self.post_norm = DelegatedRMSNorm(post, input_scale=post.weight)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                input_pos: torch.Tensor | None, tokens: torch.Tensor, emb: torch.Tensor,
                rows: torch.Tensor | None) -> torch.Tensor:
        a = x + self.attn(self.attn_norm(x), cos, sin, mask, input_pos)
        if self.megatron:
            r = self.ffn_norm.inv_rms(a.float()).to(a.dtype)
            h, gate, up = a, self.w_gate(a) * r, self.w_up(a) * r
        else:
            h = self.ffn_norm(a)
            gate, up = self.w_gate(h), self.w_up(h)
        out = a + self.w_down(F.silu(gate) * up)
        return out if self.fusion is None else out + self.meki_branch(h, rows)

    def meki_branch(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """y = RMSNorm_post(W_out (e + sigmoid(W_gate h))); paper: h is the normalised input, Megatron: A.
        (benchmarks/bench_meki_parts.py times this branch a part at a time.)"""
        v = rows + torch.sigmoid(self.fusion.gate_proj(h))
        return self.post_norm(self.out_proj(v))


def fuse_layers(model: MekiModel) -> MekiModel:
    """In place on an export copy (after use_custom_attention, before quantisation); a model fused
    as it loaded (eager_quant.py) is left as it is."""
    model.layers = nn.ModuleList(layer if isinstance(layer, FusedDecoderLayer) else FusedDecoderLayer(layer)
                                 for layer in model.layers)
    if not isinstance(model.norm, DelegatedRMSNorm):
        model.norm = DelegatedRMSNorm(model.norm)
    return model


def is_fused(model: MekiModel) -> bool:
    return isinstance(model.norm, DelegatedRMSNorm) and all(isinstance(m, FusedDecoderLayer) for m in model.layers)
