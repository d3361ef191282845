"""ExecuTorch NPU/GPU partitioner targets: Core ML (ANE), Vulkan (GPU), Qualcomm QNN (HTP), MediaTek.

Core ML and Vulkan lower on this host. QNN and MediaTek need vendor SDKs that are not on PyPI: their
sdk_check names exactly what is missing before any work starts (ExecuTorch's QNN backend would
otherwise try to download the SDK and libc++ at lowering time).

Core ML takes the KV cache over as Core ML state, and each method's Core ML blob holds its own
state: two methods would not share the cache. So this target has ONE method, `forward`, with T in
[1, prefill_len], and both manifest steps name it. The others keep the cache as ExecuTorch mutable
buffers (the scatter stays on the CPU), shared by `prefill` and `decode` as in executorch-xnnpack.
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from contract.manifest import Backbone
from pipeline.export.common import (dynamic_seq, example_inputs, lower_shared_cache, lower_to_pte, make_step,
                                    pte_backbone, step_methods, with_slice_cache)
from pipeline.export.registry import ExportError, ExportSettings, register_target
from pipeline.model import MekiModel

log = logging.getLogger(__name__)
QNN_SDK_VERSION = "2.37.0.250724"  # the QAIRT release ExecuTorch 1.5.1's QNN backend is built against
QNN_LIBCXX = ("libc++.so.1.0", "libc++abi.so.1.0", "libunwind.so.1")  # LLVM 14 runtime the QNN libs link
# Checked 2026-12-01 (issue 11): PyPI's onnxruntime-qnn 2.3.0-2.7.0 carry QAIRT 2.47-2.51; laid out as
# QNN_SDK_ROOT, ExecuTorch 1.5.1 (the newest release; older ones expect older QAIRT) fails in libQnnHtp.so.
QNN_SKEW = ("no PyPI wheel carries QAIRT 2.37: onnxruntime-qnn 2.3.0-2.7.0 carry 2.47-2.51, and with those "
            "libraries ExecuTorch 1.5.1's lowering fails in libQnnHtp.so (`Failed to set scatter gather parameters: "
            "unknown custom config socModel 0`, device creation error 14001); target tflite-qnn compiles for the "
            "HTP offline instead")
_QAIRT = re.compile(rb"v(2\.\d+\.\d+\.\d+)")
MEDIATEK_MODULES = ("mtk_converter", "mtk_neuron")  # NeuroPilot Express SDK wheels (not on PyPI)
QNN_SOC = "SM8650"  # Snapdragon 8 Gen 3 (HTP v75)
MEDIATEK_PLATFORM = b"mt6989"  # Dimensity 9300


def _ld_dirs() -> list[Path]:
    return [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]


def qnn_sdk_missing() -> str | None:
    """What of the Qualcomm QNN SDK is missing (env vars, libraries), or None."""
    root = os.environ.get("QNN_SDK_ROOT")
    lib_dir = Path(root) / "lib" / "x86_64-linux-clang" if root else None
    missing = []
    if not root:
        missing.append("QNN_SDK_ROOT is not set")
    elif not (lib_dir / "libQnnHtp.so").is_file():
        missing.append(f"{lib_dir}/libQnnHtp.so does not exist")
    if lib_dir is None or lib_dir not in _ld_dirs():
        missing.append("LD_LIBRARY_PATH does not contain $QNN_SDK_ROOT/lib/x86_64-linux-clang")
    absent = [lib for lib in QNN_LIBCXX if not any((d / lib).exists() for d in _ld_dirs())]
    if absent:
        missing.append(f"LLVM 14 libc++ not on LD_LIBRARY_PATH ({', '.join(absent)})")
    found = _qairt_version(lib_dir / "libQnnHtp.so") if lib_dir is not None else None
    if found and not QNN_SDK_VERSION.startswith(found.rsplit(".", 1)[0]):
        missing.append(f"{lib_dir}/libQnnHtp.so is QAIRT {found}, not {QNN_SDK_VERSION}")
    if not missing:
        return None
    return (f"needs the Qualcomm QNN SDK (QAIRT {QNN_SDK_VERSION}, Qualcomm Software Center): "
            + "; ".join(missing) + ". Set QNN_SDK_ROOT=<sdk> and "
            "LD_LIBRARY_PATH=$QNN_SDK_ROOT/lib/x86_64-linux-clang:<dir with LLVM 14 libc++>:$LD_LIBRARY_PATH. "
            f"Offline, {QNN_SKEW}")


def _qairt_version(lib: Path) -> str | None:
    """The QAIRT build a libQnnHtp.so names (e.g. 2.51.0.260929181845), or None."""
    if not lib.is_file() or lib.stat().st_size == 0:
        return None
    with open(lib, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        m = _QAIRT.search(data)
        return bytes(m.group(1)).decode() if m else None


def mediatek_sdk_missing() -> str | None:
    absent = [m for m in MEDIATEK_MODULES if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (f"needs MediaTek's NeuroPilot Express SDK Python wheels, not on PyPI: {', '.join(absent)} "
            "not importable (install the mtk_converter and mtk_neuron wheels for cp311 from MediaTek's "
            "NeuroPilot portal)")


def lower_single_method(model: MekiModel, out: Path, settings: ExportSettings, partitioners: list[Any],
                        target: str) -> Backbone:
    """One method `forward` (T in [1, prefill_len]) over a slice-written cache the delegate owns."""
    from torch.export import export

    t0 = time.perf_counter()
    cfg = model.cfg
    step = make_step(with_slice_cache(model, settings.max_seq_len))
    with torch.no_grad():
        programs = {"forward": export(step, example_inputs(cfg, settings.prefill_len),
                                      dynamic_shapes=dynamic_seq(cfg, settings.prefill_len), strict=False)}
    delegated = lower_to_pte(programs, cfg, out, partitioners, target, shared_cache=False)
    return pte_backbone(target, out, settings, step_methods(cfg, settings, "forward", "forward"), delegated, t0,
                        single_method="the delegate holds the KV cache; one method shares it")


@register_target("executorch-coreml", "ExecuTorch, Core ML delegate (ANE, fp16, iOS 18); spec-checked here",
                 "executorch", ("executorch", "coremltools"), ("none",))
def export_et_coreml(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(minimum_deployment_target=ct.target.iOS18,
                                                 compute_precision=ct.precision.FLOAT16,
                                                 compute_unit=ct.ComputeUnit.CPU_AND_NE)
    partitioner = CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=True)
    return lower_single_method(model, out_dir / "model_coreml.pte", settings, [partitioner], "executorch-coreml")


@register_target("executorch-vulkan", "ExecuTorch, Vulkan GPU delegate (KV cache write stays on the CPU)",
                 "executorch", ("executorch",), ("none",), decode_program="own")
def export_et_vulkan(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

    return lower_shared_cache(model, out_dir / "model_vulkan.pte", settings, [VulkanPartitioner()],
                              "executorch-vulkan")


@register_target("executorch-qnn", f"ExecuTorch, Qualcomm QNN HTP delegate ({QNN_SOC}, fp16); needs the QNN SDK",
                 "executorch", ("executorch",), ("none",), sdk_check=qnn_sdk_missing,
                 decode_program="own")
def export_et_qnn(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    # not exercised here (no SDK): written to ExecuTorch 1.5.1's QNN API
    if (missing := qnn_sdk_missing()) is not None:
        raise ExportError(f"target executorch-qnn: {missing}")
    from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
    from executorch.backends.qualcomm.utils.utils import (generate_htp_compiler_spec,
                                                          generate_qnn_executorch_compiler_spec)

    specs = generate_qnn_executorch_compiler_spec(soc_model=getattr(QcomChipset, QNN_SOC),
                                                  backend_options=generate_htp_compiler_spec(use_fp16=True))
    return lower_shared_cache(model, out_dir / "model_qnn.pte", settings, [QnnPartitioner(specs)], "executorch-qnn")


@register_target("executorch-mediatek", "ExecuTorch, MediaTek NeuroPilot APU delegate; needs the NeuroPilot SDK",
                 "executorch", ("executorch",), ("none",), sdk_check=mediatek_sdk_missing,
                 decode_program="own")
def export_et_mediatek(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    # not exercised here (no SDK): written to ExecuTorch 1.5.1's NeuropilotPartitioner API
    if (missing := mediatek_sdk_missing()) is not None:
        raise ExportError(f"target executorch-mediatek: {missing}")
    from executorch.backends.mediatek.partitioner import NeuropilotPartitioner
    from executorch.exir.backend.compile_spec_schema import CompileSpec

    partitioner = NeuropilotPartitioner([CompileSpec("platform-config", MEDIATEK_PLATFORM)])
    return lower_shared_cache(model, out_dir / "model_mediatek.pte", settings, [partitioner], "executorch-mediatek")
