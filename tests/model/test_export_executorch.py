"""ExecuTorch XNNPACK export of the fake preset: bundles, graph checks, and verify against eager."""

import json
from pathlib import Path

import pytest
import torch

from pipeline.export.bundle import export_bundles
from pipeline.export.common import table_shaped_tensors
from pipeline.export.registry import ExportError, ExportSettings, Target, get_target
from pipeline.export.verify import verify_bundle_artifacts
from tests.model.helpers import random_model

pytestmark = pytest.mark.slow


def test_bundles_verify_against_eager(bundles):
    out, quant = bundles
    for kind in ("meki", "dense"):
        rows = verify_bundle_artifacts(out / kind, out.parent / "ck", steps=32)
        assert [r.status for r in rows] == ["pass"], rows
        assert rows[0].greedy_match
        if quant == "none":
            assert rows[0].max_abs_diff <= 1e-3


def test_meki_input_only_in_meki_bundle(bundles):
    out, _ = bundles
    meki = json.loads((out / "meki" / "manifest.json").read_text())
    dense = json.loads((out / "dense" / "manifest.json").read_text())
    names = lambda m, step: [t["name"] for t in m["backbones"][0]["methods"][step]["inputs"]]  # noqa: E731
    assert names(meki, "decode") == ["tokens", "input_pos", "meki_rows"]
    assert names(dense, "decode") == ["tokens", "input_pos"]
    assert meki["memory_pack"]["fingerprint"] == meki["fingerprint"] and dense["memory_pack"] is None
    assert meki["backbones"][0]["delegated"]["decode.delegate_calls"] > 0
    # the backbone is smaller than the tables it must not contain plus the rest of the model
    pte = (out / "meki" / "model_xnnpack.pte").stat().st_size
    assert pte < (out / "dense" / "model_xnnpack.pte").stat().st_size * 1.5


def test_nothing_lowered_stays_alive(bundles):
    """ExecuTorch's and torch's caches let go of every lowered graph and its delegate blobs once the
    bundles are written (torch's fake-tensor caches held them: 1.5 GB at the Qwen3-1.7B shape)."""
    import gc

    from executorch.exir.lowered_backend_module import LoweredBackendModule

    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, LoweredBackendModule)]


def test_kv_cache_carries_no_initial_data(bundles):
    """The cache is planned memory the kernels fill: its zeros are not serialised into the .pte
    (2 methods x 2·L·S·Hkv·hd floats: 235 MB at the 0.6B shape and S=512, read at every load)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    out, _ = bundles
    for kind in ("meki", "dense"):
        pte = deserialize_pte_binary((out / kind / "model_xnnpack.pte").read_bytes())
        program = getattr(pte, "program", pte)
        for plan in program.execution_plan:
            planned = [v.val for v in plan.values if type(v.val).__name__ == "Tensor" and v.val.allocation_info]
            assert planned, plan.name
            with_data = [t.sizes for t in planned if t.data_buffer_idx]
            assert not with_data, f"{kind}/{plan.name}: planned tensors with initial data {with_data}"


def test_decode_is_an_entry_point_to_prefills_program(bundles):
    """XNNPACK's default: one lowering; decode is a second execution plan over the same delegate blobs."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    out, _ = bundles
    for kind in ("meki", "dense"):
        manifest = json.loads((out / kind / "manifest.json").read_text())
        assert manifest["backbones"][0]["extra"]["decode_program"] == "prefill"
        pte = deserialize_pte_binary((out / kind / "model_xnnpack.pte").read_bytes())
        program = getattr(pte, "program", pte)
        blobs = {plan.name: [program.backend_delegate_data[d.processed.index].data for d in plan.delegates]
                 for plan in program.execution_plan}
        assert sorted(blobs) == ["decode", "prefill"]
        assert blobs["decode"] == blobs["prefill"] and blobs["decode"]


