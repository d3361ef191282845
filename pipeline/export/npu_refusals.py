"""LiteRT NPU targets that stay refused offline: Samsung (Exynos) and Google Tensor. Each names what is missing.

Probed 2026-12-01 with ai-edge-litert 2.3.0 (re-check whenever that pin changes; see NPU.md):
- Samsung: the wheel's compiler plugin does not even load (an undefined flatbuffers symbol), and
  no PyPI package ships Samsung's compiler (ai-edge-litert-sdk-samsung-nightly downloads it at build time).
- Google Tensor: the plugin loads, then needs the Tensor TPU compiler library
  (liblitert_plugin_compiler.so), which only ai-edge-litert-sdk-google-tensor's build-time download
  provides (that build fails offline).
The checks below load the real libraries, so a newer pin that fixes them stops the refusal.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

from contract.manifest import Backbone
from pipeline.export.registry import ExportError, ExportSettings, register_target
from pipeline.model import MekiModel

PLUGINS = {"samsung": "libLiteRtCompilerPlugin_Samsung.so", "google_tensor": "libLiteRtCompilerPlugin_google_tensor.so"}
TENSOR_COMPILER = "liblitert_plugin_compiler.so"


def _load_error(lib: str) -> str | None:
    try:
        ctypes.CDLL(lib)
        return None
    except OSError as exc:
        return ": ".join(str(exc).split(": ")[-2:])  # e.g. "undefined symbol: _ZN11flatbuffers..."


def _plugin(vendor: str) -> Path | None:
    spec = importlib.util.find_spec("ai_edge_litert")
    return Path(spec.origin).parent / "vendors" / vendor / "compiler" / PLUGINS[vendor] if spec and spec.origin else None


def samsung_missing() -> str:
    plugin = _plugin("samsung")
    if plugin is None or not plugin.is_file():
        return "ai-edge-litert's Samsung compiler plugin is not installed (pip install -e '.[litert-runtime]')"
    why = _load_error(str(plugin))
    loads = f"its compiler plugin does not load ({why})" if why else "the plugin loads"
    return (f"Samsung Exynos NPU: {loads}; Samsung's NPU compiler libraries are in no PyPI package "
            "(ai-edge-litert-sdk-samsung-nightly downloads them while it builds: needs network)")


def google_tensor_missing() -> str:
    plugin = _plugin("google_tensor")
    if plugin is None or not plugin.is_file():
        return "ai-edge-litert's Google Tensor compiler plugin is not installed (pip install -e '.[litert-runtime]')"
    why = _load_error(TENSOR_COMPILER)
    if why is None:
        return "Google Tensor: the compiler library loads, but this path was never run or verified here"
    return (f"Google Tensor TPU: the compiler library {TENSOR_COMPILER} cannot be loaded ({why}); only "
            "ai-edge-litert-sdk-google-tensor's build-time download provides it, which fails offline")


def _refuse(name: str, why: str) -> ExportError:
    return ExportError(f"target {name}: {why}")


@register_target("tflite-samsung", "LiteRT AOT for Samsung Exynos NPU: refused offline (see the message)",
                 "litert-runtime", ("ai_edge_litert",), ("none",), sdk_check=samsung_missing)
def export_samsung(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    raise _refuse("tflite-samsung", samsung_missing())


@register_target("tflite-google-tensor", "LiteRT AOT for Google Tensor TPU: refused offline (see the message)",
                 "litert-runtime", ("ai_edge_litert",), ("none",), sdk_check=google_tensor_missing)
def export_google_tensor(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    raise _refuse("tflite-google-tensor", google_tensor_missing())
