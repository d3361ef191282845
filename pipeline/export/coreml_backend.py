"""Core ML target: one iOS 18 `.mlpackage` with two functions, `prefill` and `decode`, KV cache as state.

Both functions come from the same model and declare the same states (k/v per layer, fp16, max_seq_len
positions), so one MLState made from either serves both: the pattern ANEMLL ships on the Neural
Engine (prefill/infer functions of one multifunction package, one state). It cannot be run on Linux.
prefill takes 1..prefill_len tokens (flexible), decode exactly one (fixed: what the ANE prefers).
int4 weights are made in torch before conversion (coreml_quant.py); palettize4 runs on the converted
model (coremltools.optimize), as int4 did before.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from contract.manifest import Backbone
from pipeline.export.common import (dynamic_seq, example_inputs, make_step, refuse_tables, step_methods,
                                    table_shaped_tensors, with_slice_cache)
from pipeline.export.coreml_quant import MIN_QUANT_ELEMENTS, quantized_view, share_dequantized
from pipeline.export.registry import ExportSettings, register_target
from pipeline.model import MekiModel
from pipeline.profile import release, stage

log = logging.getLogger(__name__)
COREML_QUANTS = ("none", "int4", "palettize4")
QUANT_OPS = {"int4": "constexpr_blockwise_shift_scale", "palettize4": "constexpr_lut_to_dense"}


def export_programs(model: MekiModel, settings: ExportSettings) -> dict[str, Any]:
    """torch.export of prefill (T in [1, prefill_len]) and decode (T = 1), each over its own cached copy."""
    from torch.export import export

    cfg = model.cfg
    programs = {}
    # int32 indices: Core ML has no int64 inputs
    for name, inputs, shapes in (("prefill", example_inputs(cfg, settings.prefill_len, 0, torch.int32),
                                  dynamic_seq(cfg, settings.prefill_len)),
                                 ("decode", example_inputs(cfg, 1, settings.prefill_len, torch.int32), None)):
        step = make_step(with_slice_cache(model, settings.max_seq_len))
        with torch.no_grad():
            programs[name] = export(step, inputs, dynamic_shapes=shapes, strict=False).run_decompositions({})
        share_dequantized(programs[name])
    return programs


def convert(program: Any) -> Any:
    """ExportedProgram -> Core ML ML program (iOS 18: states; fp16 compute; f32 logits out)."""
    import coremltools as ct
    import numpy as np

    return ct.convert(program, minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT16,
                      compute_units=ct.ComputeUnit.CPU_AND_NE, skip_model_load=True,
                      outputs=[ct.TensorType(name="logits", dtype=np.float32)])


def weight_consts(mlmodel: Any) -> list[str]:
    """Names of the 2-D float weight constants to compress: linear weights and the embedding. RoPE
    tables stay fp16 (16 levels of cos/sin would wreck positions); norm weights are 1-D."""
    names = []
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.find_ops(op_type="const"):
            val = op.outputs[0].val
            if (getattr(val, "ndim", 0) == 2 and val.dtype.kind == "f" and val.size >= MIN_QUANT_ELEMENTS
                    and "rope_" not in op.name):
                names.append(op.name)
    return names


def palettize(mlmodel: Any) -> Any:
    """palettize4: a 16-entry k-means LUT per weight tensor, on the converted model."""
    import coremltools.optimize.coreml as cto

    op = cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_tensor", weight_threshold=MIN_QUANT_ELEMENTS)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(op_name_configs={n: op for n in weight_consts(mlmodel)}))


def mil_op_counts(spec: Any, function: str) -> Counter:
    """Operation types in one function of an ML program spec (what the graph checks look at)."""
    counts: Counter = Counter()
    for block in spec.mlProgram.functions[function].block_specializations.values():
        counts.update(op.type for op in block.operations)
    return counts


def save_functions(models: dict[str, Any], out: Path, default: str) -> None:
    """One package whose functions are `models`' main functions (converted, in memory), each weight
    stored once.

    What ct.utils.save_multifunction does with packages on disk, without its reload of each package and
    its np.allclose of every pair of equal-looking weights (three float64 temporaries per comparison:
    3.7 GB for the Qwen3-0.6B embedding, 9 GB at 4B): the functions' weights come from the same torch
    tensors, so equal bytes (a sha1 of each) is the test. Equal weights get one weight_id, which the
    serialiser writes once."""
    import coremltools as ct
    import numpy as np
    from coremltools import _SPECIFICATION_VERSION_IOS_18, proto
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.mil import Program

    prog = Program()
    functions, version = [], _SPECIFICATION_VERSION_IOS_18  # multifunction packages start there
    same: dict[tuple, list[Any]] = {}
    for name, mlmodel in models.items():
        spec = mlmodel.get_spec()
        version = max(version, spec.specificationVersion)
        d = spec.description
        functions.append(proto.Model_pb2.FunctionDescription(name=name, input=d.input, output=d.output, state=d.state))
        fn = mlmodel._mil_program.functions["main"]
        prog.add_function(name, fn)
        for op in fn.operations:
            val = op.outputs[0].val if op.op_type == "const" else None
            if isinstance(val, np.ndarray) and val.size > 1:
                key = (str(op.outputs[0].dtype), val.dtype.str, val.shape,  # MIL's type too: int4 vs int8 codes
                       hashlib.sha1(np.ascontiguousarray(val).view(np.uint8)).digest())
                same.setdefault(key, []).append(op)
    for i, ops in enumerate(o for o in same.values() if len(o) > 1):
        for op in ops:
            op.weight_id = str(i)
    prog.default_function_name = default
    prog.skip_all_passes = True  # each function was optimised when it was converted
    prog.export_as_multifunction = True
    mlmodel = mil_convert(prog, convert_to="mlprogram", convert_from="milinternal", specification_version=version,
                          compute_units=ct.ComputeUnit.CPU_ONLY, skip_model_load=True,
                          model_description=proto.Model_pb2.ModelDescription(functions=functions,
                                                                           defaultFunctionName=default))
    mlmodel.save(str(out))


@register_target("coreml", "Core ML .mlpackage (iOS 18, KV cache as state, fp16, ANE); spec-checked here",
                 "coreml", ("coremltools", "torchao"), COREML_QUANTS)
def export_coreml(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    t0 = time.perf_counter()
    if settings.quant == "int4":  # nothing to swap where the bundle loaded it so (coreml_quant.CoreMLQuantizer)
        with stage("int4 weights"):
            model = quantized_view(model)
    with stage("torch.export"):
        programs = export_programs(model, settings)
    refuse_tables(table_shaped_tensors(programs, model.cfg), "coreml")
    out = out_dir / "model.mlpackage"
    converted = {}
    for name in list(programs):
        with stage(f"ct.convert {name}"):
            mlmodel = convert(programs.pop(name))  # the program is not needed once converted
        if settings.quant == "palettize4":
            with stage(f"palettize {name}"):
                mlmodel = palettize(mlmodel)
        log.info("coreml %s: MIL ops %s", name, dict(mil_op_counts(mlmodel.get_spec(), "main")))
        converted[name] = mlmodel
        release()
    shutil.rmtree(out, ignore_errors=True)
    with stage("save functions"):
        save_functions(converted, out, default="prefill")
    del converted
    release()
    cfg = model.cfg
    return Backbone(target="coreml", file=out.name, quant=settings.quant, max_seq_len=settings.max_seq_len,
                    prefill_len=settings.prefill_len, kv_cache="internal",
                    methods=step_methods(cfg, settings, index_dtype="int32"),
                    extra={"prefill_dynamic": True, "minimum_deployment_target": "iOS18",
                           "compute_precision": "float16", "compute_units": "CPU_AND_NE", "state_dtype": "float16",
                           "shared_state": "one MLState serves both functions (same state names and shapes)",
                           "export_s": round(time.perf_counter() - t0, 1)})
