"""Fuse and quantise each decoder layer as it loads: the fp32 model never exists whole.

The XNNPACK export rewrites every layer (delegated RMSNorms, folded norm weights: fused_layers.py)
and then quantises the rewritten model. Done per layer by load_checkpoint's
`prepare`, the result is the same weights: a Linear is quantised on its own, rows and groups
independently, so a layer quantised alone equals the same layer quantised as part of the whole.

The dense baseline's layers (no MeKi branch) are made at the same time, over the same attention,
norm and FFN modules (no second copy); in the Megatron variant the MeKi layer's FFN linears have
the FFN norm weight folded in, so the dense layer quantises the original ones on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.export.fused_layers import DelegatedRMSNorm, FusedDecoderLayer
from pipeline.export.quantize import quantize_weights
from pipeline.model import DecoderLayer, MekiModel


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
        dense = FusedDecoderLayer(layer, meki=False)
        dense.w_down = fused.w_down  # quantised above (int8wo swaps modules: the dense layer takes the new ones)
        if not fused.megatron:  # the same FFN linears; Megatron's have the norm weight folded in
            dense.w_gate, dense.w_up = fused.w_gate, fused.w_up
        quantize_weights(dense, self.quant)  # Megatron: the original FFN linears; the shared ones are done
        self.dense_layers.append(dense)
        return fused
