"""What one tiny XNNPACK node costs, however little it computes (docs/speed.md, thirteenth session).

ExecuTorch's XNNPACK executor reshapes, sets up and invokes every node of a delegate on every call, so a
small model's decode step pays per node, not per byte: this is where MeKi's ~10 small ops per layer go at
the demo's size. Each program here is a chain of K ops on a [1, 1, WIDTH] row, lowered with ExecuTorch's
XNNPACK partitioner and executed through its Python runtime on one thread; the per-node figure is the
chain's time per call less the time of a one-node program, divided by K (best of --repeats timings of
--calls calls each).

    python benchmarks/bench_xnnpack_node.py [--chain 64] [--width 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

KINDS = ("add", "multiply", "sigmoid", "fully_connected")


class Chain(torch.nn.Module):
    def __init__(self, k: int, kind: str, width: int) -> None:
        super().__init__()
        self.k, self.kind = k, kind
        self.fc = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False) for _ in range(k if kind == KINDS[3] else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.k):
            if self.kind == "add":
                x = x + 1.0
            elif self.kind == "multiply":
                x = x * x
            elif self.kind == "sigmoid":
                x = torch.sigmoid(x)
            else:
                x = self.fc[i](x)
        return x + 0.5  # one node even for k = 0: a delegate call to subtract


def load(k: int, kind: str, width: int, work: Path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    ep = torch.export.export(Chain(k, kind, width).eval(), (torch.randn(1, 1, width),))
    pte = work / f"{kind}-{k}.pte"
    pte.write_bytes(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    program = Runtime.get().load_program(str(pte))
    return program, program.load_method("forward")  # the program must outlive its method


def seconds_per_call(method, width: int, calls: int, repeats: int) -> float:
    x = torch.randn(1, 1, width)
    for _ in range(200):
        method.execute([x])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            method.execute([x])
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", type=int, default=64, help="ops per program (K)")
    ap.add_argument("--width", type=int, default=32, help="the row's width (MeKi's d_mem at the demo: 32)")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(1)  # before any program loads: one thread, as small models decode
    with tempfile.TemporaryDirectory(prefix="xnn-node-") as tmp:
        work = Path(tmp)
        _, empty = load(0, "add", a.width, work)
        base = seconds_per_call(empty, a.width, a.calls, a.repeats)
        out = {"width": a.width, "chain": a.chain, "one_node_program_us": base * 1e6, "ns_per_node": {}}
        for kind in KINDS:
            _, method = load(a.chain, kind, a.width, work)
            out["ns_per_node"][kind] = (seconds_per_call(method, a.width, a.calls, a.repeats) - base) / a.chain * 1e9
    print(f"XNNPACK node on a [1, 1, {a.width}] row, one thread (one-node program: {out['one_node_program_us']:.2f} us "
          f"per call through the Python runtime):")
    for kind, ns in out["ns_per_node"].items():
        print(f"  {kind:16} {ns:7.0f} ns per node")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
