"""LiteRT targets: one .tflite with `prefill` and `decode` signatures; the KV cache is passed in and out.

tflite            CPU (the interpreter's XNNPACK delegate); runs here through ai-edge-litert.
tflite-mediatek   the same model compiled ahead of time for a MediaTek NPU (NeuroPilot, MT6989).
(tflite-qnn, Qualcomm HTP, lives in qnn_backend.py: it compiles npu_graph's split-cache graph instead.)

Signatures (names are the tensors' names in the .tflite):
  prefill: tokens [1, P] i32, input_pos [P] i32, meki_rows [1, P, L, m] f32 (MeKi only), last_index [1] i32,
           kv_k_i / kv_v_i [1, Hkv, S, hd] f32 -> logits [1, V] (of position last_index), kv_* updated.
  decode:  the same with T = 1 and no last_index.
P is fixed: a shorter chunk is padded (token 0, zero rows, positions continuing) and last_index names
its last real token. The cache is written with DYNAMIC_UPDATE_SLICE at input_pos[0] (positions are
contiguous), which clamps a slice that would run past S: so input_pos[0] + P <= S.

The torch -> tflite conversion needs litert-torch, whose xdsl pins typing_extensions<4.13 (the main
venv's pydantic and cattrs need newer): when it is not importable here, the conversion runs in
.venv-litert (`make setup`) as `python -m pipeline.export.tflite_backend`; everything else runs here.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobile_runtime.manifest import Backbone, MethodSpec, TensorSpec
from pipeline.config import ModelConfig
from pipeline.export.registry import ExportError, ExportSettings, register_target
from pipeline.model import MekiModel

log = logging.getLogger(__name__)
TFLITE_QUANTS = ("none", "int8", "int8wo")  # int8: dynamic-range (int8 weights and activations); int8wo: weights only
LITERT_PYTHON_ENV = "MEKI_LITERT_PYTHON"  # a Python that has litert-torch (default: .venv-litert beside the code)
REPO_ROOT = Path(__file__).resolve().parents[2]


class _IOCache(nn.Module):
    """Stands in for KVCache: writes k, v into caches that arrive as inputs and keeps the results as outputs."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: [1, Hkv, T, hd] written at input_pos[0] of [1, Hkv, S, hd]; lowers to DYNAMIC_UPDATE_SLICE
        # (index_copy would lower to STABLEHLO_SCATTER)
        from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

        z = torch.zeros([], dtype=torch.int32)
        at = [z, z, input_pos.to(torch.int32)[0].reshape([]), z]
        self.k, self.v = dynamic_update_slice(self.k, k, at), dynamic_update_slice(self.v, v, at)
        return self.k, self.v


class _NormAt(nn.Module):
    """The final norm at one position ([1] int32 index) only: prefill's logits for its last real token."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.index: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x if self.index is None else x.index_select(1, self.index))


class LiteRTStep(nn.Module):
    """Keyword inputs and a dict output, so the signatures' tensors carry these names (see the module doc)."""

    def __init__(self, model: MekiModel, max_seq_len: int) -> None:
        super().__init__()
        model.setup_cache(max_seq_len)  # rope tables and cache_len; the cache buffers are replaced next
        for layer in model.layers:
            layer.attn.cache = _IOCache()
        model.norm = _NormAt(model.norm)
        self.model = model

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, meki_rows: torch.Tensor | None = None,
                last_index: torch.Tensor | None = None, **kv: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        for i, layer in enumerate(m.layers):
            layer.attn.cache.k, layer.attn.cache.v = kv[f"kv_k_{i}"], kv[f"kv_v_{i}"]
        m.norm.index = last_index
        logits = m(tokens, input_pos, meki_rows, last_only=last_index is None)[:, 0]  # [1, V]
        out = {"logits": logits}
        for i, layer in enumerate(m.layers):
            out[f"kv_k_{i}"], out[f"kv_v_{i}"] = layer.attn.cache.k, layer.attn.cache.v
        return out


def kv_specs(cfg: ModelConfig, max_seq_len: int) -> list[TensorSpec]:
    shape = [1, cfg.num_kv_heads, max_seq_len, cfg.head_dim]
    return [TensorSpec(f"kv_{kind}_{i}", shape, "float32") for i in range(cfg.num_layers) for kind in ("k", "v")]


def signature_specs(cfg: ModelConfig, settings: ExportSettings) -> dict[str, MethodSpec]:
    """The manifest's view of both signatures (inputs in feeding order, outputs by name)."""
    kv = kv_specs(cfg, settings.max_seq_len)
    specs = {}
    for step, seq in (("prefill", settings.prefill_len), ("decode", 1)):
        inputs = [TensorSpec("tokens", [1, seq], "int32"), TensorSpec("input_pos", [seq], "int32")]
        if cfg.has_meki:
            inputs.append(TensorSpec("meki_rows", [1, seq, cfg.num_layers, cfg.d_mem], "float32"))
        if step == "prefill":
            inputs.append(TensorSpec("last_index", [1], "int32"))
        specs[step] = MethodSpec(inputs + kv, [TensorSpec("logits", [1, cfg.vocab_size], "float32")] + kv, step)
    return specs


