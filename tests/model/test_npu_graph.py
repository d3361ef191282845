"""npu_graph.NpuStep (the graph tflite-qnn compiles) against the eager model, and on the HTP simulator.

The fast test checks the blocked attention in PyTorch (GQA order, KV-head blocks, cache + chunk
split, masks). The slow one compiles the smallest model found that reproduced the 0.6B-width failure
of one batched block over 8 KV heads (head_dim 64, 2 layers, S=128, P=32: logits 9.2 dB, layer-1 k
5.1 dB on QAIRT 2.51's HTP simulator) and checks every output against eager.
"""

import copy

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.export.npu_graph import NpuStep
from pipeline.model import MekiModel, init_weights

REPRO = ModelConfig(vocab_size=128, num_layers=2, dim=64, ffn_dim=128, num_heads=8, num_kv_heads=8, head_dim=64,
                    memory="none", max_seq_len=128)


@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (16, 8), (4, 2)])
def test_npu_step_matches_eager_over_cache_and_chunk(heads, kv_heads):
    cfg = REPRO.replace(num_heads=heads, num_kv_heads=kv_heads, head_dim=16, qk_norm=True)
    model = init_weights(MekiModel(cfg), seed=3, std=0.1).eval()
    step = NpuStep(copy.deepcopy(model), 32).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(tokens)[0]  # [13, V], full causal forward
        cache = {f"kv_{k}_{i}": torch.zeros(1, kv_heads, 32, 16) for i in range(cfg.num_layers) for k in "kv"}
        for start, end in ((0, 8), (8, 12), (12, 13)):  # two chunks, then one decode step
            pos = torch.arange(start, end, dtype=torch.int32)
            out = step(tokens=tokens[:, start:end].int(), input_pos=pos,
                       last_index=torch.tensor([end - start - 1], dtype=torch.int32), **cache)
            torch.testing.assert_close(out["logits"][0], ref[end - 1], rtol=1e-4, atol=1e-4)
            for name in cache:  # the runner's job: write the chunk's new k, v at input_pos
                cache[name][:, :, start:end] = out[name.replace("kv_", "").replace("_", "_new_", 1)]


@pytest.mark.slow
def test_eight_kv_heads_on_the_simulator(tmp_path):
    """The 0.6B-width failure, small: every output within the fp16 floor (30 dB) of eager."""
    from pipeline.export import qnn_backend
    from pipeline.export.litert import convert
    from pipeline.export.qnn_quant import CalibConfig, step_feeds
    from pipeline.export.registry import ExportSettings

    if qnn_backend.qnn_sdk_missing():
        pytest.skip(qnn_backend.qnn_sdk_missing())
    model = init_weights(MekiModel(REPRO), seed=0).eval()
    settings = ExportSettings(max_seq_len=128, prefill_len=32)
    src, out = tmp_path / "graph.tflite", tmp_path / "compiled.tflite"
    convert(model, src, settings, graph="npu")
    qnn_backend.compile_for_soc(src, out, "SM8750")
    tokens = np.random.default_rng(0).integers(0, REPRO.vocab_size, 256)
    feeds = step_feeds(model, 128, 32, tokens, lambda t: None, CalibConfig(windows=1, prefill_chunks=1, decode_steps=2))
    snr = qnn_backend.simulator_snr(out, feeds)
    assert min(snr.values()) >= 30.0, snr
