"""meki bench end to end: local and over adb-shell (FakeAdbd), real runner and failure injection.

The slow tests run the real Python runner on real exported bundles; the fast ones run a stub
runner (a script taking the runner's flags and writing schema-valid stats) so every failure
path (missing runner, timeout, disconnect, full disk, permission) is exercised in seconds.
"""
import argparse
import json
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from device_tests import report
from device_tests.aihub import fold_dir, fold_profiles, inference_times_us, peak_memory_bytes
from device_tests.bench import BenchConfig, resolve_bundles, run_bench, throttle_reasons
from device_tests.cli import add_bench_args, run_bench_cli
from device_tests.facts import ThermalSnapshot, parse_thermal_lines
from device_tests.transports import open_transport
from mobile_runtime.manifest import (Backbone, Manifest, MethodSpec, PackRef, TensorSpec,
                                     write_manifest)
from mobile_runtime.stats import SCHEMA_PATH as STATS_SCHEMA

FIX = Path(__file__).parent / "fixtures"
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
            (d / "tables.mpk").write_bytes(b"\0" * 4096)
            pack = PackRef("tables.mpk", "fp16", "token-major", 128, 2, 8, "f" * 32)
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
    from device_tests.fake_adbd import FakeAdbd

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


# -- fast: stub runner ------------------------------------------------------------------------

def test_local_bench_alternates_samples_and_cleans_up(tmp_path):
    work = tmp_path / "device work"
    cfg = BenchConfig(devices=["local"], runner="native", native_path=str(stub_runner(tmp_path, delay=0.6)),
                      reps=2, warmup=1, sample_interval_s=0.1, remote_dir=str(work))
    result = run_bench(stub_bundles(tmp_path), cfg, tmp_path / "out")
    data = check_outputs(tmp_path / "out", result)
    assert data["outputs"]["plots"] == ["tok_s.png", "rss.png"]
    dev = result.devices[0]
    assert dev.status == "ok" and not dev.errors, run_errors(dev)
    assert [(r.label, r.warmup) for r in dev.runs] == [("meki", True), ("dense", True)] + [
        ("meki", False), ("dense", False)] * 2
    assert all(r.memory["samples"] and r.memory["peak_vm_rss_kb"] > 1000 for r in dev.runs)
    assert dev.summary["meki"]["runs"] == 2 and dev.summary["meki"]["decode_tok_s"]["median"] == 900.0
    assert dev.ratios["decode_tok_s"] == pytest.approx(1.2)
    assert data["devices"][0]["facts"]["kind"] == "host"
    assert not work.exists()  # cleaned up
    raw = sorted(p.name for p in (tmp_path / "out" / "raw" / "local").iterdir())
    assert raw == ["dense-rep0.json", "dense-rep1.json", "dense-warmup0.json",
                   "meki-rep0.json", "meki-rep1.json", "meki-warmup0.json"]


def test_keep_pushed_skips_unchanged_files(tmp_path, adbd):
    export, stub = stub_bundles(tmp_path), stub_runner(tmp_path, delay=0.1)
    work = f"{adbd.root}/work it's \"$(touch pwned)\""  # hostile: must stay one argument
    cfg = BenchConfig(devices=[adbd.address], runner="native", native_path=str(stub), reps=1, warmup=0,
                      keep_pushed=True, remote_dir=work)
    for i in range(2):
        n_before = len(adbd.shell_commands)
        result = run_bench(export, cfg, tmp_path / f"out{i}", open_device=adb_opener(adbd))
        assert result.devices[0].status == "ok", run_errors(result.devices[0])
        moves = [c for c in adbd.shell_commands[n_before:] if "(mv -f " in c]
        assert len(moves) == (6 if i == 0 else 0)  # 5 bundle files + runner, then all skipped
    assert (Path(work) / "bundles" / "meki" / "manifest.json").is_file()
    assert not (Path(work) / "runs").exists() and not list(adbd.root.rglob("pwned"))


@pytest.mark.parametrize("fault", ["runner_missing", "exec_format", "crash", "timeout", "full_disk",
                                   "permission", "disconnect"])
def test_failures_become_clear_report_errors(tmp_path, adbd, fault):
    stub = stub_runner(tmp_path, mode={"crash": "crash", "timeout": "hang"}.get(fault, "ok"),
                       delay=4.0 if fault == "disconnect" else 0.1)
    if fault == "runner_missing":
        stub = tmp_path / "build" / "meki_runner"
    if fault == "exec_format":
        stub.write_bytes(b"\x7fELF\x02\x01\x01 not for this machine")
    if fault == "full_disk":
        adbd.faults.sync_fail = "couldn't write: No space left on device"
    if fault == "permission":
        adbd.faults.sync_fail = "secure_mkdirs failed: Permission denied"
    work = adbd.root / f"work-{adbd.address.replace(':', '_')}"  # '{device}' below; local gets its own
    if fault == "disconnect":
        def unplug():  # once the runner is going, the cable goes and stays gone
            deadline = time.monotonic() + 60
            while not list(work.glob("runs/*.log")) and time.monotonic() < deadline:
                time.sleep(0.05)
            adbd.faults.refuse_connections = 10_000
            adbd.drop_all()
        threading.Thread(target=unplug, daemon=True).start()
    cfg = BenchConfig(devices=[adbd.address, "local"], runner="native", native_path=str(stub), reps=1,
                      warmup=0, run_timeout_s=1.5 if fault == "timeout" else 60,
                      remote_dir=str(adbd.root / "work-{device}"))
    result = run_bench(stub_bundles(tmp_path), cfg, tmp_path / "out", open_device=adb_opener(adbd))
    check_outputs(tmp_path / "out", result)
    phone, local = result.devices
    expected = {"runner_missing": "RunnerMissing", "exec_format": "RunnerMissing",
                "crash": "the backbone refused this bundle", "timeout": "CommandTimeout",
                "full_disk": "DeviceFull", "permission": "PermissionDenied",
                "disconnect": "DeviceDisconnected"}[fault]
    assert phone.status == "failed" and expected in run_errors(phone), run_errors(phone)
    assert expected in (tmp_path / "out" / "bench.md").read_text()
    # the other device went on, unaffected unless the fault is in the runner itself
    assert local.status == ("ok" if fault in ("full_disk", "permission", "disconnect") else "failed")
    if fault == "timeout":
        assert [r.error_type for r in phone.runs] == ["CommandTimeout", "CommandTimeout"], run_errors(phone)
    if fault in ("full_disk", "permission"):  # nothing half-pushed under a final name
        assert not [p for p in work.rglob("*") if p.is_file()]


