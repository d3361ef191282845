"""ExecuTorch targets: one .pte with `prefill` and `decode` methods sharing the KV cache buffers.

The cache stays inside the program as mutable buffers (share_mutable_buffers makes both methods
see the same memory); prefill takes 1..prefill_len tokens (dynamic), decode exactly one.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mobile_runtime.manifest import Backbone
from pipeline.export.custom_attention import LLAMA_KERNELS, use_custom_attention
from pipeline.export.fused_layers import fuse_layers
from pipeline.export.registry import ExportError, ExportSettings, register_target
from pipeline.export.step import example_inputs, make_step, method_spec
from pipeline.model import MekiModel

log = logging.getLogger(__name__)
EXECUTORCH_QUANTS = ("none", "8da4w", "int8wo")


def untie_lm_head(model: torch.nn.Module) -> None:
    """A tied head is F.linear over the embedding table, which the Linear-only quantisers skip: the
    largest matrix of a small model would stay fp32 (0.6B: 155 M of 596 M weights). Give it its own
    Linear with the same values, as ExecuTorch's own LLM export has (`output`), so it is quantised."""
    if getattr(model, "lm_head", "absent") is None:
        weight = model.embed.weight
        model.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        model.lm_head.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)


def quantize_weights(model: torch.nn.Module, quant: str, group_size: int = 32) -> None:
    """torchao in place: 8da4w (int8 dynamic activations, int4 grouped weights) or int8 weight-only."""
    if quant == "none":
        return
    untie_lm_head(model)
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    if quant == "8da4w":
        # int4 groups must tile the input dimension; a layer that cannot stays fp32
        fits = lambda m, _fqn: isinstance(m, torch.nn.Linear) and m.in_features % group_size == 0  # noqa: E731
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                               weight_granularity=PerGroup(group_size)), filter_fn=fits)
    elif quant == "int8wo":
        # torchao's IntxWeightOnlyConfig lowers through XNNPACK to wrong numbers (~1e3 off, ExecuTorch
        # 1.5.1); ExecuTorch's own int8 weight-only handler swaps Linear layers and computes correctly.
        from executorch.examples.models.llama.source_transformation.quantize import WeightOnlyInt8QuantHandler

        WeightOnlyInt8QuantHandler(model).quantized_model()
    else:
        raise ValueError(f"unknown quant {quant!r} (valid: {', '.join(EXECUTORCH_QUANTS)})")


def export_methods(model: MekiModel, settings: ExportSettings, llama_ops: bool = False) -> dict[str, Any]:
    """torch.export of prefill (dynamic T in [1, prefill_len]) and decode (T = 1) over one cached model.

    llama_ops (the XNNPACK form): attention through ExecuTorch's llama::update_cache / custom_sdpa
    (in-place cache, no head expansion, attends only to filled positions; the runtime then needs
    those kernels), and layers rewritten so XNNPACK takes them whole (fused_layers.py)."""
    from torch.export import Dim, export

    model = copy.deepcopy(model).eval()
    model.setup_cache(settings.max_seq_len)
    if llama_ops:
        fuse_layers(use_custom_attention(model))
    quantize_weights(model, settings.quant)
    step = make_step(model)
    cfg = model.cfg
    seq = Dim("seq", min=1, max=settings.prefill_len)
    dyn = {"tokens": {1: seq}, "input_pos": {0: seq}} | ({"meki_rows": {1: seq}} if cfg.has_meki else {})
    with torch.no_grad():
        return {"prefill": export(step, example_inputs(cfg, settings.prefill_len), dynamic_shapes=dyn, strict=False),
                "decode": export(step, example_inputs(cfg, 1, settings.prefill_len), strict=False)}


def table_shaped_tensors(programs: dict[str, Any], cfg: Any) -> list[str]:
    """Names of weights/constants shaped like a MeKi table ([V, m], [V, L, m], [L, V, m]): must be none."""
    v, L, m = cfg.vocab_size, cfg.num_layers, cfg.d_mem
    bad_shapes = {(v, m), (v, L, m), (L, v, m)}
    found = []
    for method, ep in programs.items():
        for name, t in list(ep.state_dict.items()) + list(ep.constants.items()):
            if "rope_" in name:  # RoPE cos/sin [max_seq_len, head_dim] may share a table's shape
                continue
            if tuple(getattr(t, "shape", ())) in bad_shapes:
                found.append(f"{method}:{name}{tuple(t.shape)}")
    return found


def refuse_tables(programs: dict[str, Any], cfg: Any, target: str) -> None:
    """The exported backbone must never hold the tables: they are the runtime's lookup."""
    tables = table_shaped_tensors(programs, cfg)
    if tables:
        raise ExportError(f"{target}: the graph holds MeKi-table-shaped tensors: {', '.join(tables)}")


def delegation_summary(edge: Any) -> dict[str, int]:
    """Delegate calls per method plus the ops left to the portable kernels (logged, and kept in the manifest)."""
    summary: dict[str, int] = {}
    for name in ("prefill", "decode"):
        graph = edge.exported_program(name).graph_module.graph
        calls = [n for n in graph.nodes if n.op == "call_function"]
        delegated = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
        rest = Counter(str(getattr(n.target, "__name__", n.target)) for n in calls
                       if "delegate" not in str(n.target) and "getitem" not in str(n.target))
        summary[f"{name}.delegate_calls"] = delegated
        summary[f"{name}.portable_ops"] = sum(rest.values())
        log.info("%s: %d delegate calls; not delegated: %s", name, delegated, dict(rest))
    return summary


def lower_to_pte(model: MekiModel, out: Path, settings: ExportSettings, partitioners: list[Any],
                 target: str, llama_ops: bool = False) -> Backbone:
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    t0 = time.perf_counter()
    programs = export_methods(model, settings, llama_ops)
    refuse_tables(programs, model.cfg, target)
    edge = to_edge_transform_and_lower(programs, partitioner=partitioners,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    delegated = delegation_summary(edge)
    program = edge.to_executorch(ExecutorchBackendConfig(
        passes=[InitializedMutableBufferPass(["cache"])],  # the KV cache starts as zeros, not garbage
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=True),
        emit_mutable_buffer_names=True))
    with open(out, "wb") as fh:
        program.write_to_file(fh)
    cfg = model.cfg
    return Backbone(target=target, file=out.name, quant=settings.quant, max_seq_len=settings.max_seq_len,
                    prefill_len=settings.prefill_len, kv_cache="internal",
                    methods={"prefill": method_spec(cfg, settings.prefill_len, "prefill"),
                             "decode": method_spec(cfg, 1, "decode")},
                    delegated=delegated, extra={"prefill_dynamic": True, "export_s": round(time.perf_counter() - t0, 1)}
                    | ({"kernels": [LLAMA_KERNELS]} if llama_ops else {}))


@register_target("executorch-xnnpack", "ExecuTorch, XNNPACK CPU delegate (runs here)", "executorch",
                 ("executorch", "torchao"), EXECUTORCH_QUANTS)
def export_xnnpack(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return lower_to_pte(model, out_dir / "model_xnnpack.pte", settings, [XnnpackPartitioner()], "executorch-xnnpack",
                       llama_ops=True)
