"""Benchmark: export MeKi + dense bundles at the paper's shapes; wall time and peak RSS per stage.

    python benchmarks/bench_export.py --shape qwen3-0.6b --target executorch-xnnpack --quant 8da4w
    python benchmarks/bench_export.py --shape qwen3-1.7b --target executorch-xnnpack --quant 8da4w --layers 4

Random weights at the real shapes (bf16 on disk, as Qwen3 ships) are streamed into a train-form
checkpoint a block of rows at a time, so generating it never holds the model in memory (cached in
--work between runs). Then `export_bundles` runs under pipeline.profile's StageProfiler: load, fold,
copies, quantisation, torch.export per method, lowering, serialisation, per bundle. The table goes
to stdout, the figures to --json. --layers cuts the layer count (same widths) for a quick profile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import CheckpointInfo, write_info  # noqa: E402
from pipeline.config import ModelConfig, preset  # noqa: E402
from pipeline.export.registry import DECODE_PROGRAMS, ExportError  # noqa: E402
from pipeline.memory_limit import limited_memory  # noqa: E402
from pipeline.model import MekiModel  # noqa: E402
from pipeline.profile import StageProfiler, release, save_json  # noqa: E402
from pipeline.tensor_io import SafetensorsReader, SafetensorsWriter, fingerprint  # noqa: E402

SHAPES = ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b")


def make_checkpoint(cfg: ModelConfig, out: Path, seed: int = 0, rows: int = 8192, pack: bool = True) -> Path:
    """A random bf16 checkpoint, written a block of rows at a time: train form, or folded (cfg.folded)
    with a random int8 memory pack (skips the fold, which bench_fold.py measures on its own)."""
    if (out / "checkpoint.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MekiModel(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    _write_weights(tmp / "model.safetensors", shapes, gen, rows)
    cfg.save(tmp / "config.json")
    with SafetensorsReader(tmp / "model.safetensors") as reader:
        fp = fingerprint(json.dumps(cfg.replace(name="").to_dict(), sort_keys=True), reader)
    tables = None
    if cfg.folded and pack:  # --load-only never reads the tables
        from pipeline.pack_writer import PackWriter

        tables = "tables.mekipack"
        with PackWriter(tmp / tables, vocab_size=cfg.vocab_size, num_layers=cfg.num_layers, d_mem=cfg.d_mem,
                        dtype="int8", fingerprint=fp, progress=False) as w:
            for start in range(0, cfg.vocab_size, rows):
                n = min(rows, cfg.vocab_size - start)
                w.write(start, torch.randn((n, cfg.num_layers, cfg.d_mem), generator=gen).numpy())
    write_info(tmp, CheckpointInfo(fingerprint=fp, tables=tables, source="random"))
    tmp.rename(out)
    return out


def _write_weights(path: Path, shapes: dict[str, tuple[int, ...]], gen: torch.Generator, rows: int) -> None:
    with SafetensorsWriter(path, {k: (s, torch.bfloat16) for k, s in shapes.items()}) as w:
        for name, shape in shapes.items():
            if len(shape) < 2:  # norms, alpha, beta: ones (their init)
                w.write(name, torch.ones(shape))
                continue
            for start in range(0, shape[0], rows):
                n = min(rows, shape[0] - start)
                w.write_rows(name, start, torch.randn((n, *shape[1:]), generator=gen) * 0.02)


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        state = MekiModel(cfg).state_dict()
    tables = sum(v.numel() for k, v in state.items() if k.endswith("memory.table.weight"))
    return {"params_total": sum(v.numel() for v in state.values()), "params_tables": tables}


def load_only(ckpt: Path, targets: list[str], settings: object) -> None:
    """The stages before lowering, as export_bundles runs them (the checkpoint must be folded)."""
    from pipeline.checkpoint import load_checkpoint, read_config
    from pipeline.export.bundle import dense_baseline, eager_quantizer
    from pipeline.export.memory import stage_estimates
    from pipeline.profile import stage

    cfg, _ = read_config(ckpt)
    prepare = eager_quantizer(targets, settings)
    print("estimated peaks (GiB):", {k: round(v / 2**30, 2) for k, v in
                                     stage_estimates(cfg, targets, settings, prepare is not None).items()})
    with stage("load"):
        model, _ = load_checkpoint(ckpt, prepare=prepare)
    with stage("dense baseline"):
        dense = dense_baseline(model, None if prepare is None else prepare.dense_layers)
    del model, dense


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--target", action="append", required=True, help="repeatable (e.g. executorch-xnnpack)")
    ap.add_argument("--quant", default="8da4w")
    ap.add_argument("--layers", type=int, help="fewer layers than the preset (quick profile)")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--prefill-len", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/meki-bench-export"))
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--prefolded", action="store_true",
                    help="start from a folded checkpoint (random pack): no fold stage (bench_fold.py measures it)")
    ap.add_argument("--load-only", action="store_true",
                    help="profile loading (quantised as it loads) and the dense baseline only, no lowering")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, s")
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=1,
                    help="2: the dense bundle lowered beside the MeKi one (forked); default 1, the sequential profile")
    ap.add_argument("--decode-program", choices=DECODE_PROGRAMS,
                    help="own: decode lowered on its own; prefill: decode on prefill's program; default: the target's")
    ap.add_argument("--memory-limit-gb", type=float,
                    help="export inside a memory cgroup of this many GB (1e9 bytes): does it fit in so much memory, "
                         "page cache and mapped files reclaimed as on a machine that size (needs root)")
    a = ap.parse_args()

    from pipeline.export.bundle import export_bundles
    from pipeline.export.registry import ExportSettings

    cfg = preset(a.shape)
    if a.layers:
        cfg = cfg.replace(num_layers=a.layers, name=f"{a.shape}-{a.layers}L")
    if a.prefolded:
        cfg = cfg.replace(folded=True, name=f"{cfg.name}-folded")
    t = time.perf_counter()
    ckpt = make_checkpoint(cfg, a.work / f"ckpt-{cfg.name}{'-nopack' if a.load_only else ''}", pack=not a.load_only)
    print(f"checkpoint {ckpt} ready in {time.perf_counter() - t:.1f} s", flush=True)
    out = a.work / f"out-{cfg.name}-{os.getpid()}"  # per run: runs may share --work
    release()
    settings = ExportSettings(quant=a.quant, max_seq_len=a.max_seq_len, prefill_len=a.prefill_len,
                              decode_program=a.decode_program)
    load0 = os.getloadavg()
    stopped: list[str] = []  # SIGTERM (e.g. `timeout`): stop, but still report the stages run so far

    def stop(*_: object) -> None:
        stopped.append(prof._stack[-1].name if prof._stack else "")
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    limit = int(a.memory_limit_gb * 1e9) if a.memory_limit_gb else None
    cgroup_figures: dict = {}
    failed = None
    with limited_memory(limit) if limit else contextlib.nullcontext() as cgroup, StageProfiler(a.interval) as prof:
        try:
            if a.load_only:
                load_only(ckpt, a.target, settings)
            else:
                export_bundles(ckpt, out, a.target, settings, jobs=a.jobs)
        except KeyboardInterrupt:
            stopped[:] = stopped or ["interrupted"]
            print(f"stopped during {stopped[0]!r}: the figures below are partial", flush=True)
        except ExportError as exc:  # refused up front, or a helper killed: still report the stages run
            failed = str(exc)
            print(f"export failed: {failed}", flush=True)
        if cgroup is not None:
            cgroup_figures = {"memory_limit_bytes": limit, "cgroup_peak_bytes": cgroup.peak(),
                              "oom_kills": cgroup.oom_kills()}
            print(f"memory cgroup: limit {limit / 2**30:.2f} GiB, peak charge {(cgroup.peak() or 0) / 2**30:.2f} GiB "
                  f"(page cache included), OOM kills {cgroup.oom_kills()}", flush=True)
    print(prof.table())
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    print(json.dumps(sizes, indent=1))
    if a.json:
        save_json(prof, str(a.json), shape=a.shape, layers=cfg.num_layers, targets=a.target, quant=a.quant, jobs=a.jobs,
                  settings=settings.__dict__, config=cfg.to_dict(), **param_counts(cfg), files=sizes,
                  stopped_during=stopped[0] if stopped else None, loadavg_start=load0, loadavg_end=os.getloadavg(),
                  failed=failed, **cgroup_figures)
    shutil.rmtree(out, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
