"""The official Megatron MeKi training output (`--ckpt-format torch`) -> MekiModel (variant megatron).

Layout (MEKI.md): fused QKV grouped per KV head, gate-then-up fc1, pre-norms fused into the linears
(`layer_norm_weight`), a padded vocabulary, and Transformer Engine `_extra_state` entries to skip.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.checkpoint import CheckpointError, build_model
from pipeline.config import ModelConfig
from pipeline.model import MekiModel
from pipeline.safe_load import SafeLoadError, safe_torch_load
from contract.inputs import require_file

_MEKI = {  # meki_module suffix -> ours under layers.{i}.
    "embeddings.weight": "memory.table.weight",
    "word_emb_projection.linear_fc1.layer_norm_weight": "memory.dyn.norm.weight",
    "word_emb_projection.linear_fc2.weight": "memory.dyn.w_down.weight",
    "mix_norm.weight": "memory.mix_norm.weight",
    "alpha_scale": "memory.alpha",
    "beta_scale": "memory.beta",
    "gate_proj.weight": "fusion.gate_proj.weight",
    "out_proj.weight": "fusion.out_proj.weight",
    "post_norm.weight": "fusion.post_norm.weight",
}
_LAYER = {
    "self_attention.linear_qkv.layer_norm_weight": "attn_norm.weight",
    "self_attention.linear_proj.weight": "attn.wo.weight",
    "self_attention.q_layernorm.weight": "attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "attn.k_norm.weight",
    "mlp.linear_fc1.layer_norm_weight": "ffn_norm.weight",
    "mlp.linear_fc2.weight": "ffn.w_down.weight",
}


def find_model_file(path: Path) -> Path:
    """A checkpoint dir (reads latest_checkpointed_iteration.txt), an iter_* dir, or the .pt itself."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return require_file(path, "Megatron checkpoint file")
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    tracker = path / "latest_checkpointed_iteration.txt"
    if tracker.exists():
        text = tracker.read_text(errors="replace").strip()
        if not text.isdigit():
            raise CheckpointError(f"{tracker}: expected an iteration number, found {text[:40]!r}")
        path = path / f"iter_{int(text):07d}"
    candidate = path / "mp_rank_00" / "model_optim_rng.pt"
    if not candidate.exists():
        raise CheckpointError(f"{path}: no mp_rank_00/model_optim_rng.pt (only tensor-parallel size 1 is read)")
    return candidate


