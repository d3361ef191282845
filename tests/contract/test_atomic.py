"""Atomic outputs: the lock (a second writer fails at once), stale temporaries of dead writers are
removed, nothing half-written on error (a full disk included), and the lock file does not linger."""

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from contract.atomic import (OutputExistsError, OutputLockedError, atomic_dir, atomic_write_bytes, lock_path,
                             output_lock, remove_stale)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (reuse within the test is vanishingly unlikely)


def hold_lock(out, seconds=30):
    """A child process holding output_lock(out) until killed; returns once it holds it."""
    code = textwrap.dedent(f"""
        import sys, time
        from contract.atomic import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_fails_with_a_clear_error(tmp_path):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            with atomic_dir(out) as tmp:
                (tmp / "x").write_text("no")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    with atomic_dir(out) as tmp:  # the kernel dropped the dead holder's lock
        (tmp / "x").write_text("yes")
    assert (out / "x").read_text() == "yes"
    assert not lock_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_two_concurrent_writers_never_both_succeed(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(OutputLockedError):
            with output_lock(out):
                pass
    with output_lock(out):  # released, and re-acquirable
        pass


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "out"
    stale_dir = tmp_path / f".out.partial-{dead_pid()}-0badc0de"
    stale_dir.mkdir()
    (stale_dir / "meki").mkdir()
    stale_file = tmp_path / f".out.partial-{dead_pid()}-feedf00d"
    stale_file.write_bytes(b"half")
    mine = tmp_path / f".out.partial-{os.getpid()}-00000000"
    other = tmp_path / ".other.partial-1-00000000"
    mine.mkdir(), other.mkdir()
    assert sorted(remove_stale(out)) == sorted([stale_dir, stale_file])
    assert mine.exists() and other.exists()
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-1-00000000", f".out.partial-{os.getpid()}-00000000", "out"]


def test_error_inside_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OSError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_writing_a_file_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_dir(tmp_path / "out"):
            pass
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new").write_text("1")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]


def test_lock_file_is_removed_on_each_release(tmp_path):
    out = tmp_path / "out"
    for _ in range(20):
        with output_lock(out):
            time.sleep(0)
    assert not lock_path(out).exists()


def test_a_failed_final_rename_leaves_the_old_output_and_no_complete_looking_temporary(tmp_path, monkeypatch):
    """The last step, renaming the finished folder into place, can fail too (a dangling link's target
    folder, a disk error): the finished temporary must not stay, and a replaced output comes back."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    real_rename = os.rename

    def failing(src, dst):
        if str(dst) == str(out) and (Path(src) / "new.txt").exists():  # the finished folder, into place
            raise OSError(errno.EIO, "simulated failure", str(dst))
        return real_rename(src, dst)
    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="simulated failure"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["out"]
    assert (out / "old.txt").read_text() == "old"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")       # a dangling link is an existing output
    with pytest.raises(OutputExistsError):
        with atomic_dir(tmp_path / "dangling"):
            pass