@pytest.mark.parametrize("bundles", ["8da4w"], indirect=True)
def test_meki_adds_its_fusion_ops_and_no_delegate_call(bundles, monkeypatch):
    """What a MeKi decode step dispatches beyond the dense one (bench_overhead.py's "where MeKi's decode cost
    goes"): per layer, its row (a select), two int4 projections with their activation quantisations, the
    post-norm's mean (a [d -> 1] fully connected), the sigmoid gate, the adds and muls; no extra delegate
    call (the branch sits inside the layer's XNNPACK partition) and no other portable op."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from overhead_lib import decode_ops

    out, _ = bundles
    ops = {kind: decode_ops(out / kind / "model_xnnpack.pte") for kind in ("dense", "meki")}
    cfg = json.loads((out / "meki" / "manifest.json").read_text())["config"]
    layers = cfg["num_layers"]
    added = {k: ops["meki"].get(k, 0) - ops["dense"].get(k, 0) for k in set(ops["meki"]) | set(ops["dense"])}
    # out_proj reads d_mem inputs: int4 in groups of 32 only where they divide (the fake model's 16: fp32)
    per_layer = {"aten::select_copy": 1, "xnn:FullyConnected": 3, "xnn:Convert": 1 + (cfg["d_mem"] % 32 == 0),
                 "xnn:Sigmoid": 1, "xnn:Add": 2, "xnn:Multiply": 2, "xnn:ReciprocalSquareRoot": 1}
    assert {k: v for k, v in added.items() if v} == {k: v * layers for k, v in per_layer.items()}


@pytest.mark.parametrize("bundles", ["8da4w"], indirect=True)  # one quantisation: the methods differ in shape only
def test_decode_program_own_and_prefill_agree(bundles, tmp_path):
    """The same model exported with decode lowered on its own (T = 1, static) and with decode on
    prefill's program: the same greedy tokens, logits equal within float rounding."""
    import numpy as np

    from mobile_runtime.generate import Generator

    out, quant = bundles
    settings = ExportSettings(quant=quant, max_seq_len=64, prefill_len=8, decode_program="own")
    export_bundles(out.parent / "ck", tmp_path / "own", ["executorch-xnnpack"], settings, pack_dtype="fp16")
    prompt = [5, 9, 2, 7, 1]
    for kind in ("meki", "dense"):
        own, shared = (Generator(root / kind, check_hashes=False) for root in (tmp_path / "own", out))
        assert own.backbone.extra["decode_program"] == "own"
        size = {root: (root / kind / "model_xnnpack.pte").stat().st_size for root in (tmp_path / "own", out)}
        assert size[out] <= size[tmp_path / "own"]  # the shared blobs are stored once
        a, b = own.prefill(prompt), shared.prefill(prompt)
        np.testing.assert_array_equal(a, b)  # the same program
        token, pos = int(a.argmax()), len(prompt)
        for _ in range(6):
            rows_a, rows_b = own.lookup(np.array([[token]])), shared.lookup(np.array([[token]]))
            a, b = own.decode_one(token, pos, rows_a), shared.decode_one(token, pos, rows_b)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
            assert int(a.argmax()) == int(b.argmax())
            token, pos = int(a.argmax()), pos + 1


def test_table_shaped_tensor_is_caught():
    class Leaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.zeros(128, 16))

        def forward(self, tokens):
            return self.table[tokens]

    cfg = random_model().cfg
    ep = torch.export.export(Leaky(), (torch.tensor([1, 2]),))
    assert table_shaped_tensors({"decode": ep}, cfg) == ["decode:table(128, 16)"]


def test_registry_errors():
    with pytest.raises(ExportError, match="unknown target 'npu9'.*executorch-xnnpack"):
        get_target("npu9")
    missing = Target("x", "", "vendorx", ("no_such_toolkit_mod",), ("none",), lambda *a: None)
    with pytest.raises(ExportError, match=r"pip install -e '.\[vendorx\]'"):
        missing.ensure_available(ExportSettings())
    with pytest.raises(ExportError, match="quant 'int2' not supported"):
        get_target("executorch-xnnpack").ensure_available(ExportSettings(quant="int2"))
    with pytest.raises(ExportError, match="decode program 'shared' unknown.*own, prefill"):
        get_target("executorch-xnnpack").ensure_available(ExportSettings(decode_program="shared"))
    with pytest.raises(ExportError, match="target coreml: --decode-program applies to targets with prefill and decode"):
        get_target("coreml").ensure_available(ExportSettings(decode_program="own"))
