"""Backbone weight quantisation before export (torchao in place; ExecuTorch's int8 weight-only handler)."""

from __future__ import annotations

import torch

EXECUTORCH_QUANTS = ("none", "8da4w", "8da4w-h8", "int8wo")
# 8da4w: every Linear int4 (groups of 32, min/max scales), the LM head too: ExecuTorch's own `-qmode 8da4w`.
# 8da4w-h8: the same int4 body with HQQ-chosen scales (same format and kernels, smaller error) and the LM
# head at int8 per channel, as llama.cpp's Q4_K_M keeps output.weight at 6 bits: the head is the most
# sensitive matrix (demo pair, 16x128 held-out tokens: MeKi +1.53% perplexity -> +0.17%).
# targets whose export quantises with quantize_weights and nothing else: a bundle of only these can
# have its weights quantised once, layer by layer as they load (no full fp32 model in memory).
# None since the XNNPACK form fuses gate/up (+ MeKi gate) rows before quantising (fused_layers.py):
# the loader would have to fuse each layer too before quantising it (load_checkpoint's `prepare`).
EAGER_QUANT_TARGETS: tuple[str, ...] = ()


def _float_linear(m: torch.nn.Module) -> bool:
    """A Linear whose weight is still a plain float tensor (not yet a torchao quantised one)."""
    return isinstance(m, torch.nn.Linear) and type(m.weight) in (torch.nn.Parameter, torch.Tensor)


def quantized_as(model: torch.nn.Module) -> str:
    """The scheme `model` was already quantised with by quantize_weights ("none" if it was not)."""
    return getattr(model, "meki_quant", "none")


def untie_lm_head(model: torch.nn.Module) -> None:
    """A tied head is F.linear over the embedding table, which the Linear-only quantisers skip: the
    largest matrix of a small model would stay fp32 (0.6B: 155 M of 596 M weights). Give it its own
    Linear with the same values, as ExecuTorch's own LLM export has (`output`), so it is quantised."""
    if getattr(model, "lm_head", "absent") is None:
        weight = model.embed.weight
        model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        model.lm_head.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)


def _int4_body(model: torch.nn.Module, group_size: int, head: bool, hqq: bool) -> None:
    """int4 grouped weights for every float Linear (the LM head only if `head`)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm)

    algo = IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY if hqq else IntxChooseQParamsAlgorithm.AFFINE
    # int4 groups must tile the input dimension; a layer that cannot stays fp32
    fits = lambda m, fqn: (_float_linear(m) and m.in_features % group_size == 0  # noqa: E731
                           and (head or fqn != "lm_head"))
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size),
                                                           intx_choose_qparams_algorithm=algo), filter_fn=fits)


def quantize_weights(model: torch.nn.Module, quant: str, group_size: int = 32) -> None:
    """torchao in place: 8da4w (int8 dynamic activations, int4 grouped weights) or int8 weight-only.

    Linear layers already quantised are left alone, so a model quantised a layer at a time and then
    as a whole gets exactly the weights a single whole-model call gives."""
    if quant == "none":
        return
    untie_lm_head(model)
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    if quant in ("8da4w", "8da4w-h8"):
        _int4_body(model, group_size, head=quant == "8da4w", hqq=quant == "8da4w-h8")
        if quant == "8da4w-h8":
            quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0)),
                      filter_fn=lambda m, fqn: _float_linear(m) and fqn == "lm_head")
    elif quant == "int8wo":
        # torchao's IntxWeightOnlyConfig lowers through XNNPACK to wrong numbers (~1e3 off, ExecuTorch
        # 1.5.1); ExecuTorch's own int8 weight-only handler swaps Linear layers and computes correctly.
        from executorch.examples.models.llama.source_transformation.quantize import WeightOnlyInt8QuantHandler

        WeightOnlyInt8QuantHandler(model).quantized_model()
    else:
        raise ValueError(f"unknown quant {quant!r} (valid: {', '.join(EXECUTORCH_QUANTS)})")
    model.meki_quant = quant
