"""Lowering without ExecuTorch's no-op re-traces: the same program, a fraction of the passes' time.

Almost all of an ExecuTorch lowering's time is graph re-tracing: every pass that derives from
ExportPass re-runs each node of the graph under FakeTensor (symbolic shapes for the dynamic prefill),
whether or not it changed anything. Two kinds of re-trace change nothing on our graphs and are skipped
here, inside `lean_lowering()` only:

- the later `run_decompositions` calls of to_edge_transform_and_lower's partitioner path
  (_gen_edge_manager_for_partitioners: `{}` to functionalise, then the Core ATen table less the
  partitioner's ops, then the whole table once those ops are renamed out of its way): after the first,
  a call whose table names no op of the graph is skipped. That is ExecuTorch's own rule for partitioners
  without check_op_support (`contains_any_call_fn_target_op`). On our graphs the last call always
  goes (the second decomposes silu and item).
- the re-trace that ends each XNNPACK delegate pass (17 per delegated subgraph: batch-norm fusion,
  conv1d, PReLU, upsampling, SDPA matching, ...): skipped when the pass's own matching left every
  node as it was (same names, ops, arguments). Passes that rewrite nodes while re-tracing
  (ExportPass.call_operator overrides) always run. The two pattern passes (SDPA, bilinear upsampling:
  SubgraphMatcher over the whole subgraph, ~0.4 s each per delegated subgraph) are skipped outright
  when the subgraph lacks an op of every one of their patterns.

Same bytes: tests/model/test_export_lean.py compares the .pte lowered with and without this, and
docs/export_scale.md gives the demo model's byte comparison.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import sys
import threading
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)
_STATE = threading.local()  # per thread: the XNNPACK pass whose re-trace may be skipped, its graph before

# sym_size/sym_stride/sym_numel have entries in the Core ATen table but re-trace to themselves
_SYM_OPS = ("aten.sym_size", "aten.sym_stride", "aten.sym_numel", "aten.sym_storage_offset")


def calls_any(gm: torch.fx.GraphModule, table: dict[Any, Callable]) -> bool:
    """Whether a node of gm (or of a control-flow subgraph) calls an op of a decomposition table."""
    from executorch.exir.graph_module import get_control_flow_submodules

    queue = [gm]
    while queue:
        g = queue.pop()
        for node in g.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target if isinstance(node.target, torch._ops.OpOverload) else getattr(node.target, "_op", node.target)
            if target in table and not str(target).startswith(_SYM_OPS):
                return True
        queue.extend(sub for _, sub, _ in get_control_flow_submodules(g))
    return False


def _structure(gm: torch.fx.GraphModule) -> list[tuple[str, ...]]:
    return [(n.name, n.op, str(n.target), repr(n.args), repr(n.kwargs)) for n in gm.graph.nodes]


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    old = owner.__dict__.get(name, missing)  # absent: inherited, so deleted again afterwards
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


def _lean_decompositions() -> contextlib.AbstractContextManager:
    """to_edge_transform_and_lower's partitioner path (_gen_edge_manager_for_partitioners) runs
    run_decompositions({}) (functionalise), then with the Core ATen table less the partitioner's ops, then
    with the whole table once those are renamed out of the way. After the first, a call whose table
    names no op of the graph re-traces it unchanged: the program is returned as it is. Only calls
    from that function are touched (to_edge, pattern graphs and the rest run as they are)."""
    from executorch.exir.program import _program
    from torch.export import ExportedProgram

    original = ExportedProgram.run_decompositions
    caller = _program._gen_edge_manager_for_partitioners.__code__

    def run_decompositions(self: ExportedProgram, decomp_table: Any = None, *args: Any, **kwargs: Any) -> Any:
        if decomp_table and sys._getframe(1).f_code is caller and not calls_any(self.graph_module, decomp_table):
            return self
        return original(self, decomp_table, *args, **kwargs)

    return _patched(ExportedProgram, "run_decompositions", run_decompositions)


def _pattern_targets(pass_: type) -> list[set[str]] | None:
    """The ops of each pattern a SubgraphMatcher pass looks for (None: not such a pass)."""
    from executorch.backends.xnnpack._passes.convert_to_sdpa import ConvertToSDPAPass
    from executorch.backends.xnnpack._passes.convert_to_upsample_bilinear2d import ConvertToUpsampleBilinear2d
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    graphs = {ConvertToSDPAPass: sdpa.get_graphs, ConvertToUpsampleBilinear2d: bilinear_2d.get_graphs}.get(pass_)
    if graphs is None:
        return None
    return [{str(n.target) for n in g.graph.nodes if n.op == "call_function"} for g in graphs()]


def _may_match(pass_: type, gm: torch.fx.GraphModule) -> bool:
    """SubgraphMatcher matches a call only to a call of the same op: a pattern with an op the graph
    never calls cannot match. Compared by name, so an unsure case still runs the pass."""
    patterns = _pattern_targets(pass_)
    if patterns is None:
        return True
    present = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    return any(p <= present for p in patterns)


def _lean_xnnpack_passes() -> contextlib.AbstractContextManager:
    """Each XNNPACK pass ends in ExportPass.call (a full re-trace); skipped when the pass's matching
    changed no node, for passes whose re-trace itself rewrites nothing."""
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack._passes.xnnpack_pass import XNNPACKPass
    from executorch.exir.pass_base import ExportPass, PassResult
    from executorch.exir.program._program import _transform

    retrace = ExportPass.call
    hooks = ("call_operator", "placeholder", "output", "call_submodule", "call_getitem", "call_cond",
             "call_map", "call_delegate", "call_sym")

    def rewrites_while_tracing(cls: type) -> bool:
        return any(getattr(cls, h, None) is not getattr(ExportPass, h, None) for h in hooks)

    def transform(self: XNNPACKPassManager) -> Any:
        ep = self.exported_program
        for pass_ in self.passes:
            if not _may_match(pass_, ep.graph_module):
                continue  # a pattern pass none of whose patterns can match: it would only re-trace
            lean = issubclass(pass_, XNNPACKPass) and not rewrites_while_tracing(pass_)
            transform_pass = pass_(ep) if issubclass(pass_, XNNPACKPass) else pass_()
            _STATE.pending = (transform_pass, ep.graph_module, _structure(ep.graph_module)) if lean else None
            try:
                ep = _transform(ep, transform_pass)
            finally:
                _STATE.pending = None
        return ep

    def call(self: ExportPass, graph_module: torch.fx.GraphModule) -> PassResult:
        pending = getattr(_STATE, "pending", None)
        if pending is not None and pending[0] is self and pending[1] is graph_module \
                and _structure(graph_module) == pending[2]:
            return PassResult(graph_module, False)
        return retrace(self, graph_module)

    stack = contextlib.ExitStack()
    stack.enter_context(_patched(XNNPACKPassManager, "transform", transform))
    stack.enter_context(_patched(ExportPass, "call", call))
    return stack


VERIFIED_EXECUTORCH = "1.5.1"  # the passes and call sites above are this version's (pyproject pins it)


def enabled() -> bool:
    """On unless MEKI_LEAN_LOWERING=0, and only with the ExecuTorch version it was checked against."""
    if os.environ.get("MEKI_LEAN_LOWERING", "1") == "0":
        return False
    try:
        version = importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        return False
    if version != VERIFIED_EXECUTORCH:
        log.info("executorch %s (not %s): lowering with every re-trace", version, VERIFIED_EXECUTORCH)
        return False
    return True


@contextlib.contextmanager
def lean_lowering(decompositions: bool = True, xnnpack_passes: bool = True) -> Iterator[None]:
    """Skip the no-op re-traces described above while lowering (one lowering at a time per process)."""
    with contextlib.ExitStack() as stack:
        if enabled():
            if decompositions:
                stack.enter_context(_lean_decompositions())
            if xnnpack_passes:
                stack.enter_context(_lean_xnnpack_passes())
        yield
