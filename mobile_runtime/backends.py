"""Backbone runners over the runtimes that exist on the host: one `step` per prefill/decode call.

A runner takes numpy arrays (tokens [1, T] int64, input_pos [T] int64, rows [1, T, L, m] float32 or
None for dense bundles) and returns the last position's logits [1, V] float32. The KV cache lives
in the program (ExecuTorch) or in the runner (LiteRT, passed in and out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from mobile_runtime.manifest import Backbone, BundleError


class Runner(Protocol):
    backbone: Backbone

    def step(self, method: str, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray: ...


class ExecuTorchRunner:
    """A .pte through ExecuTorch's Python runtime (the same C++ runtime as on the phone)."""

    def __init__(self, bundle: Path, backbone: Backbone) -> None:
        import torch  # executorch's Python API exchanges torch tensors
        from executorch.runtime import Runtime

        self._torch = torch
        self.backbone = backbone
        program = Runtime.get().load_program(str(Path(bundle) / backbone.file))
        self._methods = {step: program.load_method(spec.entry or step) for step, spec in backbone.methods.items()}

    def step(self, method: str, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        t = self._torch
        args = [t.from_numpy(np.ascontiguousarray(tokens, np.int64)), t.from_numpy(np.ascontiguousarray(input_pos, np.int64))]
        if rows is not None:
            args.append(t.from_numpy(np.ascontiguousarray(rows, np.float32)))
        return self._methods[method].execute(args)[0].numpy()


RUNNERS: dict[str, Callable[[Path, Backbone], Runner]] = {"executorch-xnnpack": ExecuTorchRunner}


def open_runner(bundle: Path, backbone: Backbone) -> Runner:
    if backbone.target not in RUNNERS:
        raise BundleError(f"no runner on this host for target {backbone.target!r} "
                          f"(runnable here: {', '.join(sorted(RUNNERS))})")
    return RUNNERS[backbone.target](bundle, backbone)