def sample_kwargs(cfg: ModelConfig, settings: ExportSettings, step: str) -> dict[str, torch.Tensor]:
    spec = signature_specs(cfg, settings)[step]
    feeds = {t.name: torch.zeros(t.shape, dtype=getattr(torch, t.dtype)) for t in spec.inputs}
    feeds["input_pos"] = torch.arange(feeds["input_pos"].shape[0], dtype=torch.int32)
    if "last_index" in feeds:
        feeds["last_index"] = torch.tensor([settings.prefill_len - 1], dtype=torch.int32)
    return feeds


def quant_config(quant: str) -> Any:
    from litert_torch.generative.quantize import quant_recipes

    recipes = {"none": lambda: None, "int8": quant_recipes.full_dynamic_recipe,
               "int8wo": quant_recipes.full_weight_only_recipe}
    if quant not in recipes:
        raise ValueError(f"unknown quant {quant!r} (valid: {', '.join(TFLITE_QUANTS)})")
    return recipes[quant]()


def convert_in_process(model: MekiModel, path: Path, settings: ExportSettings, graph: str = "cpu") -> None:
    """litert-torch: both signatures over one wrapped copy of the model -> one .tflite at `path`.

    graph: cpu (LiteRTStep, the cache written in the graph) | npu (npu_graph.NpuStep, new k/v out)."""
    import litert_torch

    cfg = model.cfg
    if graph == "npu":
        from pipeline.export.npu_graph import NpuStep, npu_sample_kwargs

        step = NpuStep(copy.deepcopy(model).eval(), settings.max_seq_len).eval()
        feeds = {s: npu_sample_kwargs(cfg, settings.max_seq_len, settings.prefill_len, s) for s in ("prefill", "decode")}
    else:
        step = LiteRTStep(copy.deepcopy(model).eval(), settings.max_seq_len).eval()
        feeds = {s: sample_kwargs(cfg, settings, s) for s in ("prefill", "decode")}
    with torch.no_grad():
        edge = (litert_torch.signature("prefill", step, sample_kwargs=feeds["prefill"])
                .signature("decode", step, sample_kwargs=feeds["decode"])
                .convert(quant_config=quant_config(settings.quant)))
    tmp = path.with_name(f".{path.name}.partial")
    edge.export(str(tmp))
    os.replace(tmp, path)


def litert_python() -> str | None:
    """The Python that converts: None when litert-torch imports here, else .venv-litert's (or $MEKI_LITERT_PYTHON)."""
    if importlib.util.find_spec("litert_torch") is not None:
        return None
    return os.environ.get(LITERT_PYTHON_ENV) or str(REPO_ROOT / ".venv-litert" / "bin" / "python")


def converter_missing() -> str | None:
    py = litert_python()
    if py is None or Path(py).is_file():
        return None
    return (f"LiteRT converter not installed (litert_torch not importable here, and no {py}); it needs "
            f"typing_extensions<4.13, so it lives in its own venv: run `make setup` (creates .venv-litert with "
            f"pip install -e '.[litert]'), or point ${LITERT_PYTHON_ENV} at a Python that has it")


def convert(model: MekiModel, path: Path, settings: ExportSettings, graph: str = "cpu") -> None:
    """Convert here if litert-torch imports, else in the LiteRT venv (the model travels as a torch file)."""
    py = litert_python()
    if py is None:
        convert_in_process(model, path, settings, graph)
        return
    with tempfile.TemporaryDirectory(prefix="meki-litert-") as work:
        src = Path(work) / "model.pt"
        torch.save({"config": model.cfg.to_dict(), "state": model.state_dict()}, src)
        cmd = [py, "-m", "pipeline.export.tflite_backend", "--model", str(src), "--out", str(path),
               "--quant", settings.quant, "--max-seq-len", str(settings.max_seq_len),
               "--prefill-len", str(settings.prefill_len), "--graph", graph]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
        except subprocess.CalledProcessError as exc:
            tail = "\n".join((exc.stdout + exc.stderr).strip().splitlines()[-25:])
            raise ExportError(f"tflite conversion failed in {py} (exit {exc.returncode}):\n{tail}") from exc


