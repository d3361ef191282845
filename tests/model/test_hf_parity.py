"""Our dense forward against transformers' Qwen3ForCausalLM on a tiny random checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from contract.inputs import InputError

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


def edit_config(folder, **changes):
    """config.json rewritten by hand, as users do (None deletes a key)."""
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def logits_match(folder, tokens):
    ref = Qwen3ForCausalLM.from_pretrained(folder).eval()
    ours = load_hf_qwen3(folder).eval()
    with torch.no_grad():
        return (ref(tokens).logits - ours(tokens)).abs().max().item()


def test_config_read_as_transformers_reads_it(tmp_path):
    """No theta at all (transformers' default 10000), and a prompt longer than max_position_embeddings
    without a cache (the RoPE tables grow, as transformers' do)."""
    write_hf(tmp_path, max_position_embeddings=16)
    edit_config(tmp_path, rope_parameters=None, rope_theta=None, rope_scaling=None)
    tokens = torch.arange(24)[None] * 5 % 160
    assert logits_match(tmp_path, tokens) <= 1e-4


@pytest.mark.parametrize("changes,match", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
     "rope_scaling rope type 'yarn'"),  # beside transformers 5's rope_parameters, as the model cards say
    ({"rope_parameters": [1]}, r"rope_parameters=\[1\] \(expected an object\)"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings='false'"),
    ({"rope_theta": "abc", "rope_parameters": None}, r"rope_theta='abc': expected a positive number"),
    ({"rms_norm_eps": "1e-6"}, r"rms_norm_eps='1e-6': expected a positive number"),
    ({"layer_types": ["full_attention", "sliding_attention", "full_attention"]}, "layer_types other than full"),
])
def test_config_values_refused_by_their_names(tmp_path, changes, match):
    write_hf(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=match):
        load_hf_qwen3(tmp_path)


@pytest.mark.parametrize("key", ["max_position_embeddings", "num_key_value_heads"])
def test_null_sizes_are_named(tmp_path, key):
    """null is no size (transformers reads num_key_value_heads null as its own default, 32, not as all heads)."""
    write_hf(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text()) | {key: None}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"{key}=None"):
        load_hf_qwen3(tmp_path)


def test_weights_problems_named_as_the_checkpoint_names_them(tmp_path):
    ref = write_hf(tmp_path)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.int8)
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 127)
    state["model.surprise"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_hf_qwen3(tmp_path)
    msg = str(err.value)
    assert "missing keys: model.layers.1.mlp.up_proj.weight;" in msg and "unexpected keys: model.surprise;" in msg
    assert "wrong shapes: model.layers.0.mlp.down_proj.weight (64, 127) (expected (64, 128))" in msg
    assert "wrong dtypes (expected float32, float16 or bfloat16): model.norm.weight int8" in msg


def test_damaged_files_and_indexes_are_named(tmp_path):
    write_hf(tmp_path, shard_size="40KB")
    index = tmp_path / "model.safetensors.index.json"
    shard = sorted(tmp_path.glob("*.safetensors"))[1]
    good = index.read_text()
    for text, match in [('{"metadata": {}}', "not a safetensors index"), ("not json", "not a safetensors index"),
                        ('{"weight_map": {"a": "../x.safetensors"}}', r"not file names in this folder: \.\./x")]:
        index.write_text(text)
        with pytest.raises(CheckpointError, match=match) as err:
            load_hf_qwen3(tmp_path)
        assert str(index) in str(err.value)
    index.write_text(good)
    shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=f"{shard}: not a readable safetensors file"):
        load_hf_qwen3(tmp_path)
    shard.unlink()
    shard.mkdir()
    with pytest.raises(InputError, match=f"{shard} is a directory"):
        load_hf_qwen3(tmp_path)
