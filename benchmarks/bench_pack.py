"""Memory pack benchmark (prints figures; not a test).

Qwen3-0.6B-shaped random pack (28 layers, 151,680 tokens, d_mem 128, int8: ~1 GB) on local disk:
  1. write throughput of PackWriter vs a plain sequential write of the same number of bytes;
  2. per-token lookup latency, warm and cold (pages evicted with posix_fadvise DONTNEED, fresh
     open so block verification is included), mmap vs pread, token-major vs layer-major;
  3. RSS split (RssAnon / RssFile) after 10,000 Zipf-distributed lookups, mmap vs pread+cache,
     each in a fresh child process.

    nice .venv/bin/python benchmarks/bench_pack.py [--dir /tmp] [--keep] [--vocab 151680]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contract import pack_format as pf  # noqa: E402
from mobile_runtime.pack import MemoryPack  # noqa: E402
from pipeline.pack_writer import PackWriter  # noqa: E402

FP = "0123456789abcdef0123456789abcdef"
CHUNK = 1024


def evict(path: Path) -> None:
    """Drop the file's clean pages from the page cache (cold reads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_pack_timed(path: Path, vocab: int, layers: int, d_mem: int, layout: str,
                     encoded: bool = False) -> float:
    """Write a random int8 pack; returns seconds (hashing, fsync, rename included).

    encoded=False: float32 chunks through write() (int8 quantisation included);
    encoded=True: pre-quantised chunks through write_encoded() (the storage path alone)."""
    rng = np.random.default_rng(0)
    chunk = rng.standard_normal((CHUNK, layers, d_mem), dtype=np.float32)  # reused: data gen untimed
    enc = pf.encode_rows(chunk, "int8", d_mem)
    t0 = time.perf_counter()
    with PackWriter(path, vocab_size=vocab, num_layers=layers, d_mem=d_mem, dtype="int8",
                    fingerprint=FP, layout=layout, progress=False, overwrite=True) as w:
        for a in range(0, vocab, CHUNK):
            n = min(CHUNK, vocab - a)
            w.write_encoded(a, enc[:n]) if encoded else w.write(a, chunk[:n])
    return time.perf_counter() - t0


def quantise_timed(vocab: int, layers: int, d_mem: int) -> float:
    """Seconds to int8-encode vocab tokens of float32 rows in CHUNK-token chunks (no I/O)."""
    chunk = np.random.default_rng(0).standard_normal((CHUNK, layers, d_mem), dtype=np.float32)
    t0 = time.perf_counter()
    for a in range(0, vocab, CHUNK):
        pf.encode_rows(chunk[:min(CHUNK, vocab - a)], "int8", d_mem)
    return time.perf_counter() - t0


def plain_write_timed(path: Path, n_bytes: int) -> float:
    """Sequential write of n_bytes from a 16 MiB buffer, then fsync; returns seconds."""
    buf = np.random.default_rng(1).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = n_bytes
        while left:
            left -= f.write(memoryview(buf)[:min(left, len(buf))])
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def latencies(path: Path, mode: str, cold: bool, n: int, vocab: int) -> np.ndarray:
    """Per-token lookup times (µs) for n uniform random tokens."""
    toks = np.random.default_rng(2).integers(0, vocab, n)
    times = np.empty(n)
    if not cold:
        with MemoryPack.open(path, mode=mode, cache_bytes=0) as pack:
            pack.lookup(toks)                       # warm: pages cached, blocks verified
            for i, t in enumerate(toks):
                t0 = time.perf_counter()
                pack.lookup([t])
                times[i] = time.perf_counter() - t0
        return times * 1e6
    for i, t in enumerate(toks):
        with MemoryPack.open(path, mode=mode, cache_bytes=0) as pack:
            evict(path)
            t0 = time.perf_counter()
            pack.lookup([t])
            times[i] = time.perf_counter() - t0
    return times * 1e6


def rss_kib() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
            out[k] = int(v.split()[0])
    return out


def rss_child(path: str, mode: str, cache_bytes: int, n: int) -> None:
    """Child process: RSS before open and after n Zipf lookups; prints one JSON line."""
    with MemoryPack.open(path, mode=mode, cache_bytes=0) as p:
        vocab = p.vocab_size
    rng = np.random.default_rng(3)
    p_rank = 1.0 / np.arange(1, vocab + 1) ** 1.1
    toks = rng.permutation(vocab)[rng.choice(vocab, n, p=p_rank / p_rank.sum())]
    del p_rank
    before = rss_kib()
    with MemoryPack.open(path, mode=mode, cache_bytes=cache_bytes) as pack:
        for t in toks:
            pack.lookup([t])
        after = rss_kib()
        res = {"mode": mode, "cache_bytes": cache_bytes, "before": before, "after": after,
               "resident_bytes": pack.resident_bytes(), "cache": pack.cache_info(),
               "unique_tokens": int(np.unique(toks).size)}
    print(json.dumps(res))


