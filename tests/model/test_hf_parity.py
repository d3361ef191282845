"""Our dense forward against transformers' Qwen3ForCausalLM on a tiny random checkpoint."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from pipeline.checkpoint import CheckpointError
from pipeline.importers.hf_qwen3 import load_hf_qwen3

HF_TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, rope_theta=500000.0, max_position_embeddings=128)


def write_hf(tmp_path, shard_size=None, **changes):
    torch.manual_seed(0)
    ref = Qwen3ForCausalLM(Qwen3Config(**(HF_TINY | changes))).eval()
    with torch.no_grad():  # random norms so that a swapped norm would show
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    ref.save_pretrained(tmp_path, **kwargs)
    return ref


def greedy(step, prompt, n):
    tokens = prompt.clone()
    for _ in range(n):
        tokens = torch.cat([tokens, step(tokens)[:, -1:].argmax(-1)], dim=1)
    return tokens[:, prompt.shape[1]:]


@pytest.mark.parametrize("tied,shard", [(True, None), (False, "40KB")])
def test_dense_forward_matches_transformers(tmp_path, tied, shard):
    ref = write_hf(tmp_path, shard, tie_word_embeddings=tied)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_hf_qwen3(tmp_path).eval()
    prompt = torch.tensor([[1, 7, 42, 99, 159, 3, 3, 64]])
    with torch.no_grad():
        diff = (ref(prompt).logits - ours(prompt)).abs().max().item()
        ref_tokens = greedy(lambda t: ref(t).logits, prompt, 32)
        ours.setup_cache(max_seq_len=64)  # ours decodes step-wise through its KV cache
        logits = ours(prompt, input_pos=torch.arange(prompt.shape[1]))
        out = [logits[:, -1:].argmax(-1)]
        for i in range(31):
            pos = torch.tensor([prompt.shape[1] + i])
            out.append(ours(out[-1], input_pos=pos)[:, -1:].argmax(-1))
    assert diff <= 1e-4
    assert torch.equal(torch.cat(out, dim=1), ref_tokens)


def test_unsupported_and_unknown_keys_are_named(tmp_path):
    write_hf(tmp_path, attention_bias=True)
    with pytest.raises(CheckpointError, match="attention_bias"):
        load_hf_qwen3(tmp_path)
