"""Where MeKi's decode step goes, a part of its branch at a time (issue 16: "say where they go").

The MeKi branch of a layer, as the XNNPACK export runs it (fused_layers.FusedDecoderLayer.meki_branch):
  row     the layer's looked-up row e (a select on the program's meki_rows input)
  gate    v = e + sigmoid(W_gate h)          (activation quantisation, fully connected, sigmoid, add)
  out     z = W_out v, added to the residual (activation quantisation, fully connected, add)
  norm    RMSNorm_post(z)                     (square, mean as a [d -> 1] fully connected, rsqrt, multiply)
Five programs of one checkpoint are exported with the same backbone weights: the dense baseline (the same
backbone without the branch), the branch with only `out` (the row goes straight to W_out), `out + norm`,
`gate + out` and the whole branch (the product's program). They are timing programs: only `full` and
`dense` compute the model. Each decode step is timed in interleaved rounds of the raw programs
(`step_bench`, the runners' decode-thread rule) and counted with callgrind; a part's cost is the
difference it makes (gate: full - out+norm; norm: full - gate+out; row and out: out - dense).
`--outside` adds a sixth: in the branch's place one op that XNNPACK does not take (ExecuTorch's portable
`flip` of h), i.e. what a fused MeKi kernel outside the delegate would pay before computing anything: each
layer's partition split in two, one more delegate call per layer.

    python benchmarks/bench_meki_parts.py                  # demo pair's MeKi checkpoint, 8da4w, 100 rounds
    python benchmarks/bench_meki_parts.py --quant none --rounds 30
    python benchmarks/bench_meki_parts.py --outside        # and the cost of leaving the delegate
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_overhead import build_native, paired_ratio  # noqa: E402
from build_cache import files_stamp, reuse_or_build  # noqa: E402
from overhead_lib import (Program, add_step_args, callgrind_phases, decode_ops, host, host_line,  # noqa: E402
                          parse_step_args, wall_clock)

from pipeline.export.fused_layers import FusedDecoderLayer  # noqa: E402
from pipeline.export.quantize import EXECUTORCH_QUANTS  # noqa: E402
from pipeline.model import DecoderLayer  # noqa: E402

VARIANTS = {"dense": None, "out": frozenset({"out"}), "out+norm": frozenset({"out", "norm"}),
            "gate+out": frozenset({"gate", "out"}), "full": frozenset({"gate", "out", "norm"}),
            "outside": frozenset({"outside"})}
DEFAULT_VARIANTS = ("dense", "out", "out+norm", "gate+out", "full")


class PartialBranch(FusedDecoderLayer):
    """A MeKi layer whose branch keeps only `parts` of gate/out/norm (a timing program: its logits are
    not the model's unless all three are kept)."""

    def __init__(self, layer: DecoderLayer, parts: frozenset[str]) -> None:
        super().__init__(layer)
        self.parts = parts

    def meki_branch(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if "outside" in self.parts:  # a portable op (no XNNPACK flip): the layer's partition ends at h
            return torch.flip(h, [-1])
        v = rows + torch.sigmoid(self.fusion.gate_proj(h)) if "gate" in self.parts else rows
        z = self.out_proj(v)
        return self.post_norm(z) if "norm" in self.parts else z


def export_variant(folded: Path, name: str, out: Path, quant: str, a: argparse.Namespace) -> Path:
    """One timing program: the folded checkpoint loaded with its layers as `name` makes them (kept from an
    earlier run with the same inputs)."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.export.bundle import dense_baseline
    from pipeline.export.executorch_xnnpack import export_xnnpack
    from pipeline.export.registry import ExportSettings

    parts = VARIANTS[name]
    partial = parts is not None and parts != VARIANTS["full"]

    def prepare(module: torch.nn.Module) -> torch.nn.Module | None:
        return PartialBranch(module, parts) if isinstance(module, DecoderLayer) else None

    def build(tmp: Path) -> None:
        model, _ = load_checkpoint(folded, prepare=prepare if partial else None)
        if parts is None:
            model = dense_baseline(model)
        settings = ExportSettings(quant=quant, max_seq_len=a.max_seq_len, prefill_len=a.prefill_len)
        export_xnnpack(model.eval(), tmp, settings)

    key = {"variant": name, "quant": quant, "max_seq_len": a.max_seq_len, "prefill_len": a.prefill_len,
           "source": files_stamp(folded)}
    return reuse_or_build(out / name, key, build) / "model_xnnpack.pte"


def attribute(us: dict[str, float]) -> dict[str, float]:
    """Microseconds per decode step each part adds (differences of the variants' median steps)."""
    parts = {"row + out": us["out"] - us["dense"], "gate": us["full"] - us["out+norm"],
             "norm": us["full"] - us["gate+out"]}
    parts["interaction"] = us["full"] - us["dense"] - sum(parts.values())
    if "outside" in us:  # not a part of the branch: what leaving the delegate there costs by itself
        parts["outside"] = us["outside"] - us["dense"]
    return parts


def measure(tool: Path, ptes: dict[str, Path], rows: list[str], a: argparse.Namespace, threads: str) -> dict:
    progs = {n: Program(n, p, [] if n == "dense" else rows) for n, p in ptes.items()}
    res: dict = {"ops": {n: decode_ops(p) for n, p in ptes.items()}, "instr": {}, "rounds": {n: [] for n in progs}}
    if not a.no_callgrind:
        res["instr"] = {n: callgrind_phases(tool, p, a.prompt_len, a.new_tokens)["decode_instr_per_step"]
                        for n, p in progs.items()}
    names = list(progs)
    for i in range(a.rounds):  # every program once per round, the order rotated and reversed
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order if i % 2 == 0 else order[::-1]:
            res["rounds"][n].append(wall_clock(tool, progs[n], a.prompt_len, a.new_tokens,
                                               ["--decode-threads", threads]))
    step_us = {n: 1e6 / statistics.median(r["decode_tok_s"] for r in v) for n, v in res["rounds"].items()}
    res["step_us"] = step_us
    res["paired"] = {n: paired_ratio(res["rounds"][n], res["rounds"]["dense"]) for n in names if n != "dense"}
    res["parts_us"] = attribute(step_us)
    return res


def print_table(res: dict, a: argparse.Namespace, threads: str) -> None:
    print(f"\n{a.quant}, prompt {a.prompt_len} + {a.new_tokens} new tokens, {a.rounds} interleaved rounds, "
          f"decode on the {'calling thread' if threads == 'calling' else 'threadpool'}")
    print(f"{'program':9} {'XNNPACK nodes':>13} {'other ops':>9} {'delegate calls':>14} {'k instr/step':>12} "
          f"{'step us':>8} {'/dense paired (middle half)':>28} {'us over dense':>13}")
    dense_us = res["step_us"]["dense"]
    for n, us in res["step_us"].items():
        ops = res["ops"][n]
        xnn = sum(v for k, v in ops.items() if k.startswith("xnn:"))
        other = sum(v for k, v in ops.items() if not k.startswith("xnn:") and k != "<delegate>")
        instr = f"{res['instr'][n] / 1e3:12.1f}" if res["instr"] else f"{'-':>12}"
        p = res["paired"].get(n)
        ratio = f"{p['median']:.4f} ({p['q1']:.3f}-{p['q3']:.3f})" if p else "1"
        print(f"{n:9} {xnn:13d} {other:9d} {ops.get('<delegate>', 0):14d} {instr} {us:8.1f} {ratio:>28} "
              f"{us - dense_us:13.2f}")
    layers = res["layers"]
    print("\nper decode step (and per layer) each part of the branch adds:")
    for part, us in res["parts_us"].items():
        if part != "outside":
            print(f"  {part:12} {us:6.2f} us  ({us / layers * 1e3:5.0f} ns per layer)")
    if "outside" in res["parts_us"]:
        us, full = res["parts_us"]["outside"], res["step_us"]["full"] - dense_us
        print(f"\none op outside XNNPACK in the branch's place (a fused kernel's floor): {us:.2f} us "
              f"({us / layers * 1e3:.0f} ns per layer) against the whole branch inside XNNPACK: {full:.2f} us")
        if res["instr"]:
            d = res["instr"]["dense"]
            print(f"  by instructions: {(res['instr']['outside'] - d) / 1e3:.1f} k against "
                  f"{(res['instr']['full'] - d) / 1e3:.1f} k per step")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO / "models" / "demo" / "meki",
                    help="a MeKi checkpoint folder (train or folded form)")
    ap.add_argument("--quant", default="8da4w", choices=EXECUTORCH_QUANTS)
    add_step_args(ap)
    ap.set_defaults(rounds=100, new_tokens=128)  # each round is cheap: enough of them for +-0.5%
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_meki_parts")
    ap.add_argument("--json", type=Path, default=None, help="default: WORK/results-QUANT.json")
    ap.add_argument("--outside", action="store_true",
                    help="also time one op outside XNNPACK in the branch's place (a fused kernel's floor)")
    a = parse_step_args(ap, argv)
    from mobile_runtime.threads import decode_on_calling_thread
    from pipeline.checkpoint import CheckpointError, read_config
    from pipeline.fold import fold_checkpoint

    try:
        cfg, _ = read_config(a.checkpoint)
    except CheckpointError as e:
        ap.error(str(e))
    if not cfg.has_meki:
        ap.error(f"{a.checkpoint} is a dense checkpoint: the parts are MeKi's")
    tool = build_native() / "step_bench"
    work = a.work / a.checkpoint.name
    folded = a.checkpoint
    if not cfg.folded:
        folded = reuse_or_build(work / "folded", {"source": files_stamp(a.checkpoint)},
                                lambda tmp: fold_checkpoint(a.checkpoint, tmp, overwrite=True))
    names = DEFAULT_VARIANTS + (("outside",) if a.outside else ())
    ptes = {n: export_variant(folded, n, work / a.quant, a.quant, a) for n in names}
    threads = "calling" if decode_on_calling_thread("auto", cfg.to_dict()) else "pool"
    res = measure(tool, ptes, ["--rows", f"{cfg.num_layers},{cfg.d_mem}"], a, threads)
    res |= {"layers": cfg.num_layers, "quant": a.quant, "decode_threads": threads, "config": cfg.to_dict(),
            "prompt_len": a.prompt_len, "new_tokens": a.new_tokens}
    res["host"] = host()
    print_table(res, a, threads)
    print(host_line(res["host"]))
    out = a.json or work / f"results-{a.quant}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
