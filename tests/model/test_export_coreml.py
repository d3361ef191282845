"""Core ML export of the fake preset: bundles, spec checks (no Core ML runtime on Linux), compression."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from contract.manifest import Manifest, load_manifest
from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.common import with_slice_cache
from pipeline.export.coreml_backend import convert, export_programs, weight_consts
from pipeline.export.coreml_quant import INT4_BLOCK, MIN_QUANT_ELEMENTS, quantized_view
from pipeline.export.registry import ExportSettings, get_target
from pipeline.export.spec_checks import check_spec
from pipeline.export.verify import verify_bundle_artifacts
from pipeline.fold import fold_model
from pipeline.model import MekiModel, init_weights
from tests.model.helpers import trained_like_model

pytestmark = pytest.mark.slow
SETTINGS = ExportSettings(max_seq_len=64, prefill_len=8)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("coreml")
    save_checkpoint(trained_like_model(), root / "ck")
    export_bundles(root / "ck", root / "out", ["coreml"], SETTINGS, pack_dtype="fp16")
    return root / "out"


def spec_of(bundle):
    import coremltools as ct

    return ct.utils.load_spec(str(bundle / "model.mlpackage"))


def test_verify_rows_are_spec_ok(bundles):
    for kind in ("meki", "dense"):
        rows = verify_bundle_artifacts(bundles / kind, bundles.parent / "ck", steps=1)
        assert [(r.target, r.status) for r in rows] == [("coreml", "spec-ok")], rows


def test_package_listed_and_meki_input_only_in_meki(bundles):
    meki = json.loads((bundles / "meki" / "manifest.json").read_text())
    assert meki["backbones"][0]["file"] == "model.mlpackage"
    files = {f["path"] for f in meki["files"]}
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
            "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"} <= files
    for kind, want in (("meki", ["tokens", "input_pos", "meki_rows"]), ("dense", ["tokens", "input_pos"])):
        spec = spec_of(bundles / kind)
        fns = {f.name: f for f in spec.description.functions}
        assert sorted(fns) == ["decode", "prefill"]
        for fn in fns.values():
            assert [i.name for i in fn.input] == want
            assert [list(s.type.stateType.arrayType.shape) for s in fn.state] == [[1, 2, 64, 16]] * 4
        seq = fns["prefill"].input[0].type.multiArrayType.shapeRange.sizeRanges[1]
        assert (seq.lowerBound, seq.upperBound) == (1, 8)


def test_no_table_shaped_constant(bundles):
    spec = spec_of(bundles / "meki")
    shapes = {tuple(d.constant.size for d in op.outputs[0].type.tensorType.dimensions)
              for fn in spec.mlProgram.functions.values() for blk in fn.block_specializations.values()
              for op in blk.operations if op.type == "const"}
    assert (128, 16) not in shapes and (128, 2, 16) not in shapes
    assert (128, 64) in shapes  # the embedding is there: the walk sees weights


@pytest.mark.parametrize("edit,problem", [
    (lambda b: setattr(b, "max_seq_len", 32), "state model_layers_0_attn_cache_k is [1, 2, 64, 16] FLOAT16, want"),
    (lambda b: setattr(b, "quant", "int4"), "0 constexpr_blockwise_shift_scale ops with quant=int4"),
    (lambda b: setattr(b.methods["decode"], "entry", "step"), "function 'step' not in the package"),
    (lambda b: b.methods["prefill"].inputs[0].shape.__setitem__(1, 4), "prefill.inputs.tokens: shape [1, 1]..[1, 8]"),
    (lambda b: setattr(b.methods["decode"].inputs[2], "dtype", "float16"), "decode.inputs.meki_rows: dtype float32"),
])
def test_spec_check_names_mismatches(bundles, edit, problem):
    manifest = load_manifest(bundles / "meki")
    edit(manifest.backbones[0])
    problems = check_spec(bundles / "meki", manifest, manifest.backbones[0])
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("quant,op", [("int4", "constexpr_blockwise_shift_scale"),
                                      ("palettize4", "constexpr_lut_to_dense")])
def test_compressed_weights(bundles, tmp_path, quant, op):
    folded, _ = fold_model(trained_like_model())
    backbone = get_target("coreml").export(folded.eval(), tmp_path, ExportSettings(quant, 64, 8))
    manifest = Manifest(name="t", fingerprint="0" * 32, memory="both", config=folded.cfg.to_dict(), tokenizer=None,
                        memory_pack=None, backbones=[backbone])
    assert check_spec(tmp_path, manifest, backbone) == []
    weights = "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    fp16 = (bundles / "meki" / weights).stat().st_size
    assert (tmp_path / weights).stat().st_size < 0.5 * fp16  # both functions share one compressed copy
    ops = [o.type for fn in spec_of(tmp_path).mlProgram.functions.values()
           for blk in fn.block_specializations.values() for o in blk.operations]
    assert ops.count(op) >= 2 * 9  # per function: the embedding and most linear weights


def test_slice_cache_matches_index_copy_cache():
    """The Core ML cache write (one slice at input_pos[0]) gives the eager model's logits."""
    folded, tables = fold_model(trained_like_model())
    ref = with_slice_cache(folded, 64)
    ref.setup_cache(64)  # back to the index_copy cache
    got = with_slice_cache(folded, 64)
    tokens = torch.tensor([[5, 9, 3, 7, 1, 2]])
    rows = lambda t: torch.from_numpy(np.ascontiguousarray(tables[t.reshape(-1).numpy()]))[None]  # noqa: E731
    with torch.no_grad():
        for start, end in ((0, 4), (4, 5), (5, 6)):  # prefill 4, then two decode steps
            chunk, pos = tokens[:, start:end], torch.arange(start, end)
            torch.testing.assert_close(got(chunk, pos, rows(chunk)), ref(chunk, pos, rows(chunk)), rtol=0, atol=1e-6)


