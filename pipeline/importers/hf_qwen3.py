"""Hugging Face Qwen3 checkpoints (config.json + *.safetensors, sharded or not) -> dense MekiModel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from contract.inputs import read_text, require_dir
from pipeline.checkpoint import CheckpointError, build_model
from pipeline.config import ModelConfig
from pipeline.model import MekiModel

_LAYER_NAMES = {  # HF suffix after model.layers.{i}. -> ours after layers.{i}.
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn.w_gate.weight",
    "mlp.up_proj.weight": "ffn.w_up.weight",
    "mlp.down_proj.weight": "ffn.w_down.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "lm_head.weight"}


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Map a Qwen3 config.json to ours; refuse features this backbone does not implement."""
    if hf.get("model_type") not in ("qwen3", None):
        raise CheckpointError(f"config.json model_type={hf.get('model_type')!r} is not qwen3")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    unsupported = []
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        unsupported.append(f"rope type {rope.get('rope_type', rope.get('type'))!r}")
    if hf.get("attention_bias"):
        unsupported.append("attention_bias=true")
    if hf.get("use_sliding_window"):
        unsupported.append("use_sliding_window=true")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={hf['hidden_act']!r}")
    if unsupported:
        raise CheckpointError("unsupported Qwen3 config: " + ", ".join(unsupported))
    ints = ("vocab_size", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    wrong = [f"{k}={hf[k]!r}" for k in ints + ("num_key_value_heads", "head_dim", "max_position_embeddings")
             if k in hf and hf[k] is not None and (not isinstance(hf[k], int) or isinstance(hf[k], bool))]
    if wrong:
        raise CheckpointError(f"config.json values of the wrong type (expected integers): {', '.join(wrong)}")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"], dim=hf["hidden_size"],
        ffn_dim=hf["intermediate_size"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6), qk_norm=True, tie_embeddings=bool(hf.get("tie_word_embeddings")),
        max_seq_len=min(hf.get("max_position_embeddings", 4096), 4096), memory="none", name="hf-qwen3")


def _shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{folder}: no *.safetensors files")
    return shards


def rename_hf(name: str) -> str | None:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"layers.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    return None


def load_hf_qwen3(folder: Path, dtype: torch.dtype = torch.float32) -> MekiModel:
    """A dense (memory='none') MekiModel holding the HF weights."""
    folder = require_dir(Path(folder), "Hugging Face model folder")
    try:
        hf = json.loads(read_text(folder / "config.json", "config.json"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object")
    try:
        cfg = config_from_hf(hf)
    except KeyError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: lacks {exc.args[0]!r}; is this a Qwen3 config?") from None
    state, unknown = {}, []
    for shard in _shards(folder):
        with safe_open(str(shard), framework="pt") as fh:
            for name in fh.keys():
                ours = rename_hf(name)
                if ours is None:
                    unknown.append(name)
                elif not (ours == "lm_head.weight" and cfg.tie_embeddings):
                    state[ours] = fh.get_tensor(name).to(dtype)
    if unknown:
        raise CheckpointError(f"{folder}: unexpected keys: {', '.join(sorted(unknown))}")
    return build_model(cfg, state, str(folder)).to(dtype)
