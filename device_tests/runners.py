"""The programs a bench starts: the Python runner, the native meki_runner, or the Android app.

Each runner stages what it needs on the device, starts one generation, says when it is done and
brings back its stats JSON: one object of contract/stats.schema.json, validated and used as it
is (the app writes the same shape as the CLI runners; a failed run's error object is raised).
"""
from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from device_tests.errors import RunFailed, RunnerMissing, TransportError, classify
from device_tests.transports.base import Transport
from device_tests.transports.local import LocalTransport
from mobile_runtime.stats import SCHEMA_PATH as STATS_SCHEMA_PATH

RUNNER_KINDS = ("auto", "python", "native", "app")
DEFAULT_NATIVE = Path("build/native/meki_runner")  # mobile_runtime/native's CMake output
DEFAULT_APP = "ai.meki.app"


@dataclass
class Launch:
    """One started generation on the device."""

    pid: int | None  # the process to sample (None when it cannot be found)
    stats_remote: str  # where the runner writes its JSON (device path, or run-as relative)
    log_remote: str | None  # combined stdout+stderr of a CLI runner
    started: float  # time.monotonic() on the host


class Runner(ABC):
    kind: str = "runner"
    package: str | None = None  # the app package whose `dumpsys meminfo` to sample

    def stage(self, t: Transport, workdir: str) -> list[str]:
        """Push what the runner needs under workdir; return the device paths it placed."""
        return []

    @abstractmethod
    def launch(self, t: Transport, bundle: str, prompt_ids: list[int], tokens: int,
               run_dir: str, name: str) -> Launch:
        """Start one generation of `tokens` new tokens after `prompt_ids` on the device bundle."""

    @abstractmethod
    def done(self, t: Transport, launch: Launch) -> bool:
        """Whether the generation has finished (successfully or not)."""

    @abstractmethod
    def collect(self, t: Transport, launch: Launch, local: Path) -> dict[str, Any]:
        """Bring the stats JSON to `local` and return it as a flat stats dict; raise on failure."""

    def stop(self, t: Transport, launch: Launch) -> None:
        """Stop a generation that ran past its deadline."""
        if launch.pid is not None:
            t.stop(launch.pid, grace_s=2.0)


