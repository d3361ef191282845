"""kill -9 in the middle of `meki fold` / `meki export`: no output appears, the rerun succeeds and
removes what the killed run left; a second command aimed at an output being written fails cleanly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.atomic import output_lock
from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from pipeline.fold import fold_checkpoint
from pipeline.profile import descendants
from tests.model.helpers import random_model


def meki(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-m", "meki.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, parent: Path, name: str, inside: str, timeout: float = 300,
              with_child: bool = False) -> Path:
    """SIGKILL `proc` once `.NAME.partial-*/INSIDE` exists (the output is half built) and, with_child, while
    it has a child process (export's forked helper); returns the partial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in parent.glob(f".{name}.partial-{proc.pid}-*") if (p / inside).exists()]
        helpers = descendants(proc.pid) if found and with_child else []
        if found and with_child and not helpers:
            found = []
        if found:
            proc.helpers = helpers
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return found[0]
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("timed out waiting for the partial output")


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan waits to be reaped by init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_fold_killed_mid_write_then_rerun(tmp_path):
    save_checkpoint(random_model(), tmp_path / "ck")
    # one vocabulary row per chunk: the fold is slow enough to be killed half-way on any machine
    proc = meki("fold", str(tmp_path / "ck"), str(tmp_path / "folded"), "--chunk-size", "1")
    partial = kill_when(proc, tmp_path, "folded", "model.safetensors")
    assert not (tmp_path / "folded").exists() and partial.exists()
    fold_checkpoint(tmp_path / "ck", tmp_path / "folded", progress=False)
    assert sorted(p.name for p in (tmp_path / "folded").iterdir()) == [
        "checkpoint.json", "config.json", "model.safetensors", "tables.safetensors"]
    assert leftovers(tmp_path) == []


def test_second_fold_to_the_same_output_fails_cleanly(tmp_path):
    save_checkpoint(random_model(), tmp_path / "ck")
    with output_lock(tmp_path / "folded"):  # another fold is writing it right now
        proc = meki("fold", str(tmp_path / "ck"), str(tmp_path / "folded"))
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "being written by another command" in lines[-1]
    assert not (tmp_path / "folded").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_export_killed_mid_write_then_rerun(tmp_path, jobs):
    """jobs 1: killed once meki/ is written, while dense/ is lowered (no meki/ without its dense/ may appear);
    jobs 2: killed while the forked helper lowers the dense bundle (the helper dies with it)."""
    save_checkpoint(random_model(), tmp_path / "ck")
    out = tmp_path / "out"
    proc = meki("export", str(tmp_path / "ck"), "--target", "executorch-xnnpack", "--out", str(out), "--jobs", jobs)
    # jobs 2: the helper forks once the weights are loaded, i.e. after the fold has written .folded/
    partial = kill_when(proc, tmp_path, "out", "meki/config.json" if jobs == "1" else ".folded/config.json",
                        with_child=jobs == "2")
    assert not out.exists() and partial.exists()  # not a meki/ without its dense/
    deadline = time.monotonic() + 30  # the helper dies with its parent (PR_SET_PDEATHSIG)
    while any(alive(pid) for pid in getattr(proc, "helpers", [])):
        assert time.monotonic() < deadline, f"the helper outlived the killed export: {proc.helpers}"
        time.sleep(0.05)
    export_bundles(tmp_path / "ck", out, ["executorch-xnnpack"], ExportSettings(max_seq_len=64, prefill_len=8))
    assert sorted(p.name for p in out.iterdir()) == ["dense", "meki"]
    assert (out / "meki" / "manifest.json").exists() and (out / "dense" / "manifest.json").exists()
    assert leftovers(tmp_path) == []
