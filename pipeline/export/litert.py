"""LiteRT conversion shared by the LiteRT targets: one .tflite with `prefill` and `decode` signatures;
the KV cache is passed in and out. The recipes are tflite_backend.py (CPU, MediaTek AOT) and
qnn_backend.py (Qualcomm HTP, which converts npu_graph's split-cache graph through `graph="npu"`).

Signatures (names are the tensors' names in the .tflite):
  prefill: tokens [1, P] i32, input_pos [P] i32, meki_rows [1, P, L, m] f32 (MeKi only), last_index [1] i32,
           kv_k_i / kv_v_i [1, Hkv, S, hd] f32 -> logits [1, V] (of position last_index), kv_* updated.
  decode:  the same with T = 1 and no last_index.
P is fixed: a shorter chunk is padded (token 0, zero rows, positions continuing) and last_index names
its last real token. The cache is written with DYNAMIC_UPDATE_SLICE at input_pos[0] (positions are
contiguous), which clamps a slice that would run past S: so input_pos[0] + P <= S.

The torch -> tflite conversion needs litert-torch, whose xdsl pins typing_extensions<4.13 (the main
venv's pydantic and cattrs need newer): when it is not importable here, the conversion runs in
.venv-litert (`make setup`) as `python -m pipeline.export.litert`; everything else runs here.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import logging
import math
import mmap
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.atomic import commit_file, temp_sibling
from contract.manifest import Backbone, MethodSpec, TensorSpec
from pipeline.config import ModelConfig
from pipeline.export.child import check_free_space, run_child, scratch_dir
from pipeline.export.common import NormAt, method_spec, refuse_tables, share_weights_copy, table_shapes
from pipeline.export.registry import ExportError, ExportSettings
from pipeline.model import MekiModel
from pipeline.profile import stage

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


class LiteRTStep(nn.Module):
    """Keyword inputs and a dict output, so the signatures' tensors carry these names (see the module doc)."""

    def __init__(self, model: MekiModel, max_seq_len: int) -> None:
        super().__init__()
        model.setup_cache(max_seq_len)  # rope tables and cache_len; the cache buffers are replaced next
        for layer in model.layers:
            layer.attn.cache = _IOCache()
        model.norm = NormAt(model.norm)
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
        inputs = list(method_spec(cfg, seq, step, "int32").inputs)
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


def clamp_without_writing(tensor: torch.Tensor) -> torch.Tensor:
    """litert-torch's clamp of a constant to its dtype's finite range, without writing to the tensor: a
    min/max pass (no full-size temporaries) and, only where an inf or NaN is found, a clamped copy."""
    if not torch.is_floating_point(tensor) or tensor.numel() == 0:
        return tensor
    lo, hi = torch.aminmax(tensor)
    if math.isfinite(lo) and math.isfinite(hi):
        return tensor
    info = torch.finfo(tensor.dtype)
    return tensor.clamp(min=info.min, max=info.max)


@contextlib.contextmanager
def weights_left_unwritten() -> Iterator[None]:
    """While converting: litert-torch (0.10.0) clamps every float constant to the finite range in place
    as it inlines it (backend.inline_consts._clamp_inf_values), a write to every page of the weights. In
    the converter child the weights are mapped from the handoff file (a private mapping), so every page
    written becomes the process's own copy: the fp32 weights twice, the copy not reclaimable (Qwen3-0.6B:
    +2.3 GB of anonymous memory at "Create MLIR Module"). clamp_without_writing gives the same values."""
    from litert_torch.backend import inline_consts

    original = getattr(inline_consts, "_clamp_inf_values", None)
    if original is None:  # a litert-torch without it: nothing to swap
        yield
        return
    inline_consts._clamp_inf_values = clamp_without_writing
    try:
        yield
    finally:
        inline_consts._clamp_inf_values = original


