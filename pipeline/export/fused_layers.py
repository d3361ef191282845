"""Export-only rewrites of a decoder layer so that XNNPACK takes it whole and MeKi costs its bytes.

1. RMSNorm as delegated ops: XNNPACK (ExecuTorch 1.5.1) does not take `mean.dim` over the last axis
   of a 3-D tensor, so every RMSNorm cut the delegate into partitions with a portable mean between
   them (per layer: attention norm, FFN norm, and MeKi's post norm). mean(x^2) + eps is written as
   a [d -> 1] linear with weights 1/d and bias eps, which XNNPACK runs like any other fully
   connected layer (every op costs XNNPACK a reshape per call: one op fewer than a separate add).
2. One input projection: the FFN's gate and up projections read the same normalised input, and so
   does the MeKi gate in the paper variant: one [d -> 2F (+ m)] linear, sliced. Rows of a linear are
   independent (8da4w groups run along the input axis), so the result equals the separate layers.
   Megatron variant: the MeKi gate reads A (before the FFN norm), and the FFN reads
   norm(A) = r * (A * w) with r = rsqrt(mean(A^2) + eps) a per-token scalar; so
   W_ffn norm(A) = r * ((W_ffn diag(w)) A): one [d -> 2F + m] linear over A with the norm weight
   folded into the FFN rows, then the FFN part scaled by r. In fp32 this is the same arithmetic
   reassociated; quantised, the folded rows quantise slightly differently (parity within the
   quantised tolerances).
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
    """RMSNorm with mean(x^2) as a [d -> 1] linear (XNNPACK fully connected) instead of mean.dim."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps, self.weight = norm.eps, norm.weight
        dim = norm.weight.shape[0]
        self.register_buffer("mean_w", torch.full((1, dim), 1.0 / dim), persistent=False)
        self.register_buffer("eps_b", torch.full((1,), float(norm.eps)), persistent=False)  # + eps as the bias

    def inv_rms(self, x32: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(F.linear(x32 * x32, self.mean_w, self.eps_b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return self.weight * (x32 * self.inv_rms(x32)).to(x.dtype)


class FusedDecoderLayer(nn.Module):
    """DecoderLayer.forward with one input projection for FFN (+ MeKi gate) and delegated norms."""

    def __init__(self, layer: DecoderLayer, meki: bool = True, w_in: torch.Tensor | None = None) -> None:
        """meki=False: the dense baseline's layer (no MeKi branch) over the same backbone modules.
        w_in: the fused input weight when the caller has it already (rows gate, up[, MeKi gate])."""
        super().__init__()
        cfg = layer.cfg
        if layer.memory is not None:
            raise ValueError("fuse_layers takes the folded (inference-form) model")
        self.cfg, self.attn = cfg, layer.attn
        self.attn_norm, self.ffn_norm = DelegatedRMSNorm(layer.attn_norm), DelegatedRMSNorm(layer.ffn_norm)
        self.ffn_dim = layer.ffn.w_gate.out_features
        self.w_down = layer.ffn.w_down
        self.fusion = layer.fusion if meki else None
        self.megatron = self.fusion is not None and cfg.variant == "megatron"
        if self.fusion is not None:
            self.post_norm = DelegatedRMSNorm(self.fusion.post_norm)
        weight = self.fused_rows(layer) if w_in is None else w_in
        with torch.device("meta"):  # its own initial weight would be allocated and filled for nothing
            self.w_in = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.w_in.weight = nn.Parameter(weight, requires_grad=False)

    def fused_rows(self, layer: DecoderLayer) -> torch.Tensor:
        rows = [layer.ffn.w_gate.weight, layer.ffn.w_up.weight]
        if self.megatron:  # fold the FFN norm's weight into the FFN rows: the linear reads A itself
            rows = [w * layer.ffn_norm.weight[None, :] for w in rows]
        if self.fusion is not None:
            rows.append(self.fusion.gate_proj.weight)
        return torch.cat([w.detach() for w in rows], dim=0)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                input_pos: torch.Tensor | None, tokens: torch.Tensor, emb: torch.Tensor,
                rows: torch.Tensor | None) -> torch.Tensor:
        f = self.ffn_dim
        a = x + self.attn(self.attn_norm(x), cos, sin, mask, input_pos)
        if self.megatron:
            y = self.w_in(a)
            r = self.ffn_norm.inv_rms(a.float()).to(a.dtype)
            gate, up = y[..., :f] * r, y[..., f:2 * f] * r
        else:
            y = self.w_in(self.ffn_norm(a))
            gate, up = y[..., :f], y[..., f:2 * f]
        out = a + self.w_down(F.silu(gate) * up)
        if self.fusion is not None:
            v = rows + torch.sigmoid(y[..., 2 * f:])
            out = out + self.post_norm(self.fusion.out_proj(v))
        return out


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
