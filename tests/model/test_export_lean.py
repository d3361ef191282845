"""Lean lowering (pipeline/export/lean_lowering.py): the same .pte bytes as ExecuTorch's full passes."""

import pytest
import torch

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.export.eager_quant import LayerFuser
from pipeline.export.registry import ExportSettings
from pipeline.fold import fold_model
from tests.model.helpers import trained_like_model

pytest.importorskip("executorch")


def test_calls_any_sees_table_ops_only():
    from pipeline.export.lean_lowering import calls_any

    gm = torch.fx.symbolic_trace(torch.nn.SiLU())
    table = {torch.nn.functional.silu: None}
    assert calls_any(gm, table)
    assert not calls_any(gm, {torch.ops.aten.mul.Tensor: None})


def test_patches_are_undone():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir.pass_base import ExportPass
    from torch.export import ExportedProgram

    from pipeline.export.lean_lowering import lean_lowering

    before = (ExportedProgram.run_decompositions, XNNPACKPassManager.transform, dict(ExportPass.__dict__))
    with lean_lowering():
        assert "call" in ExportPass.__dict__
        assert ExportedProgram.run_decompositions is not before[0]
    assert (ExportedProgram.run_decompositions, XNNPACKPassManager.transform) == before[:2]
    assert dict(ExportPass.__dict__) == before[2]


@pytest.mark.slow
def test_lean_lowering_writes_the_same_program(tmp_path, monkeypatch, quant="8da4w-h8"):
    """Both methods, the fused XNNPACK form, quantised as it loads (the demo's 8da4w-h8): byte-identical .pte."""
    from pipeline.export.executorch_xnnpack import export_xnnpack

    folded, _ = fold_model(trained_like_model())
    save_checkpoint(folded, tmp_path / "ck")
    settings = ExportSettings(quant=quant, max_seq_len=64, prefill_len=8)
    programs = {}
    for lean in ("1", "0"):
        monkeypatch.setenv("MEKI_LEAN_LOWERING", lean)
        model, _ = load_checkpoint(tmp_path / "ck", prepare=LayerFuser(quant))
        out = tmp_path / f"lean{lean}"
        out.mkdir()
        export_xnnpack(model.eval(), out, settings)
        programs[lean] = (out / "model_xnnpack.pte").read_bytes()
    assert programs["1"] == programs["0"]