def convert_float(model: MekiModel, tmp: Path, settings: ExportSettings, graph: str = "cpu") -> Any | None:
    """litert-torch: both signatures over one wrapped copy of the model -> a .tflite at `tmp`. Returns
    the quantisation recipe still to apply to that file (quantise_file), or None when it is done.

    graph: cpu (LiteRTStep, the cache written in the graph) | npu (npu_graph.NpuStep, new k/v out)."""
    import litert_torch

    cfg = model.cfg
    if graph == "npu":
        from pipeline.export.npu_graph import NpuStep, npu_sample_kwargs

        step = NpuStep(share_weights_copy(model), settings.max_seq_len).eval()  # NpuStep rewraps modules only
        feeds = {s: npu_sample_kwargs(cfg, settings.max_seq_len, settings.prefill_len, s) for s in ("prefill", "decode")}
    else:
        step = LiteRTStep(share_weights_copy(model), settings.max_seq_len).eval()
        feeds = {s: sample_kwargs(cfg, settings, s) for s in ("prefill", "decode")}
    # lightweight_conversion: the MLIR constants point at the weights' own memory instead of copying
    # them (LiteRT then folds constants at runtime-fold time). Qwen3-0.6B-wide, 2 layers, npu graph:
    # converter peak 4,035 -> 2,586 MiB, 93 -> 50 s, the same context binary byte for byte in size
    recipe = quant_config(settings.quant)
    after = recipe is not None and recipe._quantizer_mode == recipe._QuantizerMode.AI_EDGE_QUANTIZER
    with torch.no_grad(), weights_left_unwritten():
        edge = (litert_torch.signature("prefill", step, sample_kwargs=feeds["prefill"])
                .signature("decode", step, sample_kwargs=feeds["decode"])
                .convert(quant_config=None if after else recipe, lightweight_conversion=True))
    edge.export(str(tmp))
    return recipe if after else None


def convert_in_process(model: MekiModel, path: Path, settings: ExportSettings, graph: str = "cpu") -> None:
    """convert_float, then the recipe if one is left, into `path` (atomic)."""
    tmp = temp_sibling(path)
    try:
        recipe = convert_float(model, tmp, settings, graph)
        if recipe is not None:
            quantise_file(tmp, recipe)
        commit_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def quantise_file(path: Path, recipe: Any) -> None:
    """litert-torch's generative recipes, applied as its converter applies them (ai-edge-quantizer over
    the serialised float model: translate_recipe.quantize_model), but after the float model is written
    and the converter's module is gone (in the child, the mapped weights too), and file to file: the
    quantiser maps the float file (its tensors are views of the mapping, not a parsed copy) and writes
    the int8 model through a mapping of the output, dropping each buffer's pages once written (its
    `serialize_to_path`). Same float bytes in, same quantised bytes out (the same serialiser, written
    to a mapped file instead of a bytearray). Qwen3-0.6B int8 pair: 4,684 MiB (8,540 quantising beside the
    converter, 7,355 quantising bytes in memory after it)."""
    from ai_edge_quantizer import quantizer
    from litert_torch.quantize import translate_recipe

    out = temp_sibling(path)
    try:
        qt = quantizer.Quantizer(path, translate_recipe.translate_to_ai_edge_recipe(recipe.generative_recipe))
        qt.quantize(serialize_to_path=out)
        del qt  # its mappings of both files
        gc.collect()
        os.replace(out, path)
    finally:
        out.unlink(missing_ok=True)


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
    fp32 = sum(t.numel() for t in model.state_dict().values()) * 4
    with scratch_dir(path.parent, "litert", need=fp32) as work:  # the fp32 handoff first
        src = work / "model.pt"
        with stage("torch.save for the converter"):
            torch.save({"config": model.cfg.to_dict(), "state": model.state_dict()}, src)
            map_weights(model, src)
        # then the float .tflite and, beside it, the int8 one (~0.27x); checked only now: the weights were
        # mapped from the previous bundle's handoff, whose disk space the re-mapping just gave back
        check_free_space(path.parent, int(fp32 * (1 if settings.quant == "none" else 1.3)), "LiteRT's converter")
        cmd = [py, "-m", "pipeline.export.litert", "--model", str(src), "--out", str(path),
               "--quant", settings.quant, "--max-seq-len", str(settings.max_seq_len),
               "--prefill-len", str(settings.prefill_len), "--graph", graph]
        with stage("litert convert (subprocess)"):  # its RSS counts: the profiler samples the process tree
            run_child(cmd, f"tflite conversion in {py}", cwd=REPO_ROOT)