def read_megatron(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model state dict and the training args of a torch-format checkpoint (no code executed)."""
    file = find_model_file(path)
    try:  # weights_only + an allow-list: numpy RNG state and Megatron enums in args, nothing else
        blob = safe_torch_load(file)
    except SafeLoadError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(blob, dict) or "model" not in blob:
        found = ", ".join(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{file}: no 'model' entry (found {found}); is this a Megatron model_optim_rng.pt?")
    bad = sorted(k for k, v in blob["model"].items() if not isinstance(v, torch.Tensor) and not k.endswith("_extra_state"))
    if bad:
        raise CheckpointError(f"{file}: model entries that are not tensors: {', '.join(bad[:5])}")
    args = vars(blob["args"]) if isinstance(blob.get("args"), argparse.Namespace) else dict(blob.get("args") or {})
    return dict(blob["model"]), args


def config_from_megatron(state: Mapping[str, torch.Tensor], args: Mapping[str, Any], vocab_size: int) -> ModelConfig:
    emb = state["embedding.word_embeddings.weight"]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("decoder.layers."))
    heads = args.get("num_attention_heads")
    if heads is None:
        raise CheckpointError("checkpoint args lack num_attention_heads; cannot split the fused QKV")
    kv_heads = args.get("num_query_groups") if args.get("group_query_attention") else heads
    p = "decoder.layers.0."
    has_static = p + "meki_module.embeddings.weight" in state
    has_dynamic = p + "meki_module.word_emb_projection.linear_fc2.weight" in state
    memory = {(True, True): "both", (True, False): "static", (False, True): "dynamic"}.get((has_static, has_dynamic), "none")
    d_mem = state[p + "meki_module.gate_proj.weight"].shape[0] if memory != "none" else 128
    if vocab_size > emb.shape[0]:
        raise CheckpointError(f"vocab_size {vocab_size} exceeds the checkpoint's padded vocabulary {emb.shape[0]}")
    return ModelConfig(
        vocab_size=vocab_size, num_layers=layers, dim=emb.shape[1], ffn_dim=state[p + "mlp.linear_fc2.weight"].shape[1],
        num_heads=heads, num_kv_heads=kv_heads, head_dim=args.get("kv_channels") or emb.shape[1] // heads,
        rope_theta=float(args.get("rotary_base", 500_000)), norm_eps=float(args.get("norm_epsilon", 1e-6)),
        qk_norm=bool(args.get("qk_layernorm")), tie_embeddings=not args.get("untie_embeddings_and_output_weights"),
        max_seq_len=int(args.get("seq_length", 4096)), d_mem=d_mem, memory=memory, variant="megatron",
        name="megatron-meki")


def convert_state(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for name, tensor in state.items():
        if name.endswith("_extra_state"):
            continue
        if name == "embedding.word_embeddings.weight":
            out["embed.weight"] = tensor[:cfg.vocab_size]
        elif name == "decoder.final_layernorm.weight":
            out["norm.weight"] = tensor
        elif name == "output_layer.weight":
            out["lm_head.weight"] = tensor[:cfg.vocab_size]
        elif name.startswith("decoder.layers."):
            _, _, idx, rest = name.split(".", 3)
            if not _convert_layer(out, f"layers.{idx}.", rest, tensor, cfg):
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"unexpected keys: {', '.join(sorted(unknown))}")
    return out


def _convert_layer(out: dict, prefix: str, rest: str, t: torch.Tensor, cfg: ModelConfig) -> bool:
    if rest in _LAYER:
        out[prefix + _LAYER[rest]] = t
    elif rest == "self_attention.linear_qkv.weight":
        # rows: for each KV group, its query heads, then its key head, then its value head
        per_group = cfg.num_heads // cfg.num_kv_heads
        g = t.reshape(cfg.num_kv_heads, per_group + 2, cfg.head_dim, cfg.dim)
        out[prefix + "attn.wq.weight"] = g[:, :per_group].reshape(-1, cfg.dim)
        out[prefix + "attn.wk.weight"] = g[:, per_group].reshape(-1, cfg.dim)
        out[prefix + "attn.wv.weight"] = g[:, per_group + 1].reshape(-1, cfg.dim)
    elif rest == "mlp.linear_fc1.weight":
        out[prefix + "ffn.w_gate.weight"], out[prefix + "ffn.w_up.weight"] = t.chunk(2, dim=0)
    elif rest == "meki_module.word_emb_projection.linear_fc1.weight":
        out[prefix + "memory.dyn.w_gate.weight"], out[prefix + "memory.dyn.w_up.weight"] = t.chunk(2, dim=0)
    elif rest.startswith("meki_module.") and rest[len("meki_module."):] in _MEKI:
        key = rest[len("meki_module."):]
        out[prefix + _MEKI[key]] = t[:cfg.vocab_size] if key == "embeddings.weight" else t.reshape(())\
            if key.endswith("_scale") else t
    else:
        return False
    return True


def load_megatron(path: Path, vocab_size: int, dtype: torch.dtype = torch.float32) -> MekiModel:
    """Import an official Megatron MeKi checkpoint; vocab_size is the tokenizer's (unpadded) size."""
    state, args = read_megatron(path)
    if "embedding.word_embeddings.weight" not in state:
        raise CheckpointError(f"{path}: missing keys: embedding.word_embeddings.weight")
    cfg = config_from_megatron(state, args, vocab_size)
    ours = {k: v.to(dtype) for k, v in convert_state(state, cfg).items()}
    return build_model(cfg, ours, str(path)).to(dtype)