def tflite_facts(path: Path, cfg: ModelConfig) -> dict[str, Any]:
    """What the graph holds: signature input names, table-shaped tensors (must be none) and op counts."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    v, L, m = cfg.vocab_size, cfg.num_layers, cfg.d_mem
    bad = {(v, m), (v, L, m), (L, v, m)} if cfg.has_meki else set()
    tables = [f"{t['name']}{tuple(int(s) for s in t['shape'])}" for t in interp.get_tensor_details()
              if tuple(int(s) for s in t["shape"]) in bad]
    inputs = {name: list(sig["inputs"]) for name, sig in interp.get_signature_list().items()}
    fb = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [names[max(fb.OperatorCodes(i).BuiltinCode(), fb.OperatorCodes(i).DeprecatedBuiltinCode())]
             for i in range(fb.OperatorCodesLength())]
    ops: Counter[str] = Counter()
    for g in range(fb.SubgraphsLength()):
        sub = fb.Subgraphs(g)
        ops.update(codes[sub.Operators(i).OpcodeIndex()] for i in range(sub.OperatorsLength()))
    return {"inputs": inputs, "tables": tables, "ops": dict(ops)}


def export_tflite(model: MekiModel, path: Path, settings: ExportSettings, target: str) -> Backbone:
    """Convert, check the graph (no MeKi table, the rows input only in MeKi exports) and describe it."""
    t0 = time.perf_counter()
    convert(model, path, settings)
    cfg = model.cfg
    facts = tflite_facts(path, cfg)
    if facts["tables"]:
        raise ExportError(f"{target}: the graph holds MeKi-table-shaped tensors: {', '.join(facts['tables'])}")
    for sig, names in facts["inputs"].items():
        if ("meki_rows" in names) != cfg.has_meki:
            raise ExportError(f"{target}: signature {sig} inputs {names} (meki_rows belongs in MeKi exports only)")
    log.info("%s: ops %s", path.name, facts["ops"])
    return Backbone(target=target, file=path.name, quant=settings.quant, max_seq_len=settings.max_seq_len,
                    prefill_len=settings.prefill_len, kv_cache="io", methods=signature_specs(cfg, settings),
                    delegated={f"ops.{k}": n for k, n in sorted(facts["ops"].items())},
                    extra={"prefill_padded": True, "prefill_last_index": "last_index",
                           "kv_cache_tensors": [t.name for t in kv_specs(cfg, settings.max_seq_len)],
                           "kv_write": "DYNAMIC_UPDATE_SLICE at input_pos[0]; input_pos[0] + prefill_len <= max_seq_len",
                           "export_s": round(time.perf_counter() - t0, 1)})


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
    with tempfile.TemporaryDirectory(prefix="meki-aot-") as work:
        result = aot.aot_compile(str(src), output_dir=work, target=lib.Target(soc_model=lib.SocModel[soc]),
                                 keep_going=True)
        if result.failed_backends or not result.models_with_backend:
            why = "; ".join(_aot_failure(msg) for _, msg in result.failed_backends) or "no model came back"
            raise ExportError(f"{target}: AOT compile for {soc} failed: {why}")
        _, compiled = result.models_with_backend[0]
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_bytes(compiled.model_bytes)
        os.replace(tmp, out)


def export_npu(model: MekiModel, out_dir: Path, settings: ExportSettings, target: str) -> Backbone:
    vendor, soc, _, _ = NPU[target]
    with tempfile.TemporaryDirectory(prefix="meki-npu-") as work:
        cpu = export_tflite(model, Path(work) / "model_litert.tflite", settings, target)
        out = out_dir / f"model_litert_{vendor}_{soc.lower()}.tflite"
        aot_compile(Path(work) / cpu.file, out, target)
    cpu.file = out.name
    cpu.extra |= {"soc": soc, "vendor": vendor}
    return cpu


@register_target("tflite-mediatek", "LiteRT, AOT-compiled for a MediaTek NPU (NeuroPilot, MT6989)", "litert-runtime",
                 ("ai_edge_litert",), TFLITE_QUANTS, sdk_check=lambda: npu_sdk_missing("tflite-mediatek"))
def export_mediatek(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    return export_npu(model, out_dir, settings, "tflite-mediatek")


def main(argv: list[str] | None = None) -> None:
    """The conversion half, run inside .venv-litert: a torch file (config + state) -> .tflite."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.export.tflite_backend")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quant", default="none", choices=TFLITE_QUANTS)
    ap.add_argument("--max-seq-len", type=int, required=True)
    ap.add_argument("--prefill-len", type=int, required=True)
    ap.add_argument("--graph", default="cpu", choices=("cpu", "npu"))
    args = ap.parse_args(argv)
    saved = torch.load(args.model, weights_only=True)
    model = MekiModel(ModelConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["state"], strict=True)
    convert_in_process(model.eval(), args.out, ExportSettings(args.quant, args.max_seq_len, args.prefill_len),
                       args.graph)


if __name__ == "__main__":
    sys.exit(main())
