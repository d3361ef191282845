"""Where XNNPACK runs decode steps: the native runner's rule (meki::DecodeThreads), for the Python runtime.

A decode step of a small model is hundreds of tiny XNNPACK ops, and handing each to the threadpool's
threads costs more than the op saves (docs/speed.md, thirteenth session: the demo pair decodes faster
on one thread, and MeKi's ~10 small ops per layer pay the dispatch most). "auto" keeps decode on the
calling thread when the widest op of a layer, the FFN's [dim x ffn_dim] projection, has fewer than
POOLED_DECODE_MACS multiply-adds; larger models use the pool (Qwen3-0.6B decodes ~1.5x faster on two).

The native runner loads only its decode method without the pool. ExecuTorch's Python runtime has one
process-wide threadpool, which XNNPACK takes when a program's methods load and which
`_unsafe_reset_threadpool` replaces (freeing the old one), so here the choice is made before a program
loads, applies to prefill too, and is left as it is while a loaded program still holds the pool.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

DECODE_THREADS = ("auto", "pool", "calling")
POOLED_DECODE_MACS = 1 << 20  # as kPooledDecodeMacs in mobile_runtime/native/generator.h
_holders: weakref.WeakSet = weakref.WeakSet()  # loaded programs: their XNNPACK runtimes hold the current pool
_default_threads: int | None = None


def check_setting(setting: str) -> str:
    if setting not in DECODE_THREADS:
        raise ValueError(f"decode_threads must be one of {', '.join(DECODE_THREADS)}, got {setting!r}")
    return setting


def decode_on_calling_thread(setting: str, config: Mapping[str, Any]) -> bool:
    """The rule: `setting` is auto | pool | calling; auto decides by the config's widths (unknown: pool)."""
    if check_setting(setting) != "auto":
        return setting == "calling"
    dim, ffn = config.get("dim"), config.get("ffn_dim")
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (dim, ffn))
    return ok and dim * ffn < POOLED_DECODE_MACS


def _pool():
    from executorch.extension.pybindings import portable_lib

    return portable_lib


def prepare_pool(calling: bool) -> bool:
    """Before loading a program: the process's threadpool to one thread (calling) or to ExecuTorch's own
    size (pool). Returns whether decode will run on one thread (a loaded program's pool is kept as it is)."""
    global _default_threads
    lib = _pool()
    have = lib._threadpool_get_thread_count()
    if _default_threads is None:  # before any reset of ours: ExecuTorch's choice (cpuinfo's processor count)
        _default_threads = have
    want = 1 if calling else _default_threads
    if have != want:
        if _holders:
            log.warning("XNNPACK threadpool stays at %d thread(s): a program loaded in this process holds it", have)
        else:
            lib._unsafe_reset_threadpool(want)
            have = want
    return have == 1


def holds_pool(program_owner: object) -> None:
    """Register an object whose loaded program's XNNPACK runtimes use the current pool (while it lives)."""
    _holders.add(program_owner)
