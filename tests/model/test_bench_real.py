"""meki bench with the real Python runner on real exported bundles (local and FakeAdbd in parallel)."""
import json
import sys

import jsonschema
import pytest

from device_tests.bench import BenchConfig, run_bench
from mobile_runtime.stats import SCHEMA_PATH as STATS_SCHEMA
from tests.support.bench_stubs import adb_opener, adbd, check_outputs, run_errors  # noqa: F401


@pytest.mark.slow
@pytest.mark.parametrize("bundles", ["none"], indirect=True)
def test_real_runner_local_and_over_adb_in_parallel(bundles, tmp_path, adbd):
    """The Python runner on real bundles: on this machine, and through FakeAdbd's shell (the
    venv's interpreter stands in for a phone's runner), two devices in parallel, one row each."""
    out, _ = bundles
    cfg = BenchConfig(devices=["local", adbd.address], runner="python", device_python=sys.executable,
                      reps=1, warmup=0, new_tokens=8, remote_dir=f"{adbd.root}/meki bench {{device}}")
    result = run_bench(out, cfg, tmp_path / "bench", open_device=adb_opener(adbd))
    data = check_outputs(tmp_path / "bench", result)
    assert data["outputs"]["plots"] == ["tok_s.png", "rss.png"]
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "| local (local) | python | ok |" in md and f"| {adbd.address} (adb-shell) | python | ok |" in md
    schema = json.loads(STATS_SCHEMA.read_text())
    for dev in result.devices:
        assert dev.status == "ok", run_errors(dev)
        assert [r.label for r in dev.runs] == ["meki", "dense"]
        assert dev.runs[0].stats["memory"] == "both" and dev.runs[1].stats["memory"] == "none"
        for r in dev.runs:
            stats = json.loads((tmp_path / "bench" / r.stats_file).read_text())
            jsonschema.validate(stats, schema)
            assert stats["runner"] == "python" and stats["generated_tokens"] == 8
            assert stats["decode_tok_s"] > 0 and r.memory["peak_rss_anon_kb"] > 10_000
        assert all(dev.ratios[m] for m in ("decode_tok_s", "prefill_tok_s", "rss_anon_mib"))
    phone = result.devices[1]
    assert phone.transport == "adb-shell" and phone.facts["kind"] == "android"
    assert any("mobile_runtime.run" in c for c in adbd.shell_commands)
    assert not list(adbd.root.glob("meki bench*"))  # both working dirs cleaned up
