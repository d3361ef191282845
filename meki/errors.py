"""How `meki` ends on an error: one line on stderr (what is wrong, what to do) and a documented exit code.

Exit codes (README, "The `meki` command"):
  0  success
  1  a check ran and failed (verify, verify-pack, bench with failed runs)
  2  bad input: command line, file, config, checkpoint, bundle, device name
  3  the output exists (pass --overwrite) or another command is writing it right now
  4  an I/O error while writing (disk full, read-only, permission); the partial output was removed
  70 an internal error (a bug): rerun with MEKI_DEBUG=1 for the traceback and report it
  130 interrupted (Ctrl-C); the partial output was removed
"""

from __future__ import annotations

import errno
import os
import pickle
import sys
import traceback

EXIT_CHECK_FAILED, EXIT_INPUT, EXIT_OUTPUT, EXIT_IO, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 4, 70, 130

_IO_HINTS = {
    errno.ENOSPC: "free some space or choose an output on another disk",
    errno.EDQUOT: "free some space (disk quota exceeded) or choose another output",
    errno.EROFS: "choose a writable output folder",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EFBIG: "the file is larger than this file system or ulimit -f allows; choose another disk",
}


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user gave us something wrong' (imported lazily: the CLI is light)."""
    kinds: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError,
                                        IsADirectoryError, UnicodeError, pickle.UnpicklingError]
    for module, name in (("mobile_runtime.pack", "PackError"), ("pipeline.export.registry", "ExportError"),
                         ("device_tests.errors", "TransportError"), ("safetensors", "SafetensorError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            kinds.append(getattr(mod, name))
    return tuple(kinds)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an exception that escaped a verb."""
    from contract.atomic import OutputExistsError, OutputLockedError

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; nothing was written (partial outputs were removed)"
    if isinstance(exc, (OutputExistsError, OutputLockedError, FileExistsError)):
        return EXIT_OUTPUT, one_line(exc)
    if isinstance(exc, _input_errors()):
        return EXIT_INPUT, one_line(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        hint = _IO_HINTS.get(exc.errno or 0, "check the path and the disk")
        return EXIT_IO, (f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, 'EIO')}) on{where}; {hint}; "
                         "any partial output was removed and nothing was replaced")
    if isinstance(exc, MemoryError):
        return EXIT_IO, "out of memory; use a smaller --chunk-size or a machine with more RAM"
    return EXIT_INTERNAL, (f"internal error {type(exc).__name__}: {one_line(exc)}; this is a bug, rerun with "
                           "MEKI_DEBUG=1 for the traceback and report it")


def report(verb: str, exc: BaseException) -> int:
    """Print one line for `exc` (the traceback too when MEKI_DEBUG=1) and return the exit code."""
    code, message = describe(exc)
    if os.environ.get("MEKI_DEBUG"):
        traceback.print_exception(exc)
    print(f"meki {verb}: error: {message}", file=sys.stderr, flush=True)
    return code
