"""What `meki verify` can check of an artifact that has no runtime on this host.

Core ML (.mlpackage): the spec's functions, inputs (names, shapes with flexible ranges, dtypes),
outputs, states (k/v per layer, fp16, max_seq_len positions; the same in every function so one
MLState serves both), fp16 compute, the expected weight-compression ops and no table-shaped constant.
ExecuTorch programs with vendor delegates: the methods, their inputs, and the delegate backend ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.manifest import Backbone, Manifest, TensorSpec
from pipeline.export.common import SEQ_AXIS, table_shapes

# delegate id (the backend class name ExecuTorch writes into the program) per .pte target
PTE_BACKENDS = {"executorch-coreml": "CoreMLBackend", "executorch-vulkan": "VulkanBackend",
                "executorch-qnn": "QnnBackend", "executorch-mediatek": "NeuropilotBackend",
                "executorch-xnnpack": "XnnpackBackend"}
ML_DTYPES = {"INT32": "int32", "FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64"}
PTE_DTYPES = {"LONG": "int64", "INT": "int32", "FLOAT": "float32", "HALF": "float16", "BOOL": "bool"}
COMPRESSION_OPS = {"int4": "constexpr_blockwise_shift_scale", "palettize4": "constexpr_lut_to_dense"}
COMPUTE_OPS = ("linear", "matmul", "scaled_dot_product_attention")


def check_spec(bundle: Path, manifest: Manifest, backbone: Backbone) -> list[str]:
    """Problems found in the backbone's spec (empty: all checks passed)."""
    path = Path(bundle) / backbone.file
    if not path.exists():
        return [f"{backbone.file}: missing"]
    if backbone.target == "coreml":
        return check_mlpackage(path, manifest, backbone)
    if backbone.target in PTE_BACKENDS:
        return check_pte(path, backbone, PTE_BACKENDS[backbone.target])
    return [f"{backbone.target}: no runtime here and no spec check for this target"]


def _bounds(array_type: Any) -> tuple[list[int], list[int]]:
    """(lower, upper) per dimension of a Core ML multiarray: fixed, range (-1 = unbounded) or enumerated."""
    which = array_type.WhichOneof("ShapeFlexibility")
    if which == "shapeRange":
        ranges = array_type.shapeRange.sizeRanges
        return [r.lowerBound for r in ranges], [r.upperBound for r in ranges]
    if which == "enumeratedShapes":
        shapes = [list(s.shape) for s in array_type.enumeratedShapes.shapes]
        return [min(d) for d in zip(*shapes)], [max(d) for d in zip(*shapes)]
    return list(array_type.shape), list(array_type.shape)


def _check_features(where: str, features: Any, expected: list[TensorSpec], flexible_seq: bool) -> list[str]:
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    got = {f.name: f for f in features}
    problems = [f"{where}: {sorted(set(got) - {t.name for t in expected})} in the spec, not in the manifest"] \
        if set(got) - {t.name for t in expected} else []
    for t in expected:
        f = got.get(t.name)
        if f is None or f.type.WhichOneof("Type") != "multiArrayType":
            problems.append(f"{where}: no multiarray {t.name!r} in the spec")
            continue
        arr = f.type.multiArrayType
        dtype = ML_DTYPES.get(ArrayFeatureType.ArrayDataType.Name(arr.dataType), "?")
        if dtype != t.dtype:
            problems.append(f"{where}.{t.name}: dtype {dtype}, manifest says {t.dtype}")
        lower, upper = _bounds(arr)
        want_lower = list(t.shape)
        if flexible_seq and t.name in SEQ_AXIS:
            want_lower[SEQ_AXIS[t.name]] = 1
        if (upper or lower) and (upper, lower) != (list(t.shape), want_lower):
            problems.append(f"{where}.{t.name}: shape {lower}..{upper}, manifest says {want_lower}..{t.shape}")
    return problems


def _check_states(where: str, states: Any, cfg: dict[str, Any], max_seq_len: int) -> list[str]:
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    want = [1, cfg["num_kv_heads"], max_seq_len, cfg["head_dim"]]
    problems = []
    if len(states) != 2 * cfg["num_layers"]:
        problems.append(f"{where}: {len(states)} states, want k and v for {cfg['num_layers']} layers")
    for s in states:
        arr = s.type.stateType.arrayType
        dtype = ArrayFeatureType.ArrayDataType.Name(arr.dataType)
        if list(arr.shape) != want or dtype != "FLOAT16":
            problems.append(f"{where}: state {s.name} is {list(arr.shape)} {dtype}, want {want} FLOAT16")
    return problems