def test_transient_disconnect_mid_run_is_survived(tmp_path, adbd):
    work = adbd.root / "work"

    def blip():
        while not list(work.glob("runs/*.log")):
            time.sleep(0.05)
        adbd.drop_all()  # reconnect works: nohup kept the runner alive
    threading.Thread(target=blip, daemon=True).start()
    cfg = BenchConfig(devices=[adbd.address], runner="native", native_path=str(stub_runner(tmp_path, delay=1.5)),
                      reps=1, warmup=0, remote_dir=str(work))
    result = run_bench(stub_bundles(tmp_path), cfg, tmp_path / "out", open_device=adb_opener(adbd))
    assert result.devices[0].status == "ok", run_errors(result.devices[0])


def test_cli_defaults_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    p = argparse.ArgumentParser()
    add_bench_args(p)
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    out = tmp_path / "out"
    argv = [str(stub_bundles(tmp_path)), "--runner", "native", "--native-runner", str(stub_runner(tmp_path)),
            "--reps", "1", "--warmup", "0", "--out", str(out), "--remote-dir", str(tmp_path / "w")]
    assert run_bench_cli(p.parse_args(argv)) == 0
    assert "| local (local) | native | ok |" in capsys.readouterr().out
    assert run_bench_cli(p.parse_args(argv)) == 2  # never overwrites silently
    monkeypatch.setenv("ANDROID_SERIAL", "emulator-5554")
    from device_tests.cli import config_from_args
    assert config_from_args(p.parse_args(["x"])).devices == ["emulator-5554"]
    assert config_from_args(p.parse_args(["x", "--device", "local", "--device", "a:1"])).devices == ["local", "a:1"]


def test_bundle_problems_fail_before_anything_is_pushed(tmp_path):
    export = stub_bundles(tmp_path)
    (export / "dense" / "model.pte").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="model.pte"):
        resolve_bundles(export)


def test_throttling_flags():
    cfg = BenchConfig()
    cool = ThermalSnapshot(41.0, "NONE", 0, cap_khz={"policy4": 2_800_000}, max_khz={"policy4": 2_800_000})
    assert throttle_reasons(cool, cool, cfg) == []
    hot = ThermalSnapshot(53.5, "MODERATE", 2, cap_khz={"policy4": 1_900_000}, max_khz={"policy4": 2_800_000})
    reasons = " ".join(throttle_reasons(cool, hot, cfg))
    assert "53.5" in reasons and "MODERATE" in reasons and "cap fell 2800 -> 1900" in reasons
    snap = parse_thermal_lines("cpu policy0 300000 1800000 1800000\ncpu policy4 2000000 2400000 2800000\n"
                               "tz 38500 battery\ntz 47200 cpu-1-0-usr\ntz 0 disabled\n")
    assert snap.max_celsius == 47.2 and snap.cap_khz == {"policy0": 1800000, "policy4": 2400000}


def test_aihub_profile_folds_into_the_bench_format(tmp_path):
    profile = json.loads((FIX / "aihub" / "profile_qai_hub_0.56_client_test.json").read_text())
    assert inference_times_us(profile) == [10003.0, 4205.0] and peak_memory_bytes(profile) == 166711296
    rep = fold_profiles("Samsung Galaxy S24 (Family)", {"meki": profile, "dense": profile})
    assert [r.stats["decode_tok_s"] for r in rep.runs[:2]] == pytest.approx([1e6 / 10003, 1e6 / 4205])
    assert rep.runs[0].stats["x_compute_units"] == {"CPU": 1, "NPU": 1}
    saved = tmp_path / "profiles"
    saved.mkdir()
    for label in ("meki", "dense"):
        (saved / f"s24__{label}__decode__1.aihub-profile.json").write_text(json.dumps(
            {"device": "Samsung Galaxy S24 (Family)", "label": label, "step": "decode",
             "tokens_per_call": 1, "job_id": "j-recorded", "profile": profile}))
    result = fold_dir(saved, tmp_path / "out")
    dev = result.devices[0]
    assert dev.device == "aihub:Samsung Galaxy S24 (Family)" and dev.status == "ok"
    assert dev.summary["meki"]["peak_rss_mib"]["median"] == pytest.approx(166711296 / 2**20)
    assert dev.summary["meki"]["decode_tok_s"]["median"] == pytest.approx((1e6 / 10003 + 1e6 / 4205) / 2)
    assert dev.ratios["decode_tok_s"] == pytest.approx(1.0)
    report.validate(json.loads((tmp_path / "out" / "bench.json").read_text()))


# -- slow: the real runner on real exported bundles --------------------------------------------

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
