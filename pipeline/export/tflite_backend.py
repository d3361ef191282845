"""LiteRT targets (recipes over litert.py):

tflite            CPU (the interpreter's XNNPACK delegate); runs here through ai-edge-litert.
tflite-mediatek   the same model compiled ahead of time for a MediaTek NPU (NeuroPilot, MT6989).
(tflite-qnn, Qualcomm HTP, is qnn_backend.py: it compiles npu_graph's split-cache graph instead.)
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from pathlib import Path

from contract.atomic import atomic_write_bytes
from contract.manifest import Backbone
from pipeline.export.child import scratch_dir
from pipeline.export.litert import TFLITE_QUANTS, converter_missing, export_tflite
from pipeline.export.registry import ExportError, ExportSettings, register_target
from pipeline.model import MekiModel


@register_target("tflite", "LiteRT .tflite, CPU (runs here through ai-edge-litert)", "litert-runtime",
                 ("ai_edge_litert",), TFLITE_QUANTS, sdk_check=converter_missing)
def export_cpu(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    return export_tflite(model, out_dir / "model_litert.tflite", settings, "tflite")


# NPU ahead-of-time compilation: the CPU .tflite through ai_edge_litert.aot and the vendor's compiler plugin
NPU = {  # target -> (vendor, SoC, SDK package module, the shared libraries its compiler plugin loads)
    "tflite-mediatek": ("mediatek", "MT6989", "ai_edge_litert_sdk_mediatek",
                        ("libneuron_adapter.so", "libneuron_sys_util.mtk.so")),
}


def _loadable(lib: str, sdk_libs: Path | None) -> bool:
    if sdk_libs is not None and (sdk_libs / lib).is_file():
        return True
    try:
        ctypes.CDLL(lib)
        return True
    except OSError:
        return False


def _sdk_libs(vendor: str, module: str) -> tuple[Path | None, str | None]:
    """The SDK package's library folder, or None and what is wrong with the package."""
    pip_name = module.replace("_", "-")
    if importlib.util.find_spec(module) is None:
        return None, (f"Python package {pip_name} not installed (pip install -e '.[litert-npu]'; it downloads the "
                      f"vendor SDK while it builds, so it needs network)")
    data = Path(importlib.util.find_spec(module).origin).parent / "data"
    if not data.is_dir():
        return None, (f"Python package {pip_name} is installed but holds no SDK ({data} missing: its build-time "
                      f"download failed; reinstall it with network)")
    return (data / "lib" / "x86_64-linux-clang" if vendor == "qualcomm" else data / "v9_0_3" / "host" / "lib"), None


def npu_sdk_missing(target: str) -> str | None:
    """Everything the AOT compile for `target` lacks on this machine, checked before any conversion."""
    vendor, soc, module, libs = NPU[target]
    problems = [p for p in (converter_missing(),) if p]
    sdk_libs, package_problem = _sdk_libs(vendor, module)
    missing = [lib for lib in libs if not _loadable(lib, sdk_libs)]
    if missing:
        where = f"{sdk_libs}, " if sdk_libs else ""
        problems.append(f"{vendor} {soc} NPU compiler SDK missing: {', '.join(missing)} cannot be loaded "
                        f"(looked in {where}LD_LIBRARY_PATH and the system library path)")
    if package_problem:
        problems.append(package_problem)
    return "; ".join(problems) or None


def _aot_failure(message: str) -> str:
    """The compiler plugin's message plus the lines of its error log that say what failed."""
    m = re.search(r"See (\S+) for details", message)
    log_path = Path(m.group(1)) if m else None
    if log_path is None or not log_path.is_file():
        return message
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
             if re.search(r"cannot open|not found|Failed to load", ln)]
    return f"{message} [{' | '.join(dict.fromkeys(lines))}]"


def aot_compile(src: Path, out: Path, target: str) -> None:
    from ai_edge_litert.aot import aot_compile as aot
    from ai_edge_litert.aot.vendors.mediatek import target as mediatek
    from ai_edge_litert.aot.vendors.qualcomm import target as qualcomm

    vendor, soc, _, _ = NPU[target]
    lib = qualcomm if vendor == "qualcomm" else mediatek
    with scratch_dir(out.parent, "aot") as work:
        result = aot.aot_compile(str(src), output_dir=str(work), target=lib.Target(soc_model=lib.SocModel[soc]),
                                 keep_going=True)
        if result.failed_backends or not result.models_with_backend:
            why = "; ".join(_aot_failure(msg) for _, msg in result.failed_backends) or "no model came back"
            raise ExportError(f"{target}: AOT compile for {soc} failed: {why}")
        _, compiled = result.models_with_backend[0]
        atomic_write_bytes(out, compiled.model_bytes)


def export_npu(model: MekiModel, out_dir: Path, settings: ExportSettings, target: str) -> Backbone:
    vendor, soc, _, _ = NPU[target]
    with scratch_dir(out_dir, "npu") as work:
        cpu = export_tflite(model, work / "model_litert.tflite", settings, target)
        out = out_dir / f"model_litert_{vendor}_{soc.lower()}.tflite"
        aot_compile(work / cpu.file, out, target)
    cpu.file = out.name
    cpu.extra |= {"soc": soc, "vendor": vendor}
    return cpu


@register_target("tflite-mediatek", "LiteRT, AOT-compiled for a MediaTek NPU (NeuroPilot, MT6989)", "litert-runtime",
                 ("ai_edge_litert",), TFLITE_QUANTS, sdk_check=lambda: npu_sdk_missing("tflite-mediatek"))
def export_mediatek(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    return export_npu(model, out_dir, settings, "tflite-mediatek")
