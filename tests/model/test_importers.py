"""Megatron import against the Megatron layer math written out here; MeKi-fy; our own format."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.config import fake
from pipeline.importers.megatron import load_megatron
from pipeline.importers.mekify import mekify
from pipeline.model import MekiModel, init_weights

V, VPAD, L, D, FFN, H, G, HD, M = 100, 128, 2, 64, 96, 4, 2, 16, 16


def megatron_state(seed=0, qk_norm=False, untied=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen) * 0.2  # noqa: E731
    n = lambda *s: 0.5 + torch.rand(*s, generator=gen)  # noqa: E731
    sd = {"embedding.word_embeddings.weight": r(VPAD, D), "decoder.final_layernorm.weight": n(D)}
    if untied:
        sd["output_layer.weight"] = r(VPAD, D)
    for i in range(L):
        p = f"decoder.layers.{i}."
        sd |= {p + "self_attention.linear_qkv.weight": r((H + 2 * G) * HD, D),
               p + "self_attention.linear_qkv.layer_norm_weight": n(D),
               p + "self_attention.linear_qkv._extra_state": torch.tensor([1, 2], dtype=torch.uint8),
               p + "self_attention.linear_proj.weight": r(D, H * HD),
               p + "self_attention.linear_proj._extra_state": None,
               p + "mlp.linear_fc1.weight": r(2 * FFN, D), p + "mlp.linear_fc1.layer_norm_weight": n(D),
               p + "mlp.linear_fc2.weight": r(D, FFN),
               p + "meki_module.embeddings.weight": r(VPAD, M),
               p + "meki_module.word_emb_projection.linear_fc1.weight": r(2 * (D // 2), D),
               p + "meki_module.word_emb_projection.linear_fc1.layer_norm_weight": n(D),
               p + "meki_module.word_emb_projection.linear_fc2.weight": r(M, D // 2),
               p + "meki_module.gate_proj.weight": r(M, D), p + "meki_module.out_proj.weight": r(D, M),
               p + "meki_module.mix_norm.weight": n(M), p + "meki_module.post_norm.weight": n(D),
               p + "meki_module.alpha_scale": torch.tensor([0.8]), p + "meki_module.beta_scale": torch.tensor([1.4])}
        if qk_norm:
            sd |= {p + "self_attention.q_layernorm.weight": n(HD), p + "self_attention.k_layernorm.weight": n(HD)}
    return sd


def megatron_args(**changes):
    """The args Megatron saves that shape the model (its own names; the MeKi script's settings)."""
    return dict(num_layers=L, hidden_size=D, ffn_hidden_size=FFN, num_attention_heads=H, group_query_attention=True,
                num_query_groups=G, kv_channels=HD, rotary_base=500000, norm_epsilon=1e-6, normalization="RMSNorm",
                swiglu=True, position_embedding_type="rope", rotary_percent=1.0, rotary_interleaved=False,
                apply_layernorm_1p=False, add_bias_linear=False, add_qkv_bias=False, tensor_model_parallel_size=1,
                pipeline_model_parallel_size=1, padded_vocab_size=VPAD, seq_length=256) | changes


def write_megatron(root, sd, iteration="10", ranks=("mp_rank_00",), **args):
    folder = root / ("release" if iteration == "release" else f"iter_{int(iteration):07d}")
    for rank in ranks:
        (folder / rank).mkdir(parents=True)
        torch.save({"model": sd, "args": argparse.Namespace(**megatron_args(**args)), "iteration": 10,
                    "checkpoint_version": 3.0}, folder / rank / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text(iteration)


def _rms(x, w, eps=1e-6):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x, theta=500000.0):  # x: [T, heads, hd], rotate-half RoPE at positions 0..T-1
    inv = 1.0 / theta ** (torch.arange(0, HD, 2).float() / HD)
    ang = torch.outer(torch.arange(x.shape[0]).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    return x * cos + torch.cat([-x[..., HD // 2:], x[..., :HD // 2]], -1) * sin


def megatron_reference(sd, tokens, qk_norm=False, untied=False, theta=500000.0, eps=1e-6):
    """Megatron's layer math, written from its layer spec: fused norms, grouped QKV, MeKi quirks."""
    rms, rope = (lambda x, w: _rms(x, w, eps)), (lambda x: _rope(x, theta))  # noqa: E731
    emb = sd["embedding.word_embeddings.weight"][tokens]
    x, T = emb, tokens.shape[0]
    for i in range(L):
        p = f"decoder.layers.{i}."
        g = (rms(x, sd[p + "self_attention.linear_qkv.layer_norm_weight"]) @ sd[p + "self_attention.linear_qkv.weight"].T)
        g = g.view(T, G, H // G + 2, HD)
        q, k, v = g[:, :, :H // G].reshape(T, H, HD), g[:, :, H // G], g[:, :, H // G + 1]
        if qk_norm:
            q, k = rms(q, sd[p + "self_attention.q_layernorm.weight"]), rms(k, sd[p + "self_attention.k_layernorm.weight"])
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)  # head h reads group h // (H/G)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(HD)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        attn = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, H * HD)
        a = x + attn @ sd[p + "self_attention.linear_proj.weight"].T
        gate, up = (rms(a, sd[p + "mlp.linear_fc1.layer_norm_weight"]) @ sd[p + "mlp.linear_fc1.weight"].T).chunk(2, -1)
        ffn = (F.silu(gate) * up) @ sd[p + "mlp.linear_fc2.weight"].T
        mp = p + "meki_module."
        s = sd[mp + "embeddings.weight"][tokens]
        gate, up = (rms(emb, sd[mp + "word_emb_projection.linear_fc1.layer_norm_weight"])
                    @ sd[mp + "word_emb_projection.linear_fc1.weight"].T).chunk(2, -1)
        u = (F.silu(gate) * up) @ sd[mp + "word_emb_projection.linear_fc2.weight"].T
        e = sd[mp + "alpha_scale"] * rms(s + sd[mp + "beta_scale"] * u, sd[mp + "mix_norm.weight"])
        vv = e + torch.sigmoid(a @ sd[mp + "gate_proj.weight"].T)  # the gate sees the raw residual A
        x = a + ffn + rms(vv @ sd[mp + "out_proj.weight"].T, sd[mp + "post_norm.weight"])
    head = sd["output_layer.weight"] if untied else sd["embedding.word_embeddings.weight"]
    return (rms(x, sd["decoder.final_layernorm.weight"]) @ head.T)[:, :V]


@pytest.mark.parametrize("qk_norm,untied,theta,eps,iteration", [
    (False, False, 500000.0, 1e-6, "10"), (True, True, 500000.0, 1e-6, "10"),
    (False, False, 10000.0, 1e-5, "release")])  # theta and eps read from args; Megatron's release folder
def test_megatron_import_matches_megatron_math(tmp_path, qk_norm, untied, theta, eps, iteration):
    sd = megatron_state(qk_norm=qk_norm, untied=untied)
    write_megatron(tmp_path, sd, iteration, qk_layernorm=qk_norm, untie_embeddings_and_output_weights=untied,
                   rotary_base=int(theta), norm_epsilon=eps)
    model = load_megatron(tmp_path, vocab_size=V).eval()
    assert model.cfg.variant == "megatron" and model.cfg.d_mem == M and model.cfg.vocab_size == V
    tokens = torch.tensor([5, 99, 0, 17, 42, 42, 63, 1])
    with torch.no_grad():
        ours = model(tokens[None])[0]
    assert (ours - megatron_reference(sd, tokens, qk_norm, untied, theta, eps)).abs().max().item() <= 1e-4


def test_megatron_bad_input_names_each_key(tmp_path):
    """Every problem in one error, in Megatron's own key names."""
    sd = megatron_state()
    sd["decoder.layers.0.meki_module.surprise.weight"] = torch.zeros(3)
    del sd["decoder.layers.1.mlp.linear_fc2.weight"], sd["decoder.final_layernorm.weight"]
    sd["decoder.layers.0.meki_module.out_proj.weight"] = torch.zeros(D, M + 1)
    write_megatron(tmp_path, sd)
    with pytest.raises(CheckpointError) as err:
        load_megatron(tmp_path, vocab_size=V)
    msg = str(err.value)
    assert "missing keys: decoder.final_layernorm.weight, decoder.layers.1.mlp.linear_fc2.weight;" in msg
    assert "unexpected keys: decoder.layers.0.meki_module.surprise.weight" in msg
    assert f"wrong shapes: decoder.layers.0.meki_module.out_proj.weight (64, 17) (expected ({D}, {M}))" in msg
    assert "model_optim_rng.pt: " in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="exceeds the checkpoint's padded vocabulary 128"):
        load_megatron(tmp_path, vocab_size=200)


def _without(*keys):
    def edit(sd):
        for k in keys:
            sd.pop(k)
    return edit


def _drop_layer(i):
    def edit(sd):
        for k in [k for k in sd if k.startswith(f"decoder.layers.{i}.")]:
            sd.pop(k)
    return edit


@pytest.mark.parametrize("edit,args,ranks,match", [
    (_drop_layer(1), {}, None, r"missing keys: decoder\.layers\.1\.\* \(the model has 2 layers"),
    (_drop_layer(0), {}, None, r"missing keys: decoder\.layers\.0\.\*"),
    (_without("decoder.layers.0.meki_module.gate_proj.weight"), {}, None,
     r"missing keys: decoder\.layers\.0\.meki_module\.gate_proj\.weight"),
    (_without("decoder.layers.0.meki_module.embeddings.weight"), {}, None,
     r"missing keys: decoder\.layers\.0\.meki_module\.embeddings\.weight"),
    (None, {"rotary_percent": 0.5}, None, r"rotary_percent=0\.5 \(RoPE on part of each head\)"),
    (None, {"rotary_interleaved": True, "apply_layernorm_1p": True}, None,
     r"apply_layernorm_1p=True .*; rotary_interleaved=True"),
    (None, {"normalization": "LayerNorm"}, None, "norms other than RMSNorm"),
    (None, {"swiglu": False}, None, "an FFN other than SwiGLU"),
    (None, {"tensor_model_parallel_size": 2}, None, "tensor_model_parallel_size=2"),
    (None, {}, ("mp_rank_00", "mp_rank_01"), r"model-parallel shards \(mp_rank_00, mp_rank_01\)"),
    (None, {}, ("mp_rank_00_000", "mp_rank_00_001"), "model-parallel shards"),
    (None, {"num_layers": "2"}, None, r"args\.num_layers='2' is not a positive integer"),
])
def test_megatron_refuses_what_it_cannot_reproduce(tmp_path, edit, args, ranks, match):
    """A truncated state, args under which Megatron computes other math, sharded runs: one clear error."""
    sd = megatron_state()
    if edit:
        edit(sd)
    write_megatron(tmp_path, sd, ranks=ranks or ("mp_rank_00",), **args)
    with pytest.raises(CheckpointError, match=match):
        load_megatron(tmp_path, vocab_size=V)


def test_megatron_tracker_naming_a_missing_iteration(tmp_path):
    write_megatron(tmp_path, megatron_state())
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("250")
    with pytest.raises(CheckpointError, match=r"names '250' but .*iter_0000250 does not exist \(found: iter_0000010\)"):
        load_megatron(tmp_path, vocab_size=V)


def dense_model():
    return init_weights(MekiModel(fake().replace(memory="none")), seed=3, std=0.1).eval()


def test_mekify_keeps_logits_and_lets_gradients_in():
    dense = dense_model()
    model = mekify(dense, d_mem=16)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(tokens), dense(tokens))
    new = {n: p for n, p in model.named_parameters() if ".memory." in n or ".fusion." in n}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(tokens).logsumexp(-1).mean().backward()
    assert all(new[n].grad.abs().sum() > 0 for n in new if n.endswith("post_norm.weight"))
    opt.step()
    opt.zero_grad()
    model(tokens).logsumexp(-1).mean().backward()  # after one step every new parameter learns
    dead = [n for n, p in new.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead


def test_own_format_round_trip(tmp_path):
    model = mekify(dense_model(), d_mem=16)
    info = save_checkpoint(model, tmp_path / "ck")
    loaded, info2 = load_checkpoint(tmp_path / "ck")
    assert info2.fingerprint == info.fingerprint
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FileExistsError):
        save_checkpoint(model, tmp_path / "ck")


def test_own_format_bad_input_names_keys_and_writes_nothing(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(dense_model(), tmp_path / "ck")
    state = load_file(str(tmp_path / "ck" / "model.safetensors"))
    state["layers.0.attn.wq.weight"] = state["layers.0.attn.wq.weight"][:-1]
    del state["norm.weight"]
    state["layers.9.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "ck")
    msg = str(err.value)
    assert "missing keys: norm.weight" in msg and "unexpected keys: layers.9.extra" in msg
    assert "layers.0.attn.wq.weight (63, 64) (expected (64, 64))" in msg
    cfg = (tmp_path / "ck" / "config.json")
    cfg.write_text(cfg.read_text().replace('"dim"', '"dimension"'))
    with pytest.raises(CheckpointError, match="unknown config key.*dimension"):
        load_checkpoint(tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
