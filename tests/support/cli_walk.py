"""Run many `meki` command lines as `python -m meki.cli` would, paying the imports once.

`python -m tests.support.cli_walk CASES.json RESULTS.json`: CASES is a list of {"argv": [...],
"fault": null | "enospc"}. Each case runs in a forked child (imports already done) with stdout and
stderr captured; an exception escaping main() is printed as Python would print it (a traceback), so
the parent sees exactly what a user would. A child still running after --timeout is killed: a hang.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _child(argv: list[str], fault: str | None, out_fd: int) -> None:
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    if fault == "enospc":  # the disk fills up: every fsync (where delayed writes fail) reports ENOSPC
        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync = full
    from meki.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else (print(exc.code, file=sys.stderr) or 1))
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_case(argv: list[str], fault: str | None = None, timeout: float = 60.0) -> dict:
    with tempfile.TemporaryFile() as log:
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _child(argv, fault, log.fileno())
            finally:
                os._exit(99)
        status, hung = None, False
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif time.monotonic() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                hung = True
            else:
                time.sleep(0.01)
        log.seek(0)
        output = log.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    return {"argv": argv, "fault": fault, "code": code, "hung": hung, "output": output,
            "seconds": round(time.monotonic() - t0, 2)}


def main() -> None:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    import importlib

    for module in ("meki.cli", "device_tests.cli", "mobile_runtime.run", "pipeline.export.bundle", "pipeline.fold",
                   "training.train"):
        importlib.import_module(module)  # the heavy imports, once, before forking

    cases = json.loads(open(cases_path).read())
    results = [run_case(c["argv"], c.get("fault"), timeout) for c in cases]
    with open(results_path, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
