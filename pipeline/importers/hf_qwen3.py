"""Hugging Face Qwen3 checkpoints (config.json + *.safetensors, sharded or not) -> dense MekiModel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from contract.inputs import read_text, require_dir, require_file
from pipeline.checkpoint import FLOAT_DTYPES, CheckpointError, build_model, check_state_dict
from pipeline.config import ConfigError, ModelConfig
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


HF_DEFAULT_ROPE_THETA = 10_000.0  # transformers' Qwen3Config when a config names no theta at all


def _rope_settings(hf: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """transformers 5's rope_parameters, or the older rope_scaling + rope_theta: each one present is read (a
    scaling added beside rope_parameters, as the Qwen3 model cards suggest, is applied by transformers too)."""
    rope, problems = {}, []
    for key in ("rope_scaling", "rope_parameters"):
        value = hf.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{key}={value!r} (expected an object)")
            continue
        kind = value.get("rope_type", value.get("type", "default"))
        if kind != "default":
            problems.append(f"{key} rope type {kind!r}")
        rope |= value
    return rope, problems


def _number(hf: dict[str, Any], key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CheckpointError(f"config.json {key}={value!r}: expected a positive number")
    return float(value)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Map a Qwen3 config.json to ours as transformers reads it; refuse, by their config.json names,
    features this backbone does not implement and values of the wrong type."""
    if hf.get("model_type") not in ("qwen3", None):
        raise CheckpointError(f"config.json model_type={hf.get('model_type')!r} is not qwen3")
    rope, unsupported = _rope_settings(hf)
    wrong = [f"{k}={hf[k]!r}" for k in ("tie_word_embeddings", "attention_bias", "use_sliding_window")
             if k in hf and hf[k] is not None and not isinstance(hf[k], bool)]
    if hf.get("attention_bias"):
        unsupported.append("attention_bias=true")
    if hf.get("use_sliding_window"):
        unsupported.append("use_sliding_window=true")
    layer_types = hf.get("layer_types") or []
    if not isinstance(layer_types, list) or any(t != "full_attention" for t in layer_types):
        unsupported.append(f"layer_types other than full_attention ({str(layer_types)[:80]})")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act={hf['hidden_act']!r}")
    if unsupported:
        raise CheckpointError("unsupported Qwen3 config: " + ", ".join(unsupported))
    ints = ("vocab_size", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    nullable = ("head_dim",)  # null: hidden_size / heads, as transformers
    wrong += [f"{k}={hf[k]!r}" for k in ints + nullable + ("num_key_value_heads", "max_position_embeddings")
              if k in hf and not (hf[k] is None and k in nullable)
              and (not isinstance(hf[k], int) or isinstance(hf[k], bool))]
    if wrong:
        raise CheckpointError(f"config.json values of the wrong type: {', '.join(wrong)} (integers and booleans "
                              "expected)")
    heads = hf["num_attention_heads"]
    theta = rope.get("rope_theta", hf.get("rope_theta", HF_DEFAULT_ROPE_THETA))
    return ModelConfig(
        vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"], dim=hf["hidden_size"],
        ffn_dim=hf["intermediate_size"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=_number(hf, "rope_theta", theta), norm_eps=_number(hf, "rms_norm_eps", hf.get("rms_norm_eps", 1e-6)),
        qk_norm=True, tie_embeddings=bool(hf.get("tie_word_embeddings")),
        max_seq_len=min(hf.get("max_position_embeddings", 4096), 4096), memory="none", name="hf-qwen3")


def _shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(read_text(index, "safetensors index"))["weight_map"]
            names = set(weight_map.values())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:80]}"
            raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a weight_map of tensor "
                                  f"name -> shard file; {why})") from None
        bad = sorted(str(n) for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", ".."))
        if bad:
            raise CheckpointError(f"{index}: shard names that are not file names in this folder: {', '.join(bad[:5])}")
        return [require_file(folder / n, "safetensors shard") for n in sorted(names)]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{folder}: no *.safetensors files")
    return [require_file(s, "safetensors file") for s in shards]


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
    except (CheckpointError, ConfigError) as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    state, unknown = {}, []
    for shard in _shards(folder):
        try:
            with safe_open(str(shard), framework="pt") as fh:
                for name in fh.keys():
                    ours = rename_hf(name)
                    if ours is None:
                        unknown.append(name)
                    elif not (ours == "lm_head.weight" and cfg.tie_embeddings):  # tied: transformers ignores it
                        t = fh.get_tensor(name)  # cast as read (one model's worth in memory), floats only
                        state[ours] = t.to(dtype) if t.dtype in FLOAT_DTYPES else t
        except SafetensorError as exc:
            raise CheckpointError(f"{shard}: not a readable safetensors file ({exc})") from None
    check_state_dict(cfg, {k: tuple(v.shape) for k, v in state.items()}, str(folder),
                     {k: v.dtype for k, v in state.items()}, display=hf_name, unknown=unknown)
    return build_model(cfg, state, str(folder)).to(dtype)


def hf_name(ours: str) -> str:
    """Our state-dict name in the Hugging Face checkpoint's terms (rename_hf's inverse)."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    if ours in top:
        return top[ours]
    parts = ours.split(".", 2)
    layer = {v: k for k, v in _LAYER_NAMES.items()}
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in layer:
        return f"model.layers.{parts[1]}.{layer[parts[2]]}"
    return ours
