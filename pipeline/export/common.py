"""What every export backend shares; each backend module is a short recipe over these parts.

- the exported entry points (one generation step, with or without the MeKi rows) and their inputs,
- the manifest's method spec, the dynamic sequence dimension,
- the table guard (the backbone never holds a MeKi table: the runtime owns the lookup),
- the slice-written KV cache (for delegates that own the cache as state),
- ExecuTorch lowering and its delegation summary (shared by every .pte target).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from contract.manifest import Backbone, MethodSpec, TensorSpec
from pipeline.config import ModelConfig
from pipeline.export.registry import ExportError, ExportSettings
from pipeline.model import KVCache, MekiModel
from pipeline.profile import stage

log = logging.getLogger(__name__)
SEQ_AXIS = {"tokens": 1, "input_pos": 0, "meki_rows": 1}  # the axis that is T in a step's inputs


class NormAt(nn.Module):
    """The final norm at one position ([1] int32 index) only: prefill's logits for its last real token
    (the LiteRT graphs pad prefill to a fixed chunk and pass last_index)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.index: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x if self.index is None else x.index_select(1, self.index))


class MekiStep(nn.Module):
    """(tokens [1, T] int64, input_pos [T] int64, meki_rows [1, T, L, m] f32) -> logits [1, V] (last position)."""

    def __init__(self, model: MekiModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, meki_rows: torch.Tensor) -> torch.Tensor:
        return self.model.last_logits(tokens, input_pos, meki_rows)


class DenseStep(nn.Module):
    """(tokens [1, T] int64, input_pos [T] int64) -> logits [1, V] (last position); no MeKi input."""

    def __init__(self, model: MekiModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.model.last_logits(tokens, input_pos)


def make_step(model: MekiModel) -> nn.Module:
    if model.cfg.has_meki and not model.cfg.folded:
        raise ValueError("export takes the folded (inference-form) model: fold it first")
    return MekiStep(model) if model.cfg.has_meki else DenseStep(model)


def example_inputs(cfg: ModelConfig, seq: int, start: int = 0,
                   index_dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, ...]:
    """tokens [1, T], input_pos [T] (index_dtype: int32 where the runtime has no int64), meki_rows [1, T, L, m]."""
    tokens = (torch.arange(seq, dtype=index_dtype) % cfg.vocab_size)[None]
    pos = torch.arange(start, start + seq, dtype=index_dtype)
    if not cfg.has_meki:
        return tokens, pos
    return tokens, pos, torch.zeros(1, seq, cfg.num_layers, cfg.d_mem)


def method_spec(cfg: ModelConfig, seq: int, entry: str, index_dtype: str = "int64") -> MethodSpec:
    """The manifest's view of one step: inputs in feeding order, the logits output."""
    inputs = [TensorSpec("tokens", [1, seq], index_dtype), TensorSpec("input_pos", [seq], index_dtype)]
    if cfg.has_meki:
        inputs.append(TensorSpec("meki_rows", [1, seq, cfg.num_layers, cfg.d_mem], "float32"))
    return MethodSpec(inputs, [TensorSpec("logits", [1, cfg.vocab_size], "float32")], entry)


def step_methods(cfg: ModelConfig, settings: ExportSettings, prefill: str = "prefill", decode: str = "decode",
                 index_dtype: str = "int64") -> dict[str, MethodSpec]:
    """prefill (prefill_len tokens) and decode (one token) specs, naming the program's entry points."""
    return {"prefill": method_spec(cfg, settings.prefill_len, prefill, index_dtype),
            "decode": method_spec(cfg, 1, decode, index_dtype)}


def dynamic_seq(cfg: ModelConfig, prefill_len: int) -> dict[str, dict[int, Any]]:
    """torch.export dynamic_shapes: T in [1, prefill_len] on every per-token input."""
    from torch.export import Dim

    seq = Dim("seq", min=1, max=prefill_len)
    names = ("tokens", "input_pos") + (("meki_rows",) if cfg.has_meki else ())
    return {name: {SEQ_AXIS[name]: seq} for name in names}


def table_shapes(cfg: ModelConfig | dict[str, Any]) -> set[tuple[int, ...]]:
    """Shapes a MeKi table would have in a graph ([V, m], [V, L, m], [L, V, m]); empty for dense."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    v, L, m = get("vocab_size"), get("num_layers"), get("d_mem", 0)
    return {(v, m), (v, L, m), (L, v, m)} if m else set()


def table_shaped_tensors(programs: dict[str, Any], cfg: ModelConfig) -> list[str]:
    """Names of weights/constants of exported programs shaped like a MeKi table: must be none."""
    bad_shapes, found = table_shapes(cfg), []
    for method, ep in programs.items():
        for name, t in list(ep.state_dict.items()) + list(ep.constants.items()):
            if "rope_" in name:  # RoPE cos/sin [max_seq_len, head_dim] may share a table's shape
                continue
            if tuple(getattr(t, "shape", ())) in bad_shapes:
                found.append(f"{method}:{name}{tuple(t.shape)}")
    return found


def refuse_tables(found: list[str], target: str) -> None:
    """The exported backbone must never hold the tables: they are the runtime's lookup."""
    if found:
        raise ExportError(f"{target}: the graph holds MeKi-table-shaped tensors: {', '.join(found)}")


class SliceKVCache(KVCache):
    """KV cache written as one contiguous slice at input_pos[0] (Core ML has no index_copy / scatter
    into state); positions in a step are consecutive, which prefill and decode guarantee."""

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # input_pos: [T] consecutive; k, v: [B, Hkv, T, hd] -> the whole cache [B, Hkv, S, hd]
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + k.shape[2] <= self.k.shape[2])
        self.k[:, :, start:start + k.shape[2]] = k
        self.v[:, :, start:start + v.shape[2]] = v
        return self.k, self.v


