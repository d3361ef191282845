"""Core ML int4 weights made in torch, before conversion: the converter never holds fp32 weights.

What this target did before: `ct.convert` cast each weight to fp16 (compute precision) and
`linear_quantize_weights` then quantised the fp16 constant per block of 32 input channels with
`coremltools.optimize`'s own `compute_qparams_by_dtype`. Here the same function runs on the same fp16
values as each layer loads, and the module keeps only the int4 codes (int8 storage) and the scales;
its forward calls `torchao.dequantize_affine`, which coremltools' torch frontend turns into the same
`constexpr_blockwise_shift_scale` op with the same data and scales. A weight the converter's pass
would have skipped (too small, in-dim not a multiple of the block) stays float, as it did.

Peak memory falls from about four fp32 copies of the weights (converter constants, the fp16 cast, the
compression pass's reload from the spec) to the int4 codes plus one layer in fp32 while it loads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import MekiModel

INT4_BLOCK = 32  # int4 per-block: one scale per 32 input channels
MIN_QUANT_ELEMENTS = 256  # coremltools skips weights below 2048 elements by default: too coarse for tests
ROWS = 8192  # rows quantised at a time (the embedding: 151,936 rows)
QMIN, QMAX = -8, 7  # int4, the range dequantize_affine's converter maps to Core ML's int4


def block_quantize(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """fp32 [out, in] -> (int4 codes as int8 [out, in], scales [out, in / 32]) exactly as coremltools'
    linear_symmetric int4 per-block pass makes them from the fp16 constant; None where it would skip.
    Rows are quantised independently (a block lies within a row), so a block of ROWS rows at a time
    gives the same result with the quantiser's temporaries (float64 among them) bounded."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize import _utils as optimize_utils

    rows, cols = weight.shape if weight.ndim == 2 else (0, 0)
    if weight.ndim != 2 or weight.numel() <= MIN_QUANT_ELEMENTS or cols % INT4_BLOCK:
        return None
    data = np.empty((rows, cols), np.int8)
    scale = None
    for start in range(0, rows, ROWS):
        fp16 = weight[start:start + ROWS].detach().to(torch.float16).numpy()
        made = optimize_utils.compute_qparams_by_dtype(fp16, types.int4, "LINEAR_SYMMETRIC", [1, INT4_BLOCK])
        if made is None:
            return None
        codes, block_scale, offset = made
        assert offset is None, "symmetric quantisation has no offset"
        if scale is None:
            scale = np.empty((rows, cols // INT4_BLOCK), block_scale.dtype)
        data[start:start + ROWS], scale[start:start + ROWS] = codes, block_scale
    return data, scale


class Int4Weight(nn.Module):
    """A 2-D weight as int4 codes and per-block scales; `.weight` dequantises it (in the graph)."""

    dtype = torch.float32  # what `.weight` gives (MekiModel.weight_dtype reads it without dequantising)

    def __init__(self, weight: torch.Tensor, made: tuple[np.ndarray, np.ndarray]) -> None:
        super().__init__()
        data, scale = made
        self.register_buffer("qdata", torch.from_numpy(data))
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)))  # exact; fp16 in the package
        self.out_features, self.in_features = weight.shape

    @property
    def weight(self) -> torch.Tensor:
        import torchao  # noqa: F401  (registers torch.ops.torchao.dequantize_affine)

        return torch.ops.torchao.dequantize_affine(self.qdata, [1, INT4_BLOCK], self.scale, None, torch.int8,
                                                   QMIN, QMAX)


class Int4Linear(Int4Weight):
    def __init__(self, weight: torch.Tensor, made: tuple[np.ndarray, np.ndarray], bias: torch.Tensor | None) -> None:
        super().__init__(weight, made)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)


class Int4Embedding(Int4Weight):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


def share_dequantized(program: Any) -> int:
    """One dequantize node per weight in an ExportedProgram: a tied embedding is read twice (the
    lookup and the head), and two nodes over one buffer become two identical constants in MIL, which
    coremltools' const_deduplication then compares with np.allclose in float64 (3 x 1.2 GB at
    Qwen3-0.6B's vocabulary). Returns how many nodes were merged."""
    graph = program.graph_module.graph
    seen: dict[tuple, Any] = {}
    merged = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or str(node.target) != "torchao.dequantize_affine.default":
            continue
        key = (node.args, tuple(sorted(node.kwargs.items())))
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
            merged += 1
        else:
            seen[key] = node
    if merged:
        program.graph_module.recompile()
    return merged


def _quantized(module: nn.Module) -> nn.Module | None:
    if type(module) not in (nn.Linear, nn.Embedding):
        return None
    made = block_quantize(module.weight)
    if made is None:
        return None
    if isinstance(module, nn.Linear):
        return Int4Linear(module.weight, made, module.bias)  # a bias stays float, as the pass left it
    return Int4Embedding(module.weight, made)


def quantized_view(module: nn.Module) -> nn.Module:
    """`module` with its eligible weights int4, the caller's modules untouched: the modules on the
    path to a swapped weight are shallow copies (their other children and tensors are shared)."""
    changed = {}
    for name, child in module.named_children():
        new = _quantized(child)
        if new is None:
            view = quantized_view(child)
            new = view if view is not child else None
        if new is not None:
            changed[name] = new
    if not changed:
        return module
    view = copy.copy(module)
    view._modules = dict(module._modules, **changed)
    return view


@dataclass
class CoreMLQuantizer:
    """load_checkpoint's `prepare` for the coreml target with int4: each layer's weights become int4
    as it loads, then the embedding (and an untied head). The dense baseline shares the layers'
    modules, so it is not made here (`dense_layers` None: bundle.dense_baseline shares them)."""

    dense_layers: None = None

    def __call__(self, module: nn.Module) -> nn.Module | None:
        view = quantized_view(module)  # a layer; then the whole model (only the embedding and head are left)
        if isinstance(module, MekiModel):  # the loader keeps this object: it takes the view's children
            module._modules.update(view._modules)
            return None
        return view  # the loaded layer is replaced by it (its fp32 modules go with the original)
