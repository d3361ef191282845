"""Benchmark: fold Qwen3-1.7B-shaped MeKi tables from random weights; print wall time and peak RSS.

    python benchmarks/bench_fold.py --device cpu            # targets: peak RSS <= 2 GiB on CPU
    python benchmarks/bench_fold.py --device cuda           # target: <= 60 s on an H100

Two child processes: `make` streams a random bf16 checkpoint of everything folding reads (the
embedding, each layer's static table and dynamic MLP) to disk; `fold` reads it back a chunk at a
time and writes fp16 tables. Each child reports its own peak RSS, so generation does not count.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import preset  # noqa: E402
from pipeline.fold import SafetensorsTableSink, fold_tables  # noqa: E402
from pipeline.meki_branch import MekiMemory  # noqa: E402
from pipeline.tensor_io import SafetensorsReader, SafetensorsWriter  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(cfg_name: str, path: Path) -> None:
    cfg = preset(cfg_name)
    with torch.device("meta"):
        shapes = {f"layers.{i}.memory.{k}": tuple(v.shape) for i in range(cfg.num_layers)
                  for k, v in MekiMemory(cfg).state_dict().items()}
    shapes["embed.weight"] = (cfg.vocab_size, cfg.dim)
    gen = torch.Generator().manual_seed(0)
    with SafetensorsWriter(path, {k: (s, torch.bfloat16) for k, s in shapes.items()}, overwrite=True) as w:
        for name, shape in shapes.items():
            if len(shape) < 2:
                w.write(name, torch.ones(shape))
                continue
            for start in range(0, shape[0], 16384):
                rows = min(16384, shape[0] - start)
                w.write_rows(name, start, torch.randn((rows, *shape[1:]), generator=gen) * 0.02)
    print(json.dumps({"phase": "make", "bytes": path.stat().st_size, "peak_rss_mib": peak_rss_mib()}))


def fold(cfg_name: str, src: Path, out: Path, device: str, chunk: int) -> None:
    cfg = preset(cfg_name)
    t0 = time.perf_counter()
    with SafetensorsReader(src) as reader, \
            SafetensorsWriter(out, SafetensorsTableSink.layout(cfg, torch.float16), overwrite=True) as w:
        fold_tables(cfg, reader, SafetensorsTableSink(w), chunk_size=chunk, device=device, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    flop = 2 * cfg.vocab_size * cfg.num_layers * (cfg.dim * 2 * cfg.dyn_hidden + cfg.dyn_hidden * cfg.d_mem)
    print(json.dumps({"phase": "fold", "device": device, "wall_s": round(wall, 2), "tables_bytes": out.stat().st_size,
                      "tflop": round(flop / 1e12, 1), "tflop_per_s": round(flop / wall / 1e12, 2),
                      "peak_rss_mib": round(peak_rss_mib(), 1), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen3-1.7b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--phase", choices=["all", "make", "fold"], default="all")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_fold_"))
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "source.safetensors", work / "tables.safetensors"
    if a.phase == "make":
        return make(a.preset, src)
    if a.phase == "fold":
        return fold(a.preset, src, out, a.device, a.chunk_size)
    me = [sys.executable, __file__, "--preset", a.preset, "--workdir", str(work)]
    subprocess.run(me + ["--phase", "make"], check=True)
    subprocess.run(me + ["--phase", "fold", "--device", a.device, "--chunk-size", str(a.chunk_size)], check=True)
    if a.workdir is None:
        for f in (src, out):
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
