"""Fuse and quantise each decoder layer as it loads: the fp32 model never exists whole.

The XNNPACK export rewrites every layer (one [d -> 2F (+ m)] input projection, delegated RMSNorms:
fused_layers.py) and then quantises the rewritten model. Done per layer by load_checkpoint's
`prepare`, the result is the same weights: a Linear is quantised on its own, rows and groups
independently, so a layer quantised alone equals the same layer quantised as part of the whole.

The dense baseline's layers (no MeKi branch: gate/up rows only) are made at the same time, over
the same attention, norm and down-projection modules. In the paper variant its input weight is
the first 2F rows of the MeKi layer's quantised one (a view: no second copy); in the Megatron
variant the MeKi layer's FFN rows have the FFN norm folded in, so the dense rows are fused and
quantised on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.export.fused_layers import DelegatedRMSNorm, FusedDecoderLayer
from pipeline.export.quantize import quantize_weights
from pipeline.model import DecoderLayer, MekiModel


def _row_prefix(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """The first `rows` output rows of a torchao grouped-quantised weight (qdata, scale and zero point
    per row), or None for a format that cannot be sliced so (int8wo swaps the Linear module)."""
    if not hasattr(weight, "qdata"):
        return None
    return weight[:rows]


@dataclass
class LayerFuser:
    """load_checkpoint's `prepare`: a layer -> its fused, quantised export form; then the whole model
    (final norm, untied quantised head). `dense_layers` collects the dense baseline's layers."""

    quant: str
    dense_layers: list[FusedDecoderLayer] = field(default_factory=list)

    def __call__(self, module: nn.Module) -> nn.Module | None:
        if isinstance(module, DecoderLayer):
            return self.layer(module)
        if isinstance(module, MekiModel):
            module.norm = DelegatedRMSNorm(module.norm)
            quantize_weights(module, self.quant)  # the head (untied); the layers are done already
            return None
        raise TypeError(f"LayerFuser takes a DecoderLayer or a MekiModel, not {type(module).__name__}")

    def layer(self, layer: DecoderLayer) -> FusedDecoderLayer:
        fused = FusedDecoderLayer(layer)
        quantize_weights(fused, self.quant)
        if layer.fusion is None:  # a dense model: the layer is its own baseline
            self.dense_layers.append(fused)
            return fused
        rows = None if fused.megatron else _row_prefix(fused.w_in.weight, 2 * fused.ffn_dim)
        dense = FusedDecoderLayer(layer, meki=False, w_in=rows)
        quantize_weights(dense, self.quant)  # the w_in rows if not sliced; the shared modules are done
        self.dense_layers.append(dense)
        return fused
