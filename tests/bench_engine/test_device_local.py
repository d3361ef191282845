"""LocalTransport for real: files, commands, processes; host facts; the memory sampler."""
import json
import sys
import time

import pytest

from device_tests.errors import (
    CommandTimeout,
    DeviceDisconnected,
    RemotePathMissing,
    RunnerMissing,
    retry,
)
from device_tests.facts import collect_facts
from device_tests.memory_sampler import MemorySampler
from device_tests.transports import LocalTransport, open_transport

HOSTILE = ["a b", "it's", 'q"uote', ";rm -rf x", "$(touch pwned)", "new\nline", "`touch pwned2`"]


@pytest.fixture
def t(tmp_path):
    tr = LocalTransport(tmp_path / "wd")
    (tmp_path / "wd").mkdir()
    yield tr
    tr.close()


def test_push_skip_and_atomic(t, tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(b"x" * 100_000)
    assert t.push(src, "bundle/model.bin") is True
    assert t.push(src, "bundle/model.bin") is False  # sha256 matches: skipped
    assert t.sha256("bundle/model.bin") == t.sha256(str(src))
    src.write_bytes(b"y" * 10)
    assert t.push(src, "bundle/model.bin") is True
    assert [p.name for p in (t.workdir / "bundle").iterdir()] == ["model.bin"]  # no temp left
    t.pull("bundle/model.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"y" * 10
    with pytest.raises(RemotePathMissing):
        t.pull("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_shell_exit_code_stderr_timeout(t):
    r = t.shell([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandTimeout):
        t.shell(["sleep", "5"], timeout_s=0.3)
    with pytest.raises(RunnerMissing):
        t.shell(["./no-such-runner"]).check(running_program=True)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_plain_arguments(t, tmp_path, name):
    src = tmp_path / "f"
    src.write_text("data")
    remote = f"dir {name}/file {name}"
    t.push(src, remote)
    assert t.exists(remote) and t.read_text(remote) == "data"
    assert t.shell(["cat", remote]).check().stdout == "data"
    assert not list(t.workdir.rglob("pwned*")) and not (t.workdir / "x").exists()


def test_process_start_stop(t):
    pid = t.start([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
                  cwd=".", log_path="run.log")
    assert t.is_running(pid)
    t.stop(pid, grace_s=1.0)
    assert not t.is_running(pid)
    with pytest.raises(RunnerMissing):
        t.start(["./missing-runner"], cwd=".", log_path="x.log")
    assert t.free_bytes(".") > 0


def test_host_facts_json(t):
    facts = collect_facts(t)
    data = json.loads(json.dumps(facts.to_json()))
    assert data["kind"] == "host" and data["page_size"] > 0 and data["total_ram_kb"] > 0
    assert data["abi"]


def test_memory_sampler_sees_growth(t):
    code = "import time; a = bytearray(64 << 20); time.sleep(1.0)"
    pid = t.start([sys.executable, "-c", code], cwd=".", log_path="m.log")
    with MemorySampler(t, pid, interval_s=0.1) as sampler:
        deadline = time.monotonic() + 10
        while t.is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    series = sampler.series
    assert len(series.samples) >= 3 and series.errors == []
    assert series.peak("rss_anon_kb") > 60 * 1024  # the 64 MiB buffer is resident and anonymous
    assert series.peak("pss_kb") > 60 * 1024
    assert json.dumps(series.to_json())


def test_retry_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise DeviceDisconnected("usb blip")
        return "ok"

    assert retry(flaky, attempts=3, backoff_s=0.5, sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0]
    with pytest.raises(DeviceDisconnected):
        retry(lambda: (_ for _ in ()).throw(DeviceDisconnected("gone")), attempts=2, sleep=sleeps.append)


def test_open_transport_local(tmp_path):
    assert isinstance(open_transport("local", workdir=tmp_path), LocalTransport)