class CliRunner(Runner):
    """`python -m mobile_runtime.run` or `meki_runner`: the same flags, the same JSON."""

    def __init__(self, kind: str, *, binary: Path | None = None, python: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.kind, self.binary, self.python, self.extra_args = kind, binary, python, extra_args
        self._prefix: list[str] = []

    def stage(self, t: Transport, workdir: str) -> list[str]:
        if self.kind == "python":
            self._prefix = [str(self.python), "-m", "mobile_runtime.run"]
            return []
        assert self.binary is not None
        remote = f"{workdir}/bin/{self.binary.name}"
        t.push(self.binary, remote, mode=0o755)  # skipped when the sha256 already matches
        self._prefix = [remote]
        return [remote]

    def launch(self, t: Transport, bundle: str, prompt_ids: list[int], tokens: int,
               run_dir: str, name: str) -> Launch:
        stats, log = f"{run_dir}/{name}.json", f"{run_dir}/{name}.log"
        t.remove(stats)  # a stale file from a kept working dir must not pass for this run's
        argv = [*self._prefix, bundle, "--prompt-ids", ",".join(map(str, prompt_ids)),
                "--max-new-tokens", str(tokens), "--ignore-eos", "--quiet", "--stats", stats,
                *self.extra_args]
        pid = t.start(argv, cwd=run_dir, log_path=log)
        return Launch(pid, stats, log, time.monotonic())

    def done(self, t: Transport, launch: Launch) -> bool:
        return launch.pid is None or not t.is_running(launch.pid)

    def collect(self, t: Transport, launch: Launch, local: Path) -> dict[str, Any]:
        if not t.exists(launch.stats_remote):
            log = _tail(t, launch.log_remote)
            err = classify(log, running_program=True) or TransportError
            raise err(f"{self.kind} runner wrote no stats; its output ends: {log or '(empty)'}")
        t.pull(launch.stats_remote, local)
        return load_stats(local.read_text(), self.kind)


class AppRunner(Runner):
    """The Android app's BenchActivity (android_app/README.md): one rep per launch.

    `--backend B` among the extra runner flags picks the bundle's target as for the CLI runners
    (executorch, litert, or a target name such as tflite-qnn, whose model the app picks for the
    phone's SoC); the app's default is executorch-xnnpack.
    """

    kind = "app"

    def __init__(self, package: str = DEFAULT_APP, extra_args: tuple[str, ...] = ()) -> None:
        self.package = package
        self.target = app_target(extra_args)

    def stage(self, t: Transport, workdir: str) -> list[str]:
        res = t.shell(["pm", "path", self.package])
        if res.returncode != 0 or "package:" not in res.stdout:
            raise RunnerMissing(f"app {self.package} is not installed: adb install app-release.apk")
        return []

    def launch(self, t: Transport, bundle: str, prompt_ids: list[int], tokens: int,
               run_dir: str, name: str) -> Launch:
        out = f"{name}.json"
        t.shell(["run-as", self.package, "rm", "-f", f"files/{out}"])
        t.shell(["am", "force-stop", self.package]).check()  # a cold process per run, like the CLI
        t.shell(["am", "start", "-W", "-n", f"{self.package}/.BenchActivity", "--es", "bundle", bundle,
                 "--es", "prompt", "ids:" + ",".join(map(str, prompt_ids)), "--ei", "tokens", str(tokens),
                 "--ei", "reps", "1", "--es", "out", out, *(["--es", "target", self.target] if self.target else [])],
                timeout_s=120.0).check(running_program=True)
        pids = t.shell(["pidof", self.package]).stdout.split()
        return Launch(int(pids[0]) if pids and pids[0].isdigit() else None, out, None, time.monotonic())

    def done(self, t: Transport, launch: Launch) -> bool:
        res = t.shell(["run-as", self.package, "test", "-e", f"files/{launch.stats_remote}"])
        return res.returncode == 0 or (launch.pid is not None and not t.is_running(launch.pid))

    def collect(self, t: Transport, launch: Launch, local: Path) -> dict[str, Any]:
        text = t.shell(["run-as", self.package, "cat", f"files/{launch.stats_remote}"]).check().stdout
        local.write_text(text)
        t.shell(["am", "force-stop", self.package])
        return load_stats(text, "app")

    def stop(self, t: Transport, launch: Launch) -> None:
        t.shell(["am", "force-stop", self.package])


APP_BACKENDS = {"executorch": "executorch-xnnpack", "litert": "tflite"}  # mobile_runtime.run's --backend names


def app_target(extra_args: tuple[str, ...]) -> str | None:
    """The target the app should run: the value of `--backend` (a backend or a target name), else None."""
    args = list(extra_args)
    if "--backend" not in args:
        return None
    i = args.index("--backend")
    if i + 1 >= len(args):
        raise ValueError("--backend needs a value (executorch, litert or a target name)")
    return APP_BACKENDS.get(args[i + 1], args[i + 1])


def load_stats(text: str, runner: str) -> dict[str, Any]:
    """A runner's stats JSON, checked against stats.schema.json; a failed run's error object is raised."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TransportError(f"{runner} runner wrote stats that are not JSON: {exc}") from None
    errors = list(jsonschema.Draft202012Validator(_stats_schema()).iter_errors(data))
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(top)"
        raise TransportError(f"{runner} stats JSON does not match stats.schema.json at {where}: {errors[0].message}")
    if "error" in data:
        err = data["error"]
        message = f"{runner} run failed: {err['type']}: {err['message']}"
        raise (classify(err["message"]) or RunFailed)(message)
    return data


def make_runner(kind: str, t: Transport, *, native_path: Path | None = None,
                device_python: str | None = None, app_package: str = DEFAULT_APP,
                extra_args: tuple[str, ...] = ()) -> Runner:
    """Pick the runner: 'auto' is native when its binary exists, else python on this machine."""
    if kind not in RUNNER_KINDS:
        raise ValueError(f"unknown runner {kind!r}; valid: {', '.join(RUNNER_KINDS)}")
    local = isinstance(t, LocalTransport)
    native = Path(native_path) if native_path else DEFAULT_NATIVE
    if kind == "auto":
        kind = "native" if native.is_file() else "python"
    if kind == "app":
        return AppRunner(app_package, extra_args)
    if kind == "native":
        if not native.is_file():
            raise RunnerMissing(f"native runner {native} not found: build it (mobile_runtime/native, "
                                "build/native/) or pass --runner python")
        return CliRunner("native", binary=native, extra_args=extra_args)
    python = device_python or (_host_python() if local else None)
    if python is None:
        raise RunnerMissing("a phone has no Python: build meki_runner for it (--runner native) or "
                            "use the app (--runner app)")
    return CliRunner("python", python=python, extra_args=extra_args)


def _host_python() -> str:
    import sys  # noqa: PLC0415 - the venv's interpreter runs the Python runner on this machine
    return sys.executable


def _tail(t: Transport, remote: str | None, lines: int = 4) -> str:
    """The last lines of a runner's log, joined with ' | ' so a report cell stays one line."""
    if remote is None:
        return ""
    try:
        text = t.read_text(remote)
    except TransportError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-500:]


_SCHEMA: dict[str, Any] = {}


def _stats_schema() -> dict[str, Any]:
    if not _SCHEMA:
        _SCHEMA.update(json.loads(STATS_SCHEMA_PATH.read_text()))
    return _SCHEMA
