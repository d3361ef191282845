"""Backbone weight quantisation before export (torchao in place; ExecuTorch's int8 weight-only handler)."""

from __future__ import annotations

import torch

EXECUTORCH_QUANTS = ("none", "8da4w", "8da4w-h8", "int8wo")
# 8da4w: every Linear int4 (groups of 32, min/max scales), the LM head too: ExecuTorch's own `-qmode 8da4w`.
# 8da4w-h8: the same int4 body with HQQ-chosen scales (same format and kernels, smaller error) and the LM
# head at int8 per channel, as llama.cpp's Q4_K_M keeps output.weight at 6 bits: the head is the most
# sensitive matrix (demo pair, 16x128 held-out tokens: MeKi +1.53% perplexity -> +0.17%).
# targets whose export fuses the layers (fused_layers.py) and then quantises with quantize_weights and
# nothing else: a bundle of only these has its layers fused and quantised once, each as it loads
# (eager_quant.py: no full fp32 model in memory).
EAGER_QUANT_TARGETS: tuple[str, ...] = ("executorch-xnnpack",)


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


def _int4_config(group_size: int, hqq: bool) -> object:
    """int8 dynamic activations, int4 weights in groups of `group_size` (scales min/max or HQQ-chosen)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm)

    algo = IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY if hqq else IntxChooseQParamsAlgorithm.AFFINE
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size),
                                                 intx_choose_qparams_algorithm=algo)


HEAD_ROWS = 16384  # rows of the output head quantised at a time (Qwen3's vocabulary: 10 blocks)


def quantize_head(model: torch.nn.Module, config: object, group_size: int) -> None:
    """The output head (tied: straight from the embedding, no fp32 clone), quantised a block of rows at
    a time: rows and their groups quantise independently, so the weights equal one quantize_ call over
    the whole [V, d] matrix, whose fp32 temporaries (~3x the matrix: 4.7 GB at Qwen3-4B) never exist."""
    from torchao.quantization import quantize_

    head = getattr(model, "lm_head", "absent")
    tied = head is None
    if not (tied or (isinstance(head, torch.nn.Linear) and _float_linear(head))):
        return
    weight = (model.embed.weight if tied else head.weight).detach()
    if weight.shape[1] % group_size:
        return  # not quantisable: untie_lm_head and quantize_ leave it fp32 as before
    parts = []
    for start in range(0, weight.shape[0], HEAD_ROWS):
        block = weight[start:start + HEAD_ROWS]
        with torch.device("meta"):
            linear = torch.nn.Linear(block.shape[1], block.shape[0], bias=False)
        linear.weight = torch.nn.Parameter(block, requires_grad=False)
        quantize_(linear, config)
        parts.append(linear.weight)
    names, meta = parts[0].__tensor_flatten__()
    inner = {n: torch.cat([getattr(p, n) for p in parts]) for n in names}
    del parts
    with torch.device("meta"):
        model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    whole = type(linear.weight).__tensor_unflatten__(inner, meta, weight.shape, None)
    model.lm_head.weight = torch.nn.Parameter(whole, requires_grad=False)


def quantize_weights(model: torch.nn.Module, quant: str, group_size: int = 32) -> None:
    """torchao in place: 8da4w (int8 dynamic activations, int4 grouped weights) or int8 weight-only.

    Linear layers already quantised are left alone, so a model quantised a layer at a time and then
    as a whole gets exactly the weights a single whole-model call gives."""
    if quant == "none":
        return
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    if quant in ("8da4w", "8da4w-h8"):
        body = _int4_config(group_size, hqq=quant == "8da4w-h8")
        if quant == "8da4w":
            quantize_head(model, body, group_size)
        else:  # int8, one scale per row: any width quantises
            quantize_head(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                       weight_granularity=PerAxis(0)), 1)
        untie_lm_head(model)
        # int4 groups must tile the input dimension; a layer that cannot stays fp32
        fits = lambda m, _fqn: _float_linear(m) and m.in_features % group_size == 0  # noqa: E731
        quantize_(model, body, filter_fn=fits)
    elif quant == "int8wo":
        untie_lm_head(model)
        # torchao's IntxWeightOnlyConfig lowers through XNNPACK to wrong numbers (~1e3 off, ExecuTorch
        # 1.5.1); ExecuTorch's own int8 weight-only handler swaps Linear layers and computes correctly.
        from executorch.examples.models.llama.source_transformation.quantize import WeightOnlyInt8QuantHandler

        WeightOnlyInt8QuantHandler(model).quantized_model()
    else:
        raise ValueError(f"unknown quant {quant!r} (valid: {', '.join(EXECUTORCH_QUANTS)})")
    model.meki_quant = quant
