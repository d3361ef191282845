"""Seeded fuzz of the Python readers (issue 12, classes 1 and 8): mutated pack files and headers
whose fields follow the formulas with 64-bit wrapping arithmetic, and mutated manifests. Every input
must be accepted or refused with PackError / BundleError carrying a CHECKS.md name: never another
exception, never a hang. Deterministic (fixed seed); the C++ twin is fuzz_pack (sanitize_test.sh)."""
from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import xxhash

from contract.manifest import BundleError, load_manifest
from mobile_runtime.pack import MemoryPack, PackError

ROOT = Path(__file__).resolve().parents[2] / "conformance"
CHECKS = set(json.loads((ROOT / "index.json").read_text())["checks"])
INTERESTING = [0, 1, 2, 7, 8, 16, 127, 128, 4096, 16384, 1 << 24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1,
               2**64 - 1]
N_PACKS, N_MANIFESTS = 400, 400


def rehash(f: bytearray) -> None:
    if len(f) >= 128:
        struct.pack_into("<Q", f, 120, xxhash.xxh3_64_intdigest(bytes(f[:120])))


def wrapped_header(rng: random.Random) -> bytearray:
    """Fields from the formulas with 64-bit wrapping, from random (often huge) shapes."""
    m64 = 2**64 - 1
    v = rng.choice([rng.randrange(1, 2**31), rng.choice(INTERESTING)]) & 0xFFFFFFFF
    n_layers = rng.choice([rng.randrange(1, 2**31), rng.choice(INTERESTING)]) & 0xFFFFFFFF
    m = 8 * rng.randrange(1, rng.choice([64, 2**28]))
    d, lay = rng.randrange(1, 5), rng.randrange(2)
    g = (2 << rng.randrange(6)) if d == 4 else (m if d == 3 else 0)
    bs = 4096 << rng.randrange(13)
    rb = {1: 2 * m, 2: 2 * m, 3: 4 + m, 4: 4 * (m // max(g, 1)) + m // 2}[d]
    ds = ((v * n_layers * rb + bs - 1) // bs * bs) & m64
    body = struct.pack("<8sIIIII BBH II QQ II QQ 16s Q 16s", b"MEKIPACK", 1, 128, v, n_layers, m & 0xFFFFFFFF, d, lay, 0,
                       g & 0xFFFFFFFF, (rb if lay else n_layers * rb) & 0xFFFFFFFF, 16384, ds, bs,
                       (ds // bs) & 0xFFFFFFFF, (16384 + ds) & m64, (16384 + ds + 8 * (ds // bs)) & m64, bytes(16), 0,
                       bytes(16))
    f = bytearray(body + bytes(8) + bytes(16384 - 128 + rng.randrange(3) * 4096))
    rehash(f)
    return f


def mutate_pack(f: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(5)
        if op == 0 and f:
            f[rng.randrange(len(f))] ^= rng.randrange(1, 256)
        elif op == 1 and len(f) >= 128:
            off, width = 8 + 4 * rng.randrange(28), rng.choice([4, 8])
            f[off:off + width] = (rng.choice(INTERESTING) & (2 ** (8 * width) - 1)).to_bytes(width, "little")
        elif op == 2:
            del f[rng.randrange(len(f) + 1):]
        elif op == 3:
            f += bytes([rng.randrange(2)]) * rng.randrange(64)
        elif len(f) > 16384:
            f[rng.randrange(16384, len(f))] = rng.randrange(256)
    if rng.randrange(5):
        rehash(f)
    return f


def test_pack_reader_fuzz(tmp_path):
    rng = random.Random(12)
    seeds = [bytearray(p.read_bytes()) for p in sorted((ROOT / "golden").glob("*.mekipack"))]
    outcomes: dict[str, int] = {}
    path = tmp_path / "f.mekipack"
    for _ in range(N_PACKS):
        f = wrapped_header(rng) if rng.randrange(3) == 0 else bytearray(rng.choice(seeds))
        path.write_bytes(bytes(mutate_pack(f, rng)))
        for mode in ("pread", "mmap"):
            try:
                with MemoryPack.open(path, mode=mode, cache_bytes=1 << 16) as p:
                    p.lookup([0, p.vocab_size - 1])
                    p.verify()
                got = "ok"
            except PackError as e:
                got = e.check
            assert got == "ok" or got in CHECKS, got
            outcomes[got] = outcomes.get(got, 0) + 1
    assert sum(outcomes.values()) == 2 * N_PACKS and len(outcomes) >= 5, outcomes


TOKENS = ["[", "]", "{", "}", '"', ",", ":", "null", "-1", "1e999", "18446744073709551616", '"../x"', '"/etc/passwd"',
          '"a//b"', "\\u0000", "\xc3\x28", "[[[[[[[[", "0.5"]


def test_manifest_reader_fuzz(tmp_path):
    rng = random.Random(12)
    seeds = [p.read_bytes().decode("utf-8", "replace") for p in sorted((ROOT / "bundles").glob("*/manifest.json"))
             if p.stat().st_size < 100_000]
    outcomes: dict[str, int] = {}
    bundle = tmp_path / "b"
    bundle.mkdir()
    for _ in range(N_MANIFESTS):
        t = rng.choice(seeds)
        for _ in range(rng.randrange(1, 5)):
            at, op = rng.randrange(len(t) + 1), rng.randrange(4)
            if op == 0 and t:
                t = t[:at] + chr(rng.randrange(256)) + t[at + 1:]
            elif op == 1:
                t = t[:at] + rng.choice(TOKENS) + t[at:]
            elif op == 2:
                t = t[:at] + t[at + rng.randrange(16):]
            else:
                t = t[:at] + "[" * rng.choice([70, 100]) + t[at:]
        (bundle / "manifest.json").write_bytes(t.encode("utf-8", "surrogateescape"))
        try:
            load_manifest(bundle)
            got = "ok"
        except BundleError as e:
            got = e.check
        assert got == "ok" or got in CHECKS, got
        outcomes[got] = outcomes.get(got, 0) + 1
    assert sum(outcomes.values()) == N_MANIFESTS and len(outcomes) >= 3, outcomes
