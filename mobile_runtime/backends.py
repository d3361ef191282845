"""Backbone runners over the runtimes that exist on the host: one `step` per prefill/decode call.

A runner takes numpy arrays (tokens [1, T] int64, input_pos [T] int64, rows [1, T, L, m] float32 or
None for dense bundles) and returns the last position's logits [1, V] float32. The KV cache lives
in the program (ExecuTorch) or in the runner (LiteRT, passed in and out).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from contract.manifest import Backbone, BundleError
from mobile_runtime.native_log import filtered_native_stderr


class Runner(Protocol):
    backbone: Backbone

    def step(self, method: str, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray: ...


def check_program_file(path: Path) -> None:
    """Bytes that are no ExecuTorch program can abort the process inside the loader (its error text is not
    UTF-8 for the binding to raise): the flatbuffer's file identifier, ETnn at byte 4, is checked first."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or not re.fullmatch(rb"ET\d\d", head[4:8]):
        raise ValueError(f"{path}: not an ExecuTorch program (no ETnn identifier at byte 4, found {head[4:8]!r}); "
                         "export the bundle again")


class ExecuTorchRunner:
    """A .pte through ExecuTorch's Python runtime (the same C++ runtime as on the phone).

    decode_calling_thread: XNNPACK on one thread (mobile_runtime/threads.py: in this runtime the
    process's one threadpool, so prefill too); `calling_thread` says what it got."""

    def __init__(self, bundle: Path, backbone: Backbone, decode_calling_thread: bool = False) -> None:
        import torch  # executorch's Python API exchanges torch tensors
        from executorch.runtime import Runtime

        from mobile_runtime import threads

        self._torch = torch
        self.backbone = backbone
        if "llama" in backbone.extra.get("kernels", []):  # llama::custom_sdpa / update_cache kernels
            from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
        path = Path(bundle) / backbone.file
        check_program_file(path)
        with filtered_native_stderr():  # XNNPACK's first start prints cpuinfo chatter on x86 hosts
            self.calling_thread = threads.prepare_pool(decode_calling_thread)
            try:
                program = Runtime.get().load_program(str(path))
            except RuntimeError as exc:
                raise ValueError(f"{path}: ExecuTorch cannot load this program ({exc}): it is damaged or was "
                                 "written by another ExecuTorch version; export the bundle again") from None
            self._methods = {step: program.load_method(spec.entry or step) for step, spec in backbone.methods.items()}
        threads.holds_pool(self)

    def step(self, method: str, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        t = self._torch
        args = [t.from_numpy(np.ascontiguousarray(tokens, np.int64)), t.from_numpy(np.ascontiguousarray(input_pos, np.int64))]
        if rows is not None:
            args.append(t.from_numpy(np.ascontiguousarray(rows, np.float32)))
        return self._methods[method].execute(args)[0].numpy()


class LiteRTRunner:
    """A .tflite through LiteRT's interpreter (ai-edge-litert); the KV cache lives here, passed in and out.

    Prefill takes exactly prefill_len tokens: a shorter chunk is padded (token 0, zero rows, positions
    continuing) and `last_index` picks its last real token's logits (Backbone.extra["prefill_last_index"]).
    A chunk whose padded slice would run past the cache goes through decode one token at a time.
    """

    def __init__(self, bundle: Path, backbone: Backbone) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.backbone = backbone
        self._interp = Interpreter(model_path=str(Path(bundle) / backbone.file))
        self._sigs = {step: self._interp.get_signature_runner(spec.entry or step)
                      for step, spec in backbone.methods.items()}
        self._dtypes = {step: {t.name: np.dtype(t.dtype) for t in spec.inputs} for step, spec in backbone.methods.items()}
        self._kv = [t for t in backbone.methods["decode"].inputs if t.name in backbone.extra["kv_cache_tensors"]]
        self.reset()

    def reset(self) -> None:
        self.cache = {t.name: np.zeros(t.shape, np.dtype(t.dtype)) for t in self._kv}

    def step(self, method: str, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        n, b = tokens.shape[1], self.backbone
        if method == "prefill" and n > b.prefill_len:
            raise ValueError(f"prefill chunk of {n} tokens > prefill_len {b.prefill_len}")
        if method == "prefill" and int(input_pos[0]) + b.prefill_len > b.max_seq_len:
            for i in range(n):  # the padded slice would be clamped into earlier positions
                row = None if rows is None else rows[:, i:i + 1]
                logits = self.step("decode", tokens[:, i:i + 1], input_pos[i:i + 1], row)
            return logits
        if method == "prefill":
            tokens, input_pos, rows = self._pad(tokens, input_pos, rows)
        feeds = {"tokens": tokens, "input_pos": input_pos} | ({} if rows is None else {"meki_rows": rows})
        if method == "prefill":
            feeds["last_index"] = np.array([n - 1])
        dtypes = self._dtypes[method]
        out = self._sigs[method](**{k: np.ascontiguousarray(v, dtypes[k]) for k, v in feeds.items()}, **self.cache)
        self.cache = {name: out[name] for name in self.cache}
        return out["logits"]

    def _pad(self, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None):
        # to prefill_len: token 0, positions continuing past the chunk, zero rows (later steps overwrite them)
        pad = self.backbone.prefill_len - tokens.shape[1]
        tokens = np.pad(tokens, ((0, 0), (0, pad)))
        input_pos = np.concatenate([input_pos, input_pos[-1] + 1 + np.arange(pad)])
        return tokens, input_pos, None if rows is None else np.pad(rows, ((0, 0), (0, pad), (0, 0), (0, 0)))


def _qnn_sim(bundle: Path, backbone: Backbone) -> Runner:
    from mobile_runtime.qnn_sim import QnnSimRunner  # onnxruntime-qnn: the HTP simulator

    return QnnSimRunner(bundle, backbone)


RUNNERS: dict[str, Callable[[Path, Backbone], Runner]] = {"executorch-xnnpack": ExecuTorchRunner, "tflite": LiteRTRunner,
                                                          "tflite-qnn": _qnn_sim}


def open_runner(bundle: Path, backbone: Backbone, decode_calling_thread: bool = False) -> Runner:
    """decode_calling_thread: XNNPACK's decode on one thread (ExecuTorch only; the others ignore it)."""
    if backbone.target not in RUNNERS:
        raise BundleError(f"no runner on this host for target {backbone.target!r} "
                          f"(runnable here: {', '.join(sorted(RUNNERS))})")
    if RUNNERS[backbone.target] is ExecuTorchRunner:
        return ExecuTorchRunner(bundle, backbone, decode_calling_thread)
    return RUNNERS[backbone.target](bundle, backbone)
