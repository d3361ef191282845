"""meki bench end to end with a stub runner: local and over adb-shell (FakeAdbd), failure injection.

The real runner on real exported bundles is tests/model/test_bench_real.py (needs torch).
"""
import argparse
import json
import threading
import time
from pathlib import Path

import pytest

from device_tests import report
from device_tests.aihub import fold_dir, fold_profiles, inference_times_us, peak_memory_bytes
from device_tests.bench import BenchConfig, resolve_bundles, run_bench, throttle_reasons
from device_tests.cli import add_bench_args, run_bench_cli
from device_tests.facts import ThermalSnapshot, parse_thermal_lines
from tests.support.bench_stubs import (FIX, adb_opener, adbd, check_outputs, run_errors,  # noqa: F401
                                       stub_bundles, stub_runner)


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
    # a value the script could not read is "-" and the others keep their places (the cap is still seen)
    capped = parse_thermal_lines("cpu policy4 - 1200000 2400000\ntz - skin\ntz 41000 cpu-0\n")
    assert (capped.cur_khz, capped.cap_khz, capped.max_khz) == ({}, {"policy4": 1200000}, {"policy4": 2400000})
    assert any("policy4" in r for r in throttle_reasons(capped, capped, cfg)) and capped.max_celsius == 41.0


def test_paired_ratios_divide_each_meki_run_by_the_dense_run_beside_it():
    """A device that slows down over the bench (heat): whole-run medians mix fast and slow runs, the pairs
    (same rep, run back to back) do not. Failed, throttled and warm-up runs make no pair."""
    from device_tests.results import DeviceReport, RunRecord

    def run(label, i, tok_s, **kw):
        return RunRecord(label, i, kw.pop("warmup", False), ok=kw.pop("ok", True),
                         stats={"prefill_tok_s": 10 * tok_s, "decode_tok_s": tok_s, "ttft_s": 1 / tok_s}, **kw)

    speeds = [1000, 800, 600, 400, 300]  # the device's speed at each rep; MeKi 0.95 of dense throughout
    runs = [run("meki", 0, 5000, warmup=True), run("dense", 0, 10, warmup=True)]
    for i, v in enumerate(speeds):
        runs += [run("meki", i, 0.95 * v), run("dense", i, v)]
    runs += [run("meki", 5, 100, ok=False), run("dense", 5, 2000), run("meki", 6, 50, throttled=True),
             run("dense", 6, 3000)]
    rep = DeviceReport("local", runs=runs)
    report.summarize(rep)
    assert rep.paired["decode_tok_s"]["n"] == 5 and rep.paired["decode_tok_s"]["median"] == pytest.approx(0.95)
    assert rep.paired["ttft_ms"]["median"] == pytest.approx(1 / 0.95)
    assert rep.ratios["decode_tok_s"] == pytest.approx(570 / 800)  # the medians: drift and unpaired runs mixed in
    assert "| MeKi/dense, paired | 5 pairs | 0.95× [0.95–0.95] | 0.95× [0.95–0.95] | 1.05× [1.05–1.05] | – |" in \
        report.markdown(report.BenchResult({"prompt_len": 4, "new_tokens": 8, "warmup": 1, "reps": 5, "runner": "native"},
                                           [], [rep], "now"))


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