def fmt(us: np.ndarray) -> str:
    return f"median {np.median(us):8.1f} µs   p99 {np.percentile(us, 99):8.1f} µs"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the packs")
    ap.add_argument("--keep", action="store_true", help="keep the packs afterwards")
    ap.add_argument("--vocab", type=int, default=151_680)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--d-mem", type=int, default=128)
    ap.add_argument("--warm-n", type=int, default=3000)
    ap.add_argument("--cold-n", type=int, default=300)
    ap.add_argument("--cache-mib", type=int, default=8)
    ap.add_argument("--rss-child", nargs=3, metavar=("PATH", "MODE", "CACHE_BYTES"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rss_child:
        return rss_child(a.rss_child[0], a.rss_child[1], int(a.rss_child[2]), 10_000)
    work = Path(tempfile.mkdtemp(prefix="bench_pack_", dir=a.dir))
    try:
        run(a, work)
    finally:
        if not a.keep:
            shutil.rmtree(work)
        else:
            print(f"kept {work}")


def run(a, work: Path) -> None:
    tm, lm = work / "token_major.mekipack", work / "layer_major.mekipack"
    print(f"pack: V={a.vocab} L={a.layers} d_mem={a.d_mem} int8, in {work}")
    t_enc = write_pack_timed(tm, a.vocab, a.layers, a.d_mem, "token-major", encoded=True)
    size = tm.stat().st_size
    t_plain = plain_write_timed(work / "plain.bin", size)
    (work / "plain.bin").unlink()
    t_pack = write_pack_timed(tm, a.vocab, a.layers, a.d_mem, "token-major")
    t_q = quantise_timed(a.vocab, a.layers, a.d_mem)
    mbs = lambda t: size / t / 1e6  # noqa: E731
    print(f"\n## write ({size / 2**20:.1f} MiB file, fsync + rename included; MB/s of file bytes)")
    print(f"plain sequential write of the same bytes:           {t_plain:6.2f} s  {mbs(t_plain):7.1f} MB/s")
    print(f"PackWriter.write_encoded (xxh3 + temp/fsync/rename): {t_enc:6.2f} s  {mbs(t_enc):7.1f} MB/s"
          f"  ratio {t_plain / t_enc:.2f} (target >= 0.7)")
    print(f"PackWriter.write from fp32 (+ int8 quantisation):    {t_pack:6.2f} s  {mbs(t_pack):7.1f} MB/s"
          f"  ratio {t_plain / t_pack:.2f}")
    print(f"  of which int8 quantisation alone (numpy, 1 thread): {t_q:6.2f} s")
    t_lm = write_pack_timed(lm, a.vocab, a.layers, a.d_mem, "layer-major")
    print(f"PackWriter layer-major (scattered pwrite + re-read to hash): {t_lm:6.2f} s")

    print("\n## per-token lookup latency (1 token = L rows, dequantised to fp32; cache off)")
    for name, path in (("token-major", tm), ("layer-major", lm)):
        for mode in ("mmap", "pread"):
            warm = latencies(path, mode, False, a.warm_n, a.vocab)
            cold = latencies(path, mode, True, a.cold_n, a.vocab)
            print(f"{name:11s} {mode:5s}  warm {fmt(warm)} | cold {fmt(cold)}")

    print("\n## RSS after 10,000 Zipf(1.1) lookups (fresh process each; KiB)")
    for mode, cache in (("mmap", 0), ("mmap", a.cache_mib << 20), ("pread", a.cache_mib << 20)):
        evict(tm)
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(tm), mode, str(cache)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        b, f = r["before"], r["after"]
        d_anon, d_file = f["RssAnon"] - b["RssAnon"], f["RssFile"] - b["RssFile"]
        grow = d_anon + d_file
        line = (f"{mode:5s} cache {cache >> 20:2d} MiB: RssAnon +{d_anon:7d}  RssFile +{d_file:7d}"
                f"  total +{grow:7d} KiB  (resident_bytes {r['resident_bytes'] >> 10} KiB, "
                f"{r['unique_tokens']} unique tokens)")
        if mode == "pread":
            limit = (cache >> 10) + 4096
            line += f"  target <= {limit} KiB: {'PASS' if grow <= limit else 'FAIL'}"
        print(line)


if __name__ == "__main__":
    main()
