"""Regenerate the memory-pack golden vectors: tiny packs + expected dequantised rows (JSON).

Run from the repository root:  .venv/bin/python conformance/golden/make_golden.py
Inputs are exact integer ratios (no RNG, no transcendental functions), so any machine produces
byte-identical packs. The JSON floats are the float32 results of the Python reader, written as
decimal doubles that convert back to the exact float32.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from mobile_runtime.pack import MemoryPack  # noqa: E402
from pipeline.pack_writer import write_pack  # noqa: E402

HERE = Path(__file__).resolve().parent
V, L, M, GROUP, BLOCK = 100, 3, 16, 8, 4096
FINGERPRINT = "0123456789abcdef00112233445566ff"
CASES = [("fp16", "token-major"), ("bf16", "token-major"), ("int8", "token-major"),
         ("int4", "token-major"), ("int8", "layer-major")]
TOKENS = [0, 1, 2, 67, 68, 99]   # int8 token-major: token 68's record straddles blocks 0 and 1


def golden_tables() -> np.ndarray:
    """[V, L, M] float32: ((k * 7919) % 2001 - 1000) / 256, plus a zero row (token 2, layer 1)."""
    k = np.arange(V * L * M, dtype=np.int64)
    x = (((k * 7919) % 2001 - 1000) / np.float32(256)).astype(np.float32).reshape(V, L, M)
    x[2, 1] = 0.0
    return x


def main() -> None:
    tables = golden_tables()
    out = {"format_version": 1, "vocab_size": V, "num_layers": L, "d_mem": M,
           "int4_group_size": GROUP, "block_size": BLOCK, "fingerprint": FINGERPRINT,
           "tokens": TOKENS,
           "input_formula": "x[t,l,i] = float32(((k*7919) % 2001 - 1000) / 256), "
                            "k = (t*L + l)*M + i; x[2,1,:] = 0",
           "packs": []}
    for dtype, layout in CASES:
        name = f"golden_{dtype}_{layout.split('-')[0]}.mekipack"
        path = HERE / name
        write_pack(path, tables, fingerprint=FINGERPRINT, dtype=dtype, group_size=GROUP,
                   layout=layout, block_size=BLOCK, overwrite=True)
        with MemoryPack.open(path) as pack:
            rows = pack.lookup(TOKENS)
        out["packs"].append({
            "file": name, "dtype": dtype, "layout": layout,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "file_size": path.stat().st_size,
            "rows": {str(t): rows[i].astype(float).tolist() for i, t in enumerate(TOKENS)}})
    (HERE / "pack_golden.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(CASES)} packs and pack_golden.json to {HERE}")


if __name__ == "__main__":
    main()