def _check_program(where: str, function: Any, quant: str, bad_shapes: set[tuple[int, ...]]) -> list[str]:
    """fp16 compute, the compression ops for `quant` (and none other), no table-shaped constant."""
    from coremltools.proto.MIL_pb2 import DataType

    problems, ops = [], []
    for block in function.block_specializations.values():
        ops += list(block.operations)
    fp32 = sorted({op.type for op in ops if op.type in COMPUTE_OPS
                   and DataType.Name(op.outputs[0].type.tensorType.dataType) != "FLOAT16"})
    if fp32 or not any(op.type in COMPUTE_OPS for op in ops):
        problems.append(f"{where}: compute not in fp16 ({', '.join(fp32) or 'no linear ops'})")
    for q, op_type in COMPRESSION_OPS.items():
        n = sum(op.type == op_type for op in ops)
        if (q == quant) != (n > 0):
            problems.append(f"{where}: {n} {op_type} ops with quant={quant}")
    for op in ops:
        if op.type == "const" or op.type.startswith("constexpr"):
            shape = tuple(d.constant.size for d in op.outputs[0].type.tensorType.dimensions)
            if shape in bad_shapes:
                problems.append(f"{where}: constant {op.outputs[0].name}{shape} is shaped like a MeKi table")
    return problems


def check_mlpackage(path: Path, manifest: Manifest, backbone: Backbone) -> list[str]:
    import coremltools as ct

    if not (path / "Manifest.json").is_file():
        return [f"{backbone.file}: not an .mlpackage (no Manifest.json)"]
    spec = ct.utils.load_spec(str(path))
    cfg = manifest.config
    problems = [] if spec.specificationVersion >= 9 else [f"spec version {spec.specificationVersion} < 9 (iOS 18)"]
    functions = {f.name: f for f in spec.description.functions}
    bad_shapes = table_shapes(cfg)
    states = {}
    for step, method in backbone.methods.items():
        fn = functions.get(method.entry)
        if fn is None:
            problems.append(f"{step}: function {method.entry!r} not in the package (has {sorted(functions)})")
            continue
        flexible = step == "prefill" and bool(backbone.extra.get("prefill_dynamic"))
        problems += _check_features(f"{step}.inputs", fn.input, method.inputs, flexible)
        problems += _check_features(f"{step}.outputs", fn.output, method.outputs, False)
        problems += _check_states(step, fn.state, cfg, backbone.max_seq_len)
        states[step] = sorted((s.name, tuple(s.type.stateType.arrayType.shape)) for s in fn.state)
        problems += _check_program(step, spec.mlProgram.functions[method.entry], backbone.quant, bad_shapes)
    if len({tuple(s) for s in states.values()}) > 1:
        problems.append("functions declare different states: one MLState cannot serve them all")
    return problems


def check_pte(path: Path, backbone: Backbone, backend_id: str) -> list[str]:
    """Methods named by the manifest exist, take its inputs (shape upper bounds, dtypes), and call the delegate."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    plans = {p.name: p for p in program.execution_plan}
    problems = []
    for step, method in backbone.methods.items():
        plan = plans.get(method.entry)
        if plan is None:
            problems.append(f"{step}: method {method.entry!r} not in the program (has {sorted(plans)})")
            continue
        ids = sorted({d.id for d in plan.delegates})
        if backend_id not in ids:
            problems.append(f"{step}: no {backend_id} delegate in {method.entry!r} (delegates: {ids or 'none'})")
        tensors = [plan.values[i].val for i in plan.inputs]
        if len(tensors) != len(method.inputs):
            problems.append(f"{step}: {len(tensors)} inputs, manifest lists {len(method.inputs)}")
            continue
        for t, spec in zip(tensors, method.inputs):
            dtype = PTE_DTYPES.get(getattr(t.scalar_type, "name", str(t.scalar_type)), "?")
            if list(t.sizes) != spec.shape and not _within_dynamic_seq(list(t.sizes), spec, backbone):
                problems.append(f"{step}.{spec.name}: {list(t.sizes)} {dtype}, manifest says {spec.shape} {spec.dtype}")
            elif dtype != spec.dtype:
                problems.append(f"{step}.{spec.name}: {list(t.sizes)} {dtype}, manifest says {spec.shape} {spec.dtype}")
    return problems


def _within_dynamic_seq(sizes: list[int], spec: TensorSpec, backbone: Backbone) -> bool:
    """A dynamic-T method records T's upper bound: the manifest's T may be smaller, nothing else may differ."""
    axis = SEQ_AXIS.get(spec.name)
    if not backbone.extra.get("prefill_dynamic") or axis is None or len(sizes) != len(spec.shape):
        return False
    same_elsewhere = all(a == b for i, (a, b) in enumerate(zip(sizes, spec.shape)) if i != axis)
    return same_elsewhere and spec.shape[axis] <= sizes[axis]
