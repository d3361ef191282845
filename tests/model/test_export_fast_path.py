"""The XNNPACK export form (llama ops attention, fused layers, untied quantised head) equals the eager model."""

import copy

import pytest
import torch

from pipeline.export.custom_attention import use_custom_attention
from pipeline.export.quantize import quantize_weights, untie_lm_head
from pipeline.export.fused_layers import fuse_layers
from pipeline.fold import fold_model
from tests.model.helpers import TOKENS, random_model


def _pair(model, fuse: bool):
    if model.cfg.has_meki:
        model, _ = fold_model(model)
    ref = copy.deepcopy(model)
    ref.setup_cache(32)
    fast = copy.deepcopy(model)
    fast.setup_cache(32)
    use_custom_attention(fast)
    if fuse:
        fuse_layers(fast)
    return ref, fast


def _rows(model, seq: int):
    cfg = model.cfg
    return torch.randn(1, seq, cfg.num_layers, cfg.d_mem, generator=torch.Generator().manual_seed(3)) \
        if cfg.has_meki else None


@pytest.mark.parametrize("memory,variant", [("none", "paper"), ("both", "paper"), ("both", "megatron")])
@pytest.mark.parametrize("fuse", [False, True])
def test_export_form_matches_eager_over_prefill_and_decode(memory, variant, fuse):
    ref, fast = _pair(random_model(memory=memory, variant=variant), fuse)
    seq = TOKENS.shape[1]
    rows = _rows(ref, seq)
    with torch.no_grad():
        a = ref(TOKENS[:, :6], torch.arange(6), None if rows is None else rows[:, :6], last_only=True)
        b = fast(TOKENS[:, :6], torch.arange(6), None if rows is None else rows[:, :6], last_only=True)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        for i in range(6, seq):  # decode one token at a time on the same caches
            r = None if rows is None else rows[:, i:i + 1]
            a = ref(TOKENS[:, i:i + 1], torch.tensor([i]), r, last_only=True)
            b = fast(TOKENS[:, i:i + 1], torch.tensor([i]), r, last_only=True)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (i, (a - b).abs().max())


def test_custom_attention_needs_a_cache():
    with pytest.raises(ValueError, match="setup_cache"):
        use_custom_attention(random_model(memory="none"))


def test_quantised_export_unties_and_quantises_the_head():
    model = random_model(memory="none", tie_embeddings=True)
    assert model.lm_head is None
    untie_lm_head(model)
    assert torch.equal(model.lm_head.weight, model.embed.weight)
    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()
    fresh = random_model(memory="none", tie_embeddings=True)
    quantize_weights(fresh, "8da4w", group_size=16)
    assert type(fresh.lm_head.weight) is type(fresh.layers[0].ffn.w_up.weight)  # the same torchao int4 tensor
    assert type(fresh.lm_head.weight) is not torch.nn.Parameter
