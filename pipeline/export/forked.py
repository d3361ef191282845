"""One bundle written beside another: a forked copy of the export process does the second.

ExecuTorch's lowering is single-threaded Python (graph re-tracing under FakeTensor), so with a second
core and memory for two lowerings the MeKi/dense pair takes the time of the longer bundle instead of
the sum. The helper is a fork: it shares what the parent has loaded copy-on-write (nothing re-read,
nothing copied until written), writes its bundle into the export's temporary folder, and reports its
stages and any failure through a small JSON file. It dies with the parent (PR_SET_PDEATHSIG), so a
killed export leaves no writer behind, and the parent stops it when its own bundle fails. When the
helper fails first, the parent hears it at once (SIGCHLD, in the main thread) and stops its own
bundle instead of finishing it for nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from pipeline import profile
from pipeline.export.child import child_failure
from pipeline.export.registry import ExportError

PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def forked(work: Callable[[], object], what: str, report: Path) -> Iterator[None]:
    """Run `work` in a forked child while the body runs; wait for it after the body. The child's
    failure (an exception, a signal) raises ExportError naming `what`; the body's stops the child."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(work, report, parent)  # never returns
    ended: list[int] = []  # the helper's wait status, once reaped

    def reap(block: bool) -> bool:
        if not ended:
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
                if done:
                    ended.append(status)
        return bool(ended)

    def on_child(signum: int, frame: FrameType | None) -> None:  # any child: only ours is reaped, once ended
        if not (reap(block=False) and os.waitstatus_to_exitcode(ended[0]) != 0):
            return
        # again shortly: after an import (one cut short stays broken in sys.modules), or if a finaliser
        # swallowed this one; once the body is left, the handler is gone and the signal ignored
        threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGCHLD)).start()
        if not _importing(frame):
            raise _HelperFailed

    watch = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGCHLD, on_child) if watch else None
    try:
        try:
            if watch:
                on_child(signal.SIGCHLD, None)  # it may have ended before the handler was in place
            yield
        finally:
            if watch:
                signal.signal(signal.SIGCHLD, previous)
    except _HelperFailed:
        pass  # the body was stopped: the helper's own failure is reported below
    except BaseException:
        _stop(pid, ended)
        raise
    with profile.stage(f"wait for {what}"):
        reap(block=True)
    code = os.waitstatus_to_exitcode(ended[0]) if ended else 1
    said = _read_report(report)
    prof = profile.active()
    if prof is not None:
        prof.adopt(said.get("stages", []))
    if code != 0:
        error = said.get("error")
        raise ExportError(f"{what} failed: {error}" if error else child_failure(what, code, ""))


def _child(work: Callable[[], object], report: Path, parent: int) -> None:
    code, said = 1, {}
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)
        import torch

        torch.set_num_threads(1)  # libgomp's thread pool does not survive a fork; lowering is one thread anyway
        prof = profile.active()
        first = prof.after_fork_in_child() if prof is not None else 0
        try:
            work()
            code = 0
        except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the parent stops on its own
            said["error"] = "interrupted"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            said["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ExportError) else str(exc)
        if prof is not None:
            said["stages"] = [asdict(r) for r in prof.records[first:]]
        tmp = report.with_name(report.name + ".tmp")
        tmp.write_text(json.dumps(said))
        tmp.replace(report)
    finally:
        os._exit(code)  # never the parent's exit path (its atexit hooks, the temporary folder's cleanup)


def _read_report(report: Path) -> dict:
    try:
        said = json.loads(report.read_text())
    except (OSError, ValueError):
        return {}
    report.unlink(missing_ok=True)
    return said if isinstance(said, dict) else {}


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _HelperFailed(BaseException):
    """Raised in the body by the SIGCHLD handler: the helper ended with a failure (a BaseException, so
    library code that catches Exception does not swallow it)."""


def _stop(pid: int, ended: list[int]) -> None:
    if ended:
        return
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