def share_weights_copy(model: MekiModel) -> MekiModel:
    """A copy of the module tree that shares every parameter and buffer with `model` (no weight is
    copied): export-time changes (a KV cache, quantised weights, which replace the Parameter) go to
    the copy's modules and leave `model` as it was."""
    memo: dict[int, Any] = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo).eval()


def with_slice_cache(model: MekiModel, max_seq_len: int) -> MekiModel:
    """A copy of `model` (weights shared) with a static slice-written KV cache of max_seq_len positions."""
    model = share_weights_copy(model)
    model.setup_cache(max_seq_len)
    cfg = model.cfg
    for layer in model.layers:
        layer.attn.cache = SliceKVCache(1, cfg.num_kv_heads, max_seq_len, cfg.head_dim, model.weight_dtype)
    return model


def delegation_summary(edge: Any) -> dict[str, int]:
    """Delegate calls and ops left outside any delegate, per method (logged with the delegate ids)."""
    summary: dict[str, int] = {}
    for name in sorted(edge.methods):
        gm = edge.exported_program(name).graph_module
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        delegates = [n for n in calls if "executorch_call_delegate" in str(n.target)]
        ids = Counter(getattr(gm, d.args[0].target).backend_id for d in delegates)
        rest = Counter(str(getattr(n.target, "__name__", n.target)) for n in calls
                       if n not in delegates and "getitem" not in str(n.target))
        summary[f"{name}.delegate_calls"] = len(delegates)
        summary[f"{name}.portable_ops"] = sum(rest.values())
        log.info("%s: delegates %s; not delegated: %s", name, dict(ids), dict(rest))
    return summary


