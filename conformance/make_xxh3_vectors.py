"""Write the XXH3-64 test vectors for the Java reader (Xxh3Test) from the Python xxhash package.

Run from the repository root:  .venv/bin/python conformance/make_xxh3_vectors.py
Input: prefixes of one LCG byte stream (x = x * 6364136223846793005 + 1442695040888963407 mod 2^64,
byte = x >> 56, x0 = 0); output lines "length hex16" for lengths 0..2100 and a few large ones.
"""
from pathlib import Path

import xxhash

OUT = Path(__file__).resolve().parent / "xxh3_vectors.txt"
LENGTHS = [*range(0, 2101), 4095, 4096, 4097, 16384, 100_003, 1 << 20]


def lcg_bytes(n: int) -> bytes:
    x, out = 0, bytearray(n)
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        out[i] = x >> 56
    return bytes(out)


def main() -> None:
    data = lcg_bytes(max(LENGTHS))
    lines = [f"{n} {xxhash.xxh3_64_intdigest(data[:n]):016x}" for n in LENGTHS]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("# xxh3_64 (seed 0) of LCG byte prefixes; see conformance/make_xxh3_vectors.py\n"
                   + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} vectors to {OUT}")


if __name__ == "__main__":
    main()
