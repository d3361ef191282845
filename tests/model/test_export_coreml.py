"""Core ML export of the fake preset: bundles, spec checks (no Core ML runtime on Linux), compression."""

import json

import numpy as np
import pytest
import torch

from contract.manifest import Manifest, load_manifest
from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.common import with_slice_cache
from pipeline.export.registry import ExportSettings, get_target
from pipeline.export.spec_checks import check_spec
from pipeline.export.verify import verify_bundle_artifacts
from pipeline.fold import fold_model
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
