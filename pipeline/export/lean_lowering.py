"""Lowering without ExecuTorch's no-op re-traces: the same program, a fraction of the passes' time.

Almost all of an ExecuTorch lowering's time is graph re-tracing: every pass that derives from
ExportPass re-runs each node of the graph under FakeTensor (symbolic shapes for the dynamic prefill),
whether or not it changed anything. Two kinds of re-trace change nothing on our graphs and are skipped
here, inside `lean_lowering()` only:

- the third `run_decompositions` of to_edge_transform_and_lower's EDGE_DO_NOT_DECOMP path (the whole
  Core ATen table, once the partitioner's ops are renamed out of its way): skipped when no node calls an
  op of the table. That is the rule ExecuTorch already applies to partitioners without
  check_op_support (`contains_any_call_fn_target_op`); the graph was functionalised by the first
  `run_decompositions({})` and decomposed by the second.
- the re-trace that ends each XNNPACK delegate pass (17 per delegated subgraph: batch-norm fusion,
  conv1d, PReLU, upsampling, SDPA matching, ...): skipped when the pass's own matching left every
  node as it was (same names, ops, arguments). Passes that rewrite nodes while re-tracing
  (ExportPass.call_operator overrides) always run.

Same bytes: tests/model/test_export_lean.py compares the .pte lowered with and without this, and
docs/export_scale.md gives the demo model's byte comparison.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Iterator

import torch

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


@contextlib.contextmanager
def lean_lowering(decompositions: bool = True, xnnpack_passes: bool = True) -> Iterator[None]:
    """Skip the no-op re-traces described above while lowering (not thread-safe across lowerings)."""
    with contextlib.ExitStack() as stack:
        if decompositions:
            stack.enter_context(_lean_decompositions())
        if xnnpack_passes:
            stack.enter_context(_lean_xnnpack_passes())
        yield
