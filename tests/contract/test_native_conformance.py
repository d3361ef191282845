"""The C++ readers (mobile_runtime/native, readers-only build: no ExecuTorch) over the whole
conformance corpus, a pack truncated while mapped, and SHA-256 against hashlib. The sanitizer +
fuzz run is mobile_runtime/native/sanitize_test.sh (`make test` runs it)."""
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO / "conformance"


@pytest.fixture(scope="module")
def readers() -> Path:
    """Build (or bring up to date) the C++ readers under build/readers (git-ignored, kept between runs)."""
    if shutil.which("cmake") is None or shutil.which("g++") is None:
        pytest.skip("cmake/g++ missing: run `make system-deps`")
    build = REPO / "build" / "readers"
    if not (build / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(REPO / "mobile_runtime/native"), "-B", str(build),
                        "-DMEKI_READERS_ONLY=ON", "-DCMAKE_BUILD_TYPE=Release"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2", "--target", "conformance_check"],
                   check=True, capture_output=True)
    return build


def test_cpp_readers_agree_with_the_corpus(readers):
    res = subprocess.run([str(readers / "conformance_check"), str(CONFORMANCE)], capture_output=True, text=True,
                         timeout=300)
    fails = [ln for ln in res.stdout.splitlines() if ln.startswith("FAIL")]
    assert res.returncode == 0 and not fails, "\n".join(fails) + res.stderr
    index = json.loads((CONFORMANCE / "index.json").read_text())
    cpp_cases = [c for c in index["cases"] if c["kind"] in ("pack", "bundle", "xxh3")]
    want = sum(2 if c["kind"] == "pack" else 1 for c in cpp_cases)   # packs: pread and mmap
    assert re.search(rf"cpp: {want} passed, 0 failed", res.stdout), res.stdout[-500:]


def test_cpp_pack_shrunk_while_mapped_is_refused_not_sigbus(readers, tmp_path):
    pack = tmp_path / "p.mekipack"
    shutil.copyfile(CONFORMANCE / "golden/golden_int8_token.mekipack", pack)
    res = subprocess.run([str(readers / "conformance_check"), "--shrink-while-mapped", str(pack)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)   # -7 would be SIGBUS
    assert res.stdout.count("pack.file_size") == 2


@pytest.mark.parametrize("text", ["", "abc", "a" * 55, "a" * 56, "a" * 64, "x" * 1000])
def test_cpp_sha256_matches_hashlib(readers, text):
    res = subprocess.run([str(readers / "conformance_check"), "--sha256", text], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == hashlib.sha256(text.encode()).hexdigest()


def test_cpp_fifos_in_a_bundle_are_refused_not_waited_on(readers, tmp_path):
    """A FIFO cannot be stored in git, so these cases are made here: manifest.json, a listed file and the
    pack as FIFOs. Opening a FIFO for reading blocks until a writer comes: the readers must not."""
    import os
    cases = []
    for name, target, check in [("manifest_fifo", "manifest.json", "manifest.missing"),
                                ("file_fifo", "tokenizer.json", "bundle.missing"),
                                ("pack_fifo", "tables.mekipack", "bundle.missing")]:
        root = tmp_path / "bundles" / name
        shutil.copytree(CONFORMANCE / "bundles" / "ok_basic", root)
        (root / target).unlink()
        os.mkfifo(root / target)
        cases.append({"id": f"bundle/{name}", "kind": "bundle", "path": f"bundles/{name}", "expect": "refused",
                      "check": check})
    (tmp_path / "index.json").write_text(json.dumps({"cases": cases}))
    res = subprocess.run([str(readers / "conformance_check"), str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "cpp: 3 passed, 0 failed" in res.stdout, res.stdout + res.stderr