def _same(t: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor:
    return t


@contextlib.contextmanager
def weights_shared_on_deepcopy(programs: dict[str, Any]) -> Iterator[None]:
    """ExecuTorch's to_edge deep-copies every ExportedProgram, weights included: one full copy of the
    model per method. The weights are only read from here on, so those copies may share them: each
    weight answers deepcopy with itself while lowering (an instance attribute, removed afterwards)."""
    tensors = {id(t): t for ep in programs.values()
               for t in list(ep.state_dict.values()) + list(ep.constants.values()) if isinstance(t, torch.Tensor)}
    for t in tensors.values():
        t.__deepcopy__ = functools.partial(_same, t)
    try:
        yield
    finally:
        for t in tensors.values():
            del t.__deepcopy__


def lower_to_pte(programs: dict[str, Any], cfg: ModelConfig, out: Path, partitioners: list[Any], target: str,
                 shared_cache: bool, zero_cache: bool = True, aliases: dict[str, str] | None = None) -> dict[str, int]:
    """Table guard, partition + lower, write the .pte; returns the delegation summary.
    aliases: {method: lowered method}: entry points added over methods already lowered (alias_methods).

    shared_cache: the methods share the KV cache as ExecuTorch mutable buffers; otherwise the
    delegate owns it (one method). zero_cache: the shared cache starts as zeros, serialised into the
    .pte (2·L·S·Hkv·hd floats, read at every load); not needed when the attention reads only the
    positions already written (llama::custom_sdpa), as ExecuTorch's own LLM export does."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    from pipeline.export.lean_lowering import lean_lowering

    refuse_tables(table_shaped_tensors(programs, cfg), target)
    try:
        with stage("to_edge+partition"), weights_shared_on_deepcopy(programs), lean_lowering():
            edge = to_edge_transform_and_lower(programs, partitioner=partitioners,
                                               compile_config=EdgeCompileConfig(_check_ir_validity=False))
        programs.clear()  # the edge programs replace them
        if aliases:
            edge = alias_methods(edge, aliases)
        delegated = delegation_summary(edge)
        with stage("to_executorch"):
            program = edge.to_executorch(ExecutorchBackendConfig(
                passes=[InitializedMutableBufferPass(["cache"])] if shared_cache and zero_cache else [],
                memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=shared_cache),
                emit_mutable_buffer_names=True))
        with stage("serialise"), open(out, "wb") as fh:
            program.write_to_file(fh)
    finally:  # a lowering that failed half-way (a full disk, an interrupt) must not keep its graphs either
        forget_lowered_graphs()
    return delegated


def alias_methods(edge: Any, aliases: dict[str, str]) -> Any:
    """More entry points over methods already lowered: {new name: lowered method}. Each is its own copy
    (to_executorch plans every method in place); the delegates' blobs and named data are the same
    bytes, which ExecuTorch's emitter and named-data store keep once."""
    from executorch.exir import EdgeProgramManager

    methods = {name: edge.exported_program(name) for name in edge.methods}
    for alias, source in aliases.items():
        methods[alias] = copy.deepcopy(methods[source])
    return EdgeProgramManager(methods, edge._config_methods, edge.compile_config)


def forget_lowered_graphs() -> None:
    """ExecuTorch (1.5.1) and torch keep the graphs lowered alive in module- and class-level caches,
    with their node metadata, the modules holding their weights and each delegate's serialised blobs:
    exir.backend.utils.is_same_node's unbounded lru_cache (keyed by nodes); each partitioner config
    module's WhyNoPartition (its last node); and torch's fake-tensor dispatch caches, whose keys hold
    the call_delegate arguments (the LoweredBackendModules with their NamedDataStoreOutput): the
    class-wide one and each ShapeEnv's, the ShapeEnvs of dynamic-shape exports being kept alive by the
    lru_caches on ShapeEnv's own methods. Dropped after every lowering, so the next bundle starts low
    (at the Qwen3-1.7B widths 1.05 GB of blobs per 4 layers stayed resident while the dense one lowered)."""
    from executorch.exir.backend.utils import WhyNoPartition, is_same_node
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    is_same_node.cache_clear()
    for name, module in list(sys.modules.items()):
        if name.startswith("executorch.") and module is not None:
            for value in list(vars(module).values()):
                if issubclass(type(value), WhyNoPartition):  # type(): isinstance looks up __class__ (dead proxies raise)
                    value.node = None
    FakeTensorMode.cache_clear()
    for method in vars(ShapeEnv).values():  # memo caches keyed by the ShapeEnv itself
        if callable(getattr(method, "cache_clear", None)):
            method.cache_clear()
    for obj in gc.get_objects():  # a ShapeEnv still referenced elsewhere keeps its own cache
        cache = getattr(obj, "fake_tensor_cache", None) if issubclass(type(obj), ShapeEnv) else None
        if isinstance(cache, dict):
            cache.clear()


def pte_backbone(target: str, out: Path, settings: ExportSettings, methods: dict[str, MethodSpec],
                 delegated: dict[str, int], t0: float, **extra: Any) -> Backbone:
    """The manifest entry of a .pte whose KV cache lives inside the program."""
    return Backbone(target=target, file=out.name, quant=settings.quant, max_seq_len=settings.max_seq_len,
                    prefill_len=settings.prefill_len, kv_cache="internal", methods=methods, delegated=delegated,
                    extra={"prefill_dynamic": True, "export_s": round(time.perf_counter() - t0, 1), **extra})


def export_steps(model: MekiModel, settings: ExportSettings, llama_ops: bool = False,
                 decode: bool = True) -> dict[str, Any]:
    """torch.export of prefill (dynamic T in [1, prefill_len]) and decode (T = 1; only where `decode`) over
    ONE cached, quantised copy of the model: both methods see the same weights and KV-cache buffers. The
    copy shares the weights; a model already quantised with settings.quant is not quantised again.

    llama_ops (the XNNPACK form): attention through ExecuTorch's llama::update_cache / custom_sdpa
    (in-place cache, no head expansion, attends only to filled positions; the runtime then needs
    those kernels), and layers rewritten so XNNPACK takes them whole (fused_layers.py)."""
    from torch.export import export

    from pipeline.export.custom_attention import use_custom_attention
    from pipeline.export.fused_layers import fuse_layers, is_fused
    from pipeline.export.quantize import quantize_weights, quantized_as

    done, fused = quantized_as(model), is_fused(model)
    # the XNNPACK form quantises after fusing: only a model fused and quantised as it loaded comes quantised
    unfused_quantised = done != "none" and llama_ops and not fused
    if done not in ("none", settings.quant) or unfused_quantised or (fused and not llama_ops):
        raise ExportError(f"the model was {'fused and ' if fused else ''}quantised as {done} before export; "
                          "this export fuses and quantises it itself")
    with stage("copy"):
        model = share_weights_copy(model)
        model.setup_cache(settings.max_seq_len)
        if llama_ops:
            fuse_layers(use_custom_attention(model))
    if done == "none":
        with stage("quantise"):
            quantize_weights(model, settings.quant)
    step, cfg = make_step(model), model.cfg
    programs = {}
    with torch.no_grad():
        with stage("torch.export prefill"):
            programs["prefill"] = export(step, example_inputs(cfg, settings.prefill_len),
                                         dynamic_shapes=dynamic_seq(cfg, settings.prefill_len), strict=False)
        if decode:
            with stage("torch.export decode"):
                programs["decode"] = export(step, example_inputs(cfg, 1, settings.prefill_len), strict=False)
    return programs


def lower_shared_cache(model: MekiModel, out: Path, settings: ExportSettings, partitioners: list[Any],
                       target: str, llama_ops: bool = False) -> Backbone:
    """The usual .pte recipe: `prefill` + `decode` methods sharing the in-program KV cache.

    decode_program "prefill" (XNNPACK's default) lowers only prefill, whose T in [1, prefill_len] covers
    T = 1, and makes decode a second entry point to it: one lowering instead of two, as ExecuTorch's own
    LLM export runs one `forward` for both (docs/export_scale.md: ~0.4% more instructions per decode step
    at the demo's size, 0.003% at Qwen3-0.6B's widths). The manifest's methods are the same either way."""
    from pipeline.export.custom_attention import LLAMA_KERNELS
    from pipeline.export.registry import decode_program as which_decode

    t0 = time.perf_counter()
    decode_program = which_decode(target, settings)
    programs = export_steps(model, settings, llama_ops, decode=decode_program == "own")
    delegated = lower_to_pte(programs, model.cfg, out, partitioners, target, shared_cache=True,
                             zero_cache=not llama_ops,  # custom_sdpa never reads an unwritten position
                             aliases={} if decode_program == "own" else {"decode": "prefill"})
    kernels = {"kernels": [LLAMA_KERNELS]} if llama_ops else {}  # the runtime must register them
    return pte_backbone(target, out, settings, step_methods(model.cfg, settings), delegated, t0,
                        decode_program=decode_program, **kernels)
