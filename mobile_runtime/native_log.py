"""Native libraries' stderr, filtered: drop the lines we know are noise, pass everything else through.

ExecuTorch's cpuinfo prints five `[cpuinfo_utils.cpp:N] Reading file ... / Failed to open midr file ...`
lines the first time XNNPACK starts on a machine without ARM's midr files (every x86 host), and its
threadpool one `[threadpool.cpp:N] Resetting threadpool to N threads.` when mobile_runtime/threads.py
sizes it: they say nothing about the model. C++ writes to fd 2 directly, so the filter works at the file-descriptor level,
around one call only, and re-emits every other line (real errors stay visible).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

NOISE = re.compile(r"^\[(cpuinfo_utils\.cpp:\d+\] |threadpool\.cpp:\d+\] Resetting threadpool to \d+ threads)")


@contextlib.contextmanager
def filtered_native_stderr(noise: re.Pattern[str] = NOISE) -> Iterator[None]:
    """Capture fd 2 during the block; afterwards write back the lines that do not match `noise`."""
    if os.environ.get("MEKI_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [ln for ln in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.match(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
