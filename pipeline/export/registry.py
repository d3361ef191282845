"""The backend registry: `meki export --target NAME` looks targets up here.

Each backend module registers one or more targets. An unknown name lists the valid ones; a target
whose Python toolkit is missing names the pip extra; one that needs a vendor SDK names what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from contract.manifest import Backbone
from pipeline.model import MekiModel

BACKEND_MODULES = ("executorch_xnnpack", "tflite_backend", "coreml_backend", "executorch_npu", "qnn_backend",
                   "npu_refusals")


DECODE_PROGRAMS = ("own", "prefill")


class ExportError(RuntimeError):
    """A target that cannot be exported here; the message says what is missing."""


@dataclass(frozen=True)
class ExportSettings:
    quant: str = "none"  # weight quantisation; each target lists what it supports
    max_seq_len: int = 512  # KV cache positions (the paper benchmarks at 10K)
    prefill_len: int = 32  # tokens per prefill call
    socs: tuple[str, ...] = ()  # NPU targets: the SoCs to compile for (empty: the target's default)
    calibration: str | None = None  # static activation quant: a `meki data` folder or a text file
    # targets with prefill and decode methods: "own" lowers decode for T = 1 on its own; "prefill" makes decode
    # a second entry point to the program lowered for prefill (one lowering); None: the target's default
    decode_program: str | None = None

    def __post_init__(self) -> None:
        if self.prefill_len < 2:  # prefill's token count is a dynamic dimension [1, prefill_len]: it needs a range
            raise ValueError(f"prefill_len must be at least 2 (got {self.prefill_len}); decode takes single tokens")
        if self.prefill_len > self.max_seq_len:
            raise ValueError(f"prefill_len {self.prefill_len} is larger than the KV cache (max_seq_len "
                             f"{self.max_seq_len}): a prefill call could not fit")


ExportFn = Callable[[MekiModel, Path, ExportSettings], Backbone | list[Backbone]]  # a list: one per SoC


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    extra: str  # pip extra that installs the toolkit
    modules: tuple[str, ...]  # Python modules the toolkit provides
    quants: tuple[str, ...]
    export: ExportFn
    sdk_check: Callable[[], str | None] = field(default=lambda: None)  # what vendor SDK is missing, if any
    socs: Callable[[], tuple[str, ...]] | None = None  # NPU targets: the SoCs the compiler knows
    decode_program: str | None = None  # default of ExportSettings.decode_program; None: no decode method of its own

    def ensure_available(self, settings: ExportSettings) -> None:
        missing = [m for m in self.modules if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            raise ExportError(f"target {self.name}: toolkit not installed ({', '.join(missing)}); "
                              f"install it with: pip install -e '.[{self.extra}]'")
        if settings.quant not in self.quants:
            raise ExportError(f"target {self.name}: quant {settings.quant!r} not supported "
                              f"(valid: {', '.join(self.quants)})")
        if settings.decode_program is not None and settings.decode_program not in DECODE_PROGRAMS:
            raise ExportError(f"decode program {settings.decode_program!r} unknown "
                              f"(valid: {', '.join(DECODE_PROGRAMS)})")
        if settings.decode_program is not None and self.decode_program is None:
            which = ", ".join(sorted(n for n, t in TARGETS.items() if t.decode_program))
            raise ExportError(f"target {self.name}: --decode-program applies to targets with prefill and decode "
                              f"methods ({which})")
        if settings.socs and self.socs is None:
            raise ExportError(f"target {self.name}: --soc applies to NPU targets only")
        if settings.socs:
            valid = self.socs()
            bad = [s for s in settings.socs if s.upper() not in valid]
            if bad:
                raise ExportError(f"target {self.name}: unknown SoC {', '.join(bad)} (valid: {', '.join(valid)})")
        sdk = self.sdk_check()
        if sdk:
            raise ExportError(f"target {self.name}: {sdk}")


TARGETS: dict[str, Target] = {}


def register_target(name: str, summary: str, extra: str, modules: tuple[str, ...], quants: tuple[str, ...],
                    sdk_check: Callable[[], str | None] | None = None,
                    socs: Callable[[], tuple[str, ...]] | None = None,
                    decode_program: str | None = None) -> Callable[[ExportFn], ExportFn]:
    def wrap(fn: ExportFn) -> ExportFn:
        TARGETS[name] = Target(name, summary, extra, modules, quants, fn, sdk_check or (lambda: None), socs,
                               decode_program)
        return fn
    return wrap


def decode_program(target: str, settings: ExportSettings) -> str:
    """The decode a target's .pte gets: the setting, else the target's default ("own" where it has none)."""
    return settings.decode_program or get_target(target).decode_program or "own"


def load_backends() -> dict[str, Target]:
    for mod in BACKEND_MODULES:
        importlib.import_module(f"pipeline.export.{mod}")
    return TARGETS


def get_target(name: str) -> Target:
    targets = load_backends()
    if name not in targets:
        raise ExportError(f"unknown target {name!r} (valid: {', '.join(sorted(targets))})")
    return targets[name]
