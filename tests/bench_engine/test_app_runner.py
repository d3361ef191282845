"""The Android app runner: the app's stats JSON is stats.schema.json's object, used as it is.

tests/fixtures/android_app/*.json were written by the app's own code (meki-runtime's BenchRunner and
RunStats under android_app/scripts/jvm_test.sh, which re-checks its fresh output the same way).
"""
import argparse
import json
from pathlib import Path

import jsonschema
import pytest

from device_tests.cli import add_bench_args, config_from_args
from device_tests.errors import RunFailed, TransportError
from device_tests.runners import AppRunner, Launch, app_target, load_stats, make_runner
from device_tests.transports.base import ShellResult, Transport
from mobile_runtime.stats import SCHEMA_PATH

FIX = Path(__file__).parents[1] / "fixtures" / "android_app"


class FakeApp(Transport):
    """Answers the shell commands AppRunner sends with what `adb shell` on a phone would."""

    name = "fake-app"

    def __init__(self, stats_text: str) -> None:
        self.stats_text, self.commands = stats_text, []

    def shell(self, argv, *, timeout_s=60.0, cwd=None):
        argv = tuple(argv)
        self.commands.append(argv)
        out = {"pm": "package:/data/app/ai.meki.app/base.apk\n", "pidof": "4242\n"}.get(argv[0], "")
        if argv[:2] == ("run-as", "ai.meki.app") and argv[2] == "cat":
            out = self.stats_text
        return ShellResult(argv, 0, out, "")

    def push(self, local, remote, *, mode=0o644): raise AssertionError("the app runner pushes nothing")
    def pull(self, remote, local): raise AssertionError("the app runner reads through run-as")
    def exists(self, remote): return False
    def sha256(self, remote): return None
    def start(self, argv, *, cwd, log_path): raise AssertionError
    def stop(self, pid, *, grace_s=2.0): pass
    def is_running(self, pid): return False
    def free_bytes(self, remote_dir): return 1 << 40
    def read_text(self, remote, *, timeout_s=30.0): return ""
    def makedirs(self, remote_dir): pass
    def remove(self, remote, *, recursive=False): pass


def test_fixtures_are_schema_valid():
    schema = json.loads(SCHEMA_PATH.read_text())
    for name in ("app_stats.json", "app_error.json"):
        jsonschema.Draft202012Validator(schema).validate(json.loads((FIX / name).read_text()))


def test_app_stats_are_used_as_they_are(tmp_path):
    text = (FIX / "app_stats.json").read_text()
    t = FakeApp(text)
    runner = make_runner("app", t, extra_args=("--backend", "tflite-qnn"))
    assert isinstance(runner, AppRunner) and runner.stage(t, "/unused") == []
    launch = runner.launch(t, "/data/local/tmp/meki/b", [1, 2, 3], 8, "/unused", "meki_0")
    start = next(c for c in t.commands if c[:2] == ("am", "start"))
    assert start[start.index("target") - 1:start.index("target") + 2] == ("--es", "target", "tflite-qnn")
    assert "ids:1,2,3" in start and launch.pid == 4242
    stats = runner.collect(t, launch, tmp_path / "s.json")
    assert stats == json.loads(text)
    assert stats["runner"] == "android" and stats["generated_tokens"] == len(stats["tokens"])
    assert (tmp_path / "s.json").read_text() == text


def test_the_apps_error_object_is_raised_not_lost(tmp_path):
    t = FakeApp((FIX / "app_error.json").read_text())
    runner = AppRunner()
    launch = Launch(None, "meki_0.json", None, 0.0)
    with pytest.raises(RunFailed, match="app run failed: BundleException: bundle 'x' has no backbone"):
        runner.collect(t, launch, tmp_path / "s.json")


def test_stats_that_break_the_schema_name_the_field():
    data = json.loads((FIX / "app_stats.json").read_text())
    data["generated_tokens"] = -1
    with pytest.raises(TransportError, match="at generated_tokens"):
        load_stats(json.dumps(data), "app")
    data = json.loads((FIX / "app_stats.json").read_text())
    data["runs"] = []   # the app's old shape
    with pytest.raises(TransportError, match="'runs' does not match"):
        load_stats(json.dumps(data), "app")
    with pytest.raises(TransportError, match="not JSON"):
        load_stats("{", "app")


def test_backend_flag_names_the_apps_target():
    assert app_target(()) is None
    assert app_target(("--backend", "executorch")) == "executorch-xnnpack"
    assert app_target(("--backend", "litert")) == "tflite"
    assert app_target(("--backend", "tflite-qnn")) == "tflite-qnn"
    p = argparse.ArgumentParser()
    add_bench_args(p)
    assert config_from_args(p.parse_args(["out", "--runner", "app", "--backend", "tflite-qnn"])).runner_args == [
        "--backend", "tflite-qnn"]