def blockwise_weights(mlmodel) -> list:
    """Every int4 weight of a converted model: codes, scales, the ops that read it."""
    fn = mlmodel._mil_program.functions["main"]
    return sorted((op.data.val.tobytes(), str(op.data.val.dtype), op.scale.val.tobytes(), str(op.scale.val.dtype),
                   op.data.val.shape, sorted(c.op_type for c in op.outputs[0].child_ops))
                  for op in fn.find_ops(op_type="constexpr_blockwise_shift_scale"))


def compute_ops(mlmodel, skip: tuple[str, ...] = ()) -> Counter:
    return Counter(op.op_type for op in mlmodel._mil_program.functions["main"].operations
                   if op.op_type not in ("const", "constexpr_blockwise_shift_scale", *skip))


@pytest.mark.parametrize("variant", ["paper", "megatron"])
def test_int4_in_torch_equals_coremltools_own_pass(variant):
    """int4 made in torch before conversion (coreml_quant.py) gives what coremltools' own pass makes of
    the converted fp32 model (what this target shipped before): the same codes and scales, read by the
    same ops, in the graph the fp32 model converts to. (The pass's reload of the program from its spec
    leaves a second copy of an index clamp that the direct conversion shares: not compared; prefill's
    symbolic-length arithmetic is scheduled differently, one shape read more: its shape ops not counted.)"""
    import coremltools.optimize.coreml as cto

    model = trained_like_model() if variant == "paper" else init_weights(
        MekiModel(trained_like_model().cfg.replace(variant="megatron")), seed=2)
    folded, _ = fold_model(model)
    settings = ExportSettings("int4", 64, 8)
    config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=INT4_BLOCK, weight_threshold=MIN_QUANT_ELEMENTS)
    for name in ("prefill", "decode"):
        plain = convert(export_programs(folded.eval(), settings)[name])
        ref = cto.linear_quantize_weights(plain, cto.OptimizationConfig(
            op_name_configs={n: config for n in weight_consts(plain)}))
        got = convert(export_programs(quantized_view(folded.eval()), settings)[name])
        assert len(blockwise_weights(got)) == 2 * 8 + 1  # per layer 8 (the MeKi out-projection's in-dim 16 < 32)
        assert blockwise_weights(got) == blockwise_weights(ref)
        plumbing = ("shape", "slice_by_index", "concat") if name == "prefill" else ()
        assert compute_ops(got, plumbing) == compute_ops(plain, plumbing)


def test_int4_view_leaves_the_model_float():
    folded, _ = fold_model(trained_like_model())
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    view = quantized_view(folded)
    assert type(view.embed).__name__ == "Int4Embedding" and type(folded.embed).__name__ == "Embedding"
    assert folded.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in folded.state_dict().items())
    assert view.norm is folded.norm and view.layers[0].attn_norm is folded.layers[0].attn_norm  # shared, not copied


def test_tied_embedding_dequantised_once():
    """The embedding read by the lookup and the tied head: one dequantize node, one weight in MIL."""
    folded, _ = fold_model(trained_like_model())
    assert folded.cfg.tie_embeddings
    program = export_programs(quantized_view(folded.eval()), ExportSettings("int4", 64, 8))["decode"]
    calls = [n for n in program.graph_module.graph.nodes if str(n.target) == "torchao.dequantize_affine.default"]
    assert len(calls) == 2 * 8 + 1
    assert max(len(c.users) for c in calls) == 2  # the embedding: the lookup and the head


def test_block_quantize_in_row_blocks_equals_one_call(monkeypatch):
    import coremltools.optimize._utils as optimize_utils
    from coremltools.converters.mil.mil import types

    import pipeline.export.coreml_quant as cq

    weight = torch.randn(100, 64) * 0.02
    monkeypatch.setattr(cq, "ROWS", 48)  # 100 rows: blocks of 48, 48, 4
    data, scale = cq.block_quantize(weight)
    want, want_scale, _ = optimize_utils.compute_qparams_by_dtype(weight.to(torch.float16).numpy(), types.int4,
                                                                  "LINEAR_SYMMETRIC", [1, INT4_BLOCK])
    assert np.array_equal(data, want.astype(np.int8)) and np.array_equal(scale, want_scale)
    assert scale.dtype == want_scale.dtype