def map_weights(model: nn.Module, src: Path) -> None:
    """Point the model's weights at the file just saved for the converter (mapped read-only) and let
    their anonymous memory go: the parent and the converter child then read the same page-cache pages,
    counted once and reclaimable, instead of the parent holding its own fp32 copy beside the child's
    (Qwen3-1.7B: 8 GB). The values are the same bytes; the mapping outlives the file's deletion."""
    state = torch.load(src, weights_only=True, mmap=True)["state"]
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            mapped = state.get(name)
            if mapped is not None and mapped.shape == tensor.shape and mapped.dtype == tensor.dtype:
                tensor.data = mapped


def tflite_facts(path: Path, cfg: ModelConfig) -> dict[str, Any]:
    """What the graph holds: signature input names, table-shaped tensors (must be none) and op counts."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    bad = table_shapes(cfg)
    tables = [f"{t['name']}{tuple(int(s) for s in t['shape'])}" for t in interp.get_tensor_details()
              if tuple(int(s) for s in t["shape"]) in bad]
    inputs = {name: list(sig["inputs"]) for name, sig in interp.get_signature_list().items()}
    ops: Counter[str] = Counter()
    # mapped, not read: the file holds the weights (6.8 GB for the Qwen3-1.7B shape in fp32)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        fb = schema.Model.GetRootAsModel(buf, 0)
        names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        codes = [names[max(fb.OperatorCodes(i).BuiltinCode(), fb.OperatorCodes(i).DeprecatedBuiltinCode())]
                 for i in range(fb.OperatorCodesLength())]
        for g in range(fb.SubgraphsLength()):
            sub = fb.Subgraphs(g)
            ops.update(codes[sub.Operators(i).OpcodeIndex()] for i in range(sub.OperatorsLength()))
    return {"inputs": inputs, "tables": tables, "ops": dict(ops)}


def export_tflite(model: MekiModel, path: Path, settings: ExportSettings, target: str) -> Backbone:
    """Convert, check the graph (no MeKi table, the rows input only in MeKi exports) and describe it."""
    t0 = time.perf_counter()
    convert(model, path, settings)
    cfg = model.cfg
    with stage("graph checks"):
        facts = tflite_facts(path, cfg)
    refuse_tables(facts["tables"], target)
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


def main(argv: list[str] | None = None) -> None:
    """The conversion half, run inside .venv-litert: a torch file (config + state) -> .tflite."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.export.litert")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quant", default="none", choices=TFLITE_QUANTS)
    ap.add_argument("--max-seq-len", type=int, required=True)
    ap.add_argument("--prefill-len", type=int, required=True)
    ap.add_argument("--graph", default="cpu", choices=("cpu", "npu"))
    args = ap.parse_args(argv)
    from pipeline.checkpoint import build_model

    saved = torch.load(args.model, weights_only=True, mmap=True)  # the weights stay in the file's pages
    model = build_model(ModelConfig.from_dict(saved["config"]), saved["state"], str(args.model))
    del saved
    tmp = temp_sibling(args.out)
    try:
        recipe = convert_float(model.eval(), tmp, ExportSettings(args.quant, args.max_seq_len, args.prefill_len),
                               args.graph)
        del model  # the mapped weights go before the quantiser reads the float file (0.6B: 2.4 GB fewer)
        gc.collect()
        if recipe is not None:
            quantise_file(tmp, recipe)
        commit_file(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
