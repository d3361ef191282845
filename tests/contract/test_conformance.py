"""The conformance corpus (conformance/index.json) through the Python reader, and the corpus itself.

Each case is run as its readers run it (the C++, Java and Swift runners follow the same procedure)
and the check name that refused it must be the one index.json lists ("ok" when accepted)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xxhash

from mobile_runtime.bundle_pack import open_bundle_pack
from contract.manifest import BundleError, verify_bundle
from mobile_runtime.pack import MemoryPack, PackError
from mobile_runtime.stats import StatsError, load_stats

ROOT = Path(__file__).resolve().parents[2] / "conformance"
INDEX = json.loads((ROOT / "index.json").read_text())


def run_pack(case: dict, mode: str) -> str:
    """open (expected fingerprint) -> lookup tokens (on-read checks) -> full verify -> rows."""
    tokens = case.get("tokens", [0])
    try:
        with MemoryPack.open(ROOT / case["path"], mode=mode, expected_fingerprint=case.get("fingerprint")) as p:
            rows = p.lookup(np.array(tokens, dtype=np.int64))
            p.verify()
    except PackError as e:
        return e.check
    if "rows" in case:
        spec = json.loads((ROOT / case["rows"]).read_text())
        want = next(x for x in spec["packs"] if x["file"] == Path(case["path"]).name)["rows"]
        for i, t in enumerate(tokens):
            np.testing.assert_array_equal(rows[i], np.array(want[str(t)], dtype=np.float32))
    return "ok"


def run_bundle(case: dict) -> str:
    """verify_bundle (sha256 included) -> open the pack as a consumer does -> compare dimensions."""
    bundle = ROOT / case["path"]
    try:
        m = verify_bundle(bundle, check_hashes=True)
        if m.memory_pack is not None:
            open_bundle_pack(bundle, m, cache_bytes=0).close()
    except (BundleError, PackError) as e:
        return e.check
    return "ok"


def run_stats(case: dict) -> str:
    try:
        load_stats(ROOT / case["path"])
    except StatsError as e:
        return e.check
    return "ok"


def run_xxh3(case: dict) -> str:
    lines = [ln.split() for ln in (ROOT / case["path"]).read_text().splitlines() if ln and ln[0] != "#"]
    data = lcg_bytes(max(int(n) for n, _ in lines))
    bad = [n for n, h in lines if f"{xxhash.xxh3_64_intdigest(data[:int(n)]):016x}" != h]
    assert not bad, f"xxh3 differs at lengths {bad[:5]}"
    return "ok"


def lcg_bytes(n: int) -> bytes:
    x, out = 0, bytearray(n)
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        out[i] = x >> 56
    return bytes(out)


def outcome(case: dict, mode: str = "pread") -> str:
    kind = case["kind"]
    if kind == "pack":
        return run_pack(case, mode)
    return {"bundle": run_bundle, "stats": run_stats, "xxh3": run_xxh3}[kind](case)


def expected(case: dict) -> str:
    return "ok" if case["expect"] == "ok" else case["check"]


PY_CASES = [c for c in INDEX["cases"] if "python" in c.get("readers", ["python"])]


@pytest.mark.parametrize("case", PY_CASES, ids=lambda c: c["id"])
def test_python_reader(case):
    modes = ("pread", "mmap") if case["kind"] == "pack" else ("pread",)
    for mode in modes:
        assert outcome(case, mode) == expected(case), f"{case['id']} ({mode}): {case.get('note')}"


def test_index_covers_every_check_once_or_more():
    names = set(INDEX["checks"])
    used = {c["check"] for c in INDEX["cases"] if c["expect"] == "refused"}
    assert used == names
    assert all(c["expect"] in ("ok", "refused") for c in INDEX["cases"])
    assert all((ROOT / c["path"]).exists() or (ROOT / c["path"]).is_symlink() for c in INDEX["cases"])


def test_symlink_cases_are_links():
    links = [p for p in (ROOT / "bundles").rglob("*") if p.is_symlink()]
    assert len(links) == 5   # stored as git symlinks (mode 120000)


def test_generator_is_deterministic(tmp_path):
    """A rerun of make_conformance.py into a copy gives the same bytes for every file."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "conformance"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=shutil.ignore_patterns("packs", "bundles", "stats"))
    subprocess.run([sys.executable, str(copy / "make_conformance.py")], check=True, capture_output=True)
    for p in sorted(ROOT.rglob("*")):
        q = copy / p.relative_to(ROOT)
        if p.is_symlink():
            assert q.is_symlink() and q.readlink() == p.readlink(), p
        elif p.is_file():
            assert q.read_bytes() == p.read_bytes(), p


SHRINK = """
import os, sys
from mobile_runtime.pack import MemoryPack, PackError
p = MemoryPack.open(sys.argv[1], mode="mmap", cache_bytes=0)
p.lookup([0])
os.truncate(sys.argv[1], 16384)
for tok in (99, 0):   # an unverified block, then the verified one again
    try:
        p.lookup([tok])
        sys.exit(f"read token {tok} of a truncated mapping")
    except PackError as e:
        print(e.check)
"""


def test_python_pack_shrunk_while_mapped_is_refused_not_sigbus(tmp_path):
    """In a child process: a SIGBUS there shows as returncode -7 instead of killing pytest."""
    import shutil
    import subprocess
    import sys

    pack = tmp_path / "p.mekipack"
    shutil.copyfile(ROOT / "golden/golden_int8_token.mekipack", pack)
    res = subprocess.run([sys.executable, "-c", SHRINK, str(pack)], capture_output=True, text=True, timeout=60,
                         cwd=ROOT.parent, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.split() == ["pack.file_size", "pack.file_size"]
