"""Bench-engine test doubles: a stub runner script, stub bundles, FakeAdbd openers and output checks.

The stub runner takes the real runner's flags and writes schema-valid stats, so every failure path
of `meki bench` (missing runner, timeout, disconnect, full disk, permission) runs in seconds.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import Backbone, Manifest, MethodSpec, PackRef, TensorSpec, write_manifest
from device_tests import report
from device_tests.transports import open_transport
from pipeline.pack_writer import write_pack

FIX = Path(__file__).parents[1] / "fixtures"
STATS = {"runner": "native", "bundle": "stub", "target": "executorch-xnnpack", "memory": "both",
         "stop_reason": "max_tokens", "ttft_s": 0.01, "prefill_s": 0.01, "prefill_tok_s": 1600.0,
         "decode_s": 0.02, "decode_tok_s": 750.0, "decode_step_median_s": 0.001,
         "exposed_lookup_s": [], "exposed_lookup_total_s": 0.0, "exposed_lookup_fraction": 0.0,
         "lookup_total_s": 0.0, "rss_start_bytes": 1, "rss_end_bytes": 2, "rss_peak_bytes": 3,
         "rss_anon_bytes": 2, "rss_file_bytes": 1, "pack_resident_bytes": 0, "text": None,
         "format": "meki-run-stats", "version": 1}
STUB = """#!{python}
import json, sys, time
a = sys.argv[1:]
mode = {mode!r}
if mode == "hang":
    time.sleep(60)
if mode == "crash":
    print("error: the backbone refused this bundle", file=sys.stderr)
    sys.exit(2)
time.sleep({delay})
n = int(a[a.index("--max-new-tokens") + 1])
p = len(a[a.index("--prompt-ids") + 1].split(","))
stats = dict({stats!r}, prompt_tokens=p, generated_tokens=n, tokens=[1] * n, bundle=a[0])
stats["decode_tok_s"] *= 1.2 if "meki" in a[0] else 1.0
with open(a[a.index("--stats") + 1], "w") as f:
    json.dump(stats, f)
"""


def stub_runner(tmp: Path, mode: str = "ok", delay: float = 0.3) -> Path:
    path = tmp / f"stub-{mode}"
    path.write_text(STUB.format(python=sys.executable, mode=mode, delay=delay, stats=STATS))
    path.chmod(0o755)
    return path


def stub_bundles(tmp: Path) -> Path:
    """A meki/dense pair whose manifests verify (the stub runner never opens the program)."""
    out = tmp / "export"
    for kind in ("meki", "dense"):
        d = out / kind
        d.mkdir(parents=True)
        (d / "model.pte").write_bytes(f"stand-in {kind} program".encode() * 100)
        rows = [TensorSpec("tokens", [1, 1], "int64"), TensorSpec("input_pos", [1], "int64")]
        method = MethodSpec(rows, [TensorSpec("logits", [1, 128], "float32")], "decode")
        pack = None
        if kind == "meki":
            write_pack(d / "tables.mekipack", np.zeros((128, 2, 8), np.float32), fingerprint="f" * 32, dtype="fp16")
            pack = PackRef("tables.mekipack", "fp16", "token-major", 128, 2, 8, "f" * 32)
        write_manifest(d, Manifest(
            name=f"stub-{kind}", fingerprint="f" * 32, memory="both" if pack else "none",
            config={}, tokenizer=None, memory_pack=pack,
            backbones=[Backbone("executorch-xnnpack", "model.pte", "none", 64, 8, "internal",
                                {"prefill": method, "decode": method})]))
    return out


def check_outputs(out: Path, result) -> dict:
    data = json.loads((out / "bench.json").read_text())
    report.validate(data)
    assert data == json.loads(json.dumps(result.to_json(), default=str))
    assert (out / "bench.md").read_text().startswith("# MeKi bench")
    for png in data["outputs"]["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.fixture
def adbd(tmp_path):
    from tests.support.fake_adbd import FakeAdbd

    root = tmp_path / "phone"
    (root / "tmp").mkdir(parents=True)
    with FakeAdbd(root) as server:
        yield server


def adb_opener(adbd):
    """Transports for the bench: FakeAdbd's address -> adb-shell with short timeouts."""
    from device_tests.transports.adbshell import AdbShellTransport

    def open_device(device: str):
        if device == "local":
            return open_transport("local")
        return AdbShellTransport(device, tmp_dir=str(adbd.root / "tmp"), signers=[],
                                 connect_timeout_s=2.0, op_timeout_s=10.0, backoff_s=0.01)
    return open_device


def run_errors(dev) -> str:
    return " ".join(dev.errors + [r.error or "" for r in dev.runs])
