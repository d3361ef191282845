"""The native runner cross-built for aarch64 Linux (mobile_runtime/native/cross_aarch64.sh: Debian's cross
compiler, the aarch64 executorch wheel's libraries) and run under qemu-user gives the same greedy tokens
as the x86 build and the Python loop, with ARM's XNNPACK kernels; the qemu instruction-count plugin
counts both phases of step_bench."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mobile_runtime.generate import Generator
from mobile_runtime.sampling import SamplingConfig

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                 reason="needs Debian's g++-aarch64-linux-gnu and qemu-user (make system-deps)")]

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "mobile_runtime" / "native"
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]  # longer than prefill_len=8: two prefill chunks


def _build(script: str, folder: str) -> Path:
    out = subprocess.run([str(NATIVE / script), str(REPO / "build" / folder)], check=True, capture_output=True,
                         text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def arm() -> Path:
    return _build("cross_aarch64.sh", "native-aarch64")


@pytest.fixture(scope="module")
def x86() -> Path:
    return _build("build.sh", "native")


def runner_tokens(cmd: list[str], bundle: Path, stats: Path) -> list[int]:
    res = subprocess.run([*cmd, str(bundle), "--quiet", "--prompt-ids", ",".join(map(str, PROMPT)), "--max-new-tokens",
                          "16", "--ignore-eos", "--stats", str(stats)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(stats.read_text())["tokens"]


@pytest.mark.parametrize("bundles", ["none", "8da4w"], indirect=True)
def test_aarch64_tokens_match_x86_and_python(arm, x86, bundles, tmp_path):
    out, quant = bundles
    assert (arm / "meki_runner").read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine EM_AARCH64
    for kind in ("meki", "dense"):
        on_arm = runner_tokens([*QEMU, str(arm / "meki_runner")], out / kind, tmp_path / f"arm-{kind}.json")
        on_x86 = runner_tokens([str(x86 / "meki_runner")], out / kind, tmp_path / f"x86-{kind}.json")
        python = Generator(out / kind).generate(PROMPT, SamplingConfig(max_new_tokens=16)).tokens
        assert on_arm == on_x86 == python, (quant, kind)


@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_qemu_plugin_counts_phases(arm, x86, bundles, tmp_path):
    out, _ = bundles
    pte = out / "dense" / "model_xnnpack.pte"
    counts = tmp_path / "counts.json"
    res = subprocess.run([*QEMU, "-plugin", f"{arm / 'libqemu_insn_phases.so'},out={counts}",
                          str(arm / "step_bench"), str(pte), "6", "5", "--single-thread"],
                         check=True, capture_output=True, text=True, timeout=600)
    c = json.loads(counts.read_text())
    assert 0 < c["prefill"] and 0 < c["decode"] and c["prefill"] + c["decode"] < c["all"]
    native = subprocess.run([str(x86 / "step_bench"), str(pte), "6", "5", "--single-thread"], check=True,
                            capture_output=True, text=True)
    assert json.loads(res.stdout.splitlines()[-1])["tokens"] == json.loads(native.stdout.splitlines()[-1])["tokens"]
