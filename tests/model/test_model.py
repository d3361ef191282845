"""Model core: folding is exact, the KV cache agrees with the full forward, configs are strict."""

import pytest
import torch

from pipeline.config import ConfigError, ModelConfig, PRESETS, fake, preset
from pipeline.fold import fold_model
from pipeline.model import MekiModel
from tests.model.helpers import TOKENS, random_model


@pytest.mark.parametrize("variant", ["paper", "megatron"])
@pytest.mark.parametrize("memory", ["both", "static", "dynamic"])
def test_folded_logits_equal_train_form(variant, memory):
    model = random_model(variant=variant, memory=memory)
    folded, tables = fold_model(model, chunk_size=37)  # uneven chunks on purpose
    with torch.no_grad():
        ref = model(TOKENS)
        rows = torch.from_numpy(tables)[TOKENS]  # [B, T, L, m]
        got = folded(TOKENS, meki_rows=rows)
    assert tables.shape == (128, 2, 16)
    assert (ref - got).abs().max().item() <= 1e-5
    assert not any(".memory." in k for k in folded.state_dict())


def test_meki_branch_changes_the_output():
    dense = random_model(memory="none")
    meki = random_model()
    meki.load_state_dict(dense.state_dict(), strict=False)
    with torch.no_grad():
        assert (meki(TOKENS) - dense(TOKENS)).abs().max() > 1e-3


@pytest.mark.parametrize("changes", [{}, {"qk_norm": True}, {"memory": "none"}, {"tie_embeddings": False},
                                     {"variant": "megatron"}])
def test_kv_cache_steps_equal_full_forward(changes):
    model = random_model(**changes)
    with torch.no_grad():
        full = model(TOKENS)
        model.setup_cache(max_seq_len=32)
        prefill = model(TOKENS[:, :4], input_pos=torch.arange(4))
        steps = [model(TOKENS[:, i:i + 1], input_pos=torch.tensor([i])) for i in range(4, TOKENS.shape[1])]
    cached = torch.cat([prefill, *steps], dim=1)
    assert (full - cached).abs().max().item() <= 1e-5


def test_folded_model_requires_rows():
    folded, _ = fold_model(random_model())
    with pytest.raises(ValueError, match="meki_rows"):
        folded(TOKENS)


def test_config_rejects_unknown_keys_and_bad_values():
    data = fake().to_dict() | {"d_memory": 3, "colour": "red"}
    with pytest.raises(ConfigError, match="colour, d_memory"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="memory='half'"):
        fake().replace(memory="half")
    with pytest.raises(ConfigError, match="unknown preset 'qwen9'.*fake"):
        preset("qwen9")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build(name):
    cfg = preset(name)
    with torch.device("meta"):
        model = MekiModel(cfg)
    assert len(model.layers) == cfg.num_layers
    paper_dmem = {"qwen3-0.6b": 128, "qwen3-1.7b": 256, "qwen3-4b": 512}
    if name in paper_dmem:
        assert cfg.d_mem == paper_dmem[name] and cfg.vocab_size == 151_680
