"""The official Megatron MeKi training output (`--ckpt-format torch`) -> MekiModel (variant megatron).

Layout (MEKI.md): fused QKV grouped per KV head, gate-then-up fc1, pre-norms fused into the linears
(`layer_norm_weight`), a padded vocabulary, and Transformer Engine `_extra_state` entries to skip.
The architecture comes from the saved `args` (the state's shapes where an arg is absent); the state is
checked against it in Megatron's own key names before anything is converted, and args that would make
Megatron compute something this model does not (partial RoPE, 1p norms, ...) are refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from pipeline.checkpoint import FLOAT_DTYPES, WRONG_DTYPES, CheckpointError, build_model
from pipeline.config import ConfigError, ModelConfig
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


_SCALARS = ("meki_module.alpha_scale", "meki_module.beta_scale")


def _unset(v: Any) -> bool:
    return v is None or v is False or v == 0


# Megatron args under which Megatron computes something this model does not: arg -> (is it fine?, meaning)
_ARGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tensor_model_parallel_size": (lambda v: v in (None, 1), "tensor-parallel shards"),
    "pipeline_model_parallel_size": (lambda v: v in (None, 1), "pipeline-parallel shards"),
    "normalization": (lambda v: v in (None, "RMSNorm"), "norms other than RMSNorm"),
    "apply_layernorm_1p": (_unset, "zero-centred norm weights (scale 1 + w)"),
    "swiglu": (lambda v: v is not False, "an FFN other than SwiGLU"),
    "position_embedding_type": (lambda v: v in (None, "rope"), "positions other than RoPE"),
    "rotary_percent": (lambda v: v in (None, 1, 1.0), "RoPE on part of each head"),
    "rotary_interleaved": (_unset, "interleaved RoPE pairs"),
    "use_rope_scaling": (_unset, "scaled RoPE"),
    "apply_residual_connection_post_layernorm": (_unset, "the residual taken after the norm"),
    "add_bias_linear": (_unset, "linear biases"),
    "add_qkv_bias": (_unset, "QKV biases"),
    "num_experts": (lambda v: v in (None, 0, 1), "mixture of experts"),
    "multi_latent_attention": (_unset, "multi-latent attention"),
    "window_size": (lambda v: v is None, "sliding-window attention"),
    "softmax_scale": (lambda v: v is None, "a non-default attention scale"),
    "mtp_num_layers": (lambda v: v in (None, 0), "multi-token prediction layers"),
}


def find_model_file(path: Path) -> Path:
    """A checkpoint dir (reads latest_checkpointed_iteration.txt: an iteration or `release`), an iter_* or
    release dir, or the .pt itself. Model-parallel shards (mp_rank_01, mp_rank_00_000, ...) are refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return require_file(path, "Megatron checkpoint file")
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    tracker = path / "latest_checkpointed_iteration.txt"
    if tracker.exists():
        text = tracker.read_text(errors="replace").strip()
        if text != "release" and not text.isdigit():
            raise CheckpointError(f"{tracker}: expected an iteration number or 'release', found {text[:40]!r}")
        name = text if text == "release" else f"iter_{int(text):07d}"
        if not (path / name).is_dir():
            found = sorted(p.name for p in path.iterdir() if p.is_dir() and (p.name.startswith("iter_")
                                                                             or p.name == "release"))
            raise CheckpointError(f"{tracker} names {text!r} but {path / name} does not exist "
                                  f"(found: {', '.join(found[-4:]) or 'no iteration folders'})")
        path = path / name
    shards = sorted(p.name for p in path.glob("mp_rank_*") if p.is_dir())
    if any(s != "mp_rank_00" for s in shards):
        listed = ", ".join(shards[:3]) + (", ..." if len(shards) > 3 else "")
        raise CheckpointError(f"{path}: model-parallel shards ({listed}): only an unsharded checkpoint (tensor- "
                              "and pipeline-parallel size 1) is read; merge the shards into one first")
    candidate = path / "mp_rank_00" / "model_optim_rng.pt"
    if not candidate.exists():
        raise CheckpointError(f"{path}: no mp_rank_00/model_optim_rng.pt (only tensor-parallel size 1 is read)")
    return candidate


def read_megatron(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """The model state dict, the training args and the file of a torch-format checkpoint (no code executed)."""
    file = find_model_file(path)
    try:  # weights_only + an allow-list: numpy RNG state and Megatron enums in args, nothing else
        blob = safe_torch_load(file)
    except SafeLoadError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        found = ", ".join(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{file}: no 'model' entry (found {found}); is this a Megatron model_optim_rng.pt?")
    bad = sorted(str(k) for k, v in blob["model"].items()
                 if not isinstance(v, torch.Tensor) and not str(k).endswith("_extra_state"))
    if bad:
        raise CheckpointError(f"{file}: model entries that are not tensors: {', '.join(bad[:5])}")
    args = vars(blob["args"]) if isinstance(blob.get("args"), argparse.Namespace) else dict(blob.get("args") or {})
    return dict(blob["model"]), args, file


def check_args(args: Mapping[str, Any], file: Path) -> None:
    """Refuse, naming each, the saved args under which Megatron's layers compute other math than ours."""
    bad = []
    for key, (fine, meaning) in _ARGS.items():
        value = args.get(key)
        try:
            ok = bool(fine(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(f"{key}={value!r} ({meaning})")
    if bad:
        raise CheckpointError(f"{file}: trained with Megatron settings this importer does not reproduce: "
                              f"{'; '.join(bad)}")


def _layer_ids(state: Mapping[str, torch.Tensor]) -> list[int]:
    parts = (k.split(".") for k in state if k.startswith("decoder.layers."))
    return sorted({int(p[2]) for p in parts if len(p) > 3 and p[2].isdigit()})


def _first(state: Mapping[str, torch.Tensor], suffix: str) -> torch.Tensor | None:
    return next((t for k, t in state.items() if k.startswith("decoder.layers.") and k.endswith("." + suffix)), None)


def _int_arg(args: Mapping[str, Any], key: str, fallback: int | None, file: Path) -> int | None:
    value = args.get(key)
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{file}: args.{key}={value!r} is not a positive integer")
    return value


def config_from_megatron(state: Mapping[str, torch.Tensor], args: Mapping[str, Any], vocab_size: int,
                         file: Path) -> ModelConfig:
    """The architecture from the saved args (the state's shapes where an arg is absent)."""
    emb = state.get("embedding.word_embeddings.weight")
    if emb is None or emb.dim() != 2:
        raise CheckpointError(f"{file}: missing keys: embedding.word_embeddings.weight")
    if vocab_size > emb.shape[0]:
        raise CheckpointError(f"{file}: vocab_size {vocab_size} exceeds the checkpoint's padded vocabulary "
                              f"{emb.shape[0]}")
    ids = _layer_ids(state)
    layers = _int_arg(args, "num_layers", ids[-1] + 1 if ids else None, file)
    heads = _int_arg(args, "num_attention_heads", None, file)
    if heads is None:
        raise CheckpointError("checkpoint args lack num_attention_heads; cannot split the fused QKV")
    if layers is None:
        raise CheckpointError(f"{file}: no decoder layers (no decoder.layers.* keys and no args.num_layers)")
    dim = _int_arg(args, "hidden_size", emb.shape[1], file)
    fc2 = _first(state, "mlp.linear_fc2.weight")
    ffn = _int_arg(args, "ffn_hidden_size", fc2.shape[-1] if fc2 is not None else None, file)
    if ffn is None:
        raise CheckpointError(f"{file}: no args.ffn_hidden_size and no mlp.linear_fc2.weight to read it from")
    kv_heads = _int_arg(args, "num_query_groups", heads, file) if args.get("group_query_attention") else heads
    static = any(k.endswith(".meki_module.embeddings.weight") for k in state)
    dynamic = any(".meki_module.word_emb_projection." in k for k in state)
    memory = {(True, True): "both", (True, False): "static", (False, True): "dynamic"}.get((static, dynamic), "none")
    widths = ((_first(state, "meki_module." + key), axis) for key, axis in (
        ("gate_proj.weight", 0), ("mix_norm.weight", 0), ("embeddings.weight", 1),
        ("word_emb_projection.linear_fc2.weight", 0)))  # the first present (the others are checked later)
    d_mem = next((t.shape[axis] for t, axis in widths if t is not None and t.dim() > axis), 128)
    try:
        return ModelConfig(
            vocab_size=vocab_size, num_layers=layers, dim=dim, ffn_dim=ffn, num_heads=heads, num_kv_heads=kv_heads,
            head_dim=_int_arg(args, "kv_channels", dim // heads, file),
            rope_theta=float(args.get("rotary_base") or 500_000), norm_eps=float(args.get("norm_epsilon") or 1e-6),
            qk_norm=bool(args.get("qk_layernorm")), tie_embeddings=not args.get("untie_embeddings_and_output_weights"),
            max_seq_len=int(args.get("seq_length") or 4096), d_mem=d_mem, memory=memory, variant="megatron",
            name="megatron-meki")
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: args and weights give no valid model: {exc}") from None


def megatron_shapes(cfg: ModelConfig, padded_vocab: int, table_rows: int) -> dict[str, tuple[int, ...]]:
    """Every key the checkpoint must hold for `cfg`, Megatron's names, with its shape."""
    d, hd, m, f = cfg.dim, cfg.head_dim, cfg.d_mem, cfg.ffn_dim
    want = {"embedding.word_embeddings.weight": (padded_vocab, d), "decoder.final_layernorm.weight": (d,)}
    if not cfg.tie_embeddings:
        want["output_layer.weight"] = (padded_vocab, d)
    for i in range(cfg.num_layers):
        p = f"decoder.layers.{i}."
        want |= {p + "self_attention.linear_qkv.layer_norm_weight": (d,),
                 p + "self_attention.linear_qkv.weight": ((cfg.num_heads + 2 * cfg.num_kv_heads) * hd, d),
                 p + "self_attention.linear_proj.weight": (d, cfg.num_heads * hd),
                 p + "mlp.linear_fc1.layer_norm_weight": (d,), p + "mlp.linear_fc1.weight": (2 * f, d),
                 p + "mlp.linear_fc2.weight": (d, f)}
        if cfg.qk_norm:
            want |= {p + "self_attention.q_layernorm.weight": (hd,), p + "self_attention.k_layernorm.weight": (hd,)}
        mp = p + "meki_module."
        if cfg.has_static:
            want[mp + "embeddings.weight"] = (table_rows, m)
        if cfg.has_dynamic:
            want |= {mp + "word_emb_projection.linear_fc1.layer_norm_weight": (d,),
                     mp + "word_emb_projection.linear_fc1.weight": (2 * cfg.dyn_hidden, d),
                     mp + "word_emb_projection.linear_fc2.weight": (m, cfg.dyn_hidden)}
        if cfg.has_meki:
            want |= {mp + "gate_proj.weight": (m, d), mp + "out_proj.weight": (d, m), mp + "mix_norm.weight": (m,),
                     mp + "post_norm.weight": (d,), mp + "alpha_scale": (1,), mp + "beta_scale": (1,)}
    return want


def _listed(keys: list[str], most: int = 8) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def check_megatron_state(state: Mapping[str, torch.Tensor], cfg: ModelConfig, file: Path) -> None:
    """Raise CheckpointError naming, in Megatron's key names, every missing, unexpected, mis-shaped or
    non-float entry (a whole missing layer as decoder.layers.N.*)."""
    emb = state["embedding.word_embeddings.weight"]
    table = _first(state, "meki_module.embeddings.weight")
    rows = table.shape[0] if table is not None and table.dim() == 2 else emb.shape[0]
    want = megatron_shapes(cfg, emb.shape[0], rows)
    have = {k: t for k, t in state.items() if not k.endswith("_extra_state")}
    missing = set(want) - set(have)
    whole = [i for i in range(cfg.num_layers) if not any(k.startswith(f"decoder.layers.{i}.") for k in have)]
    for i in whole:  # a layer with none of its keys is named once
        missing = {k for k in missing if not k.startswith(f"decoder.layers.{i}.")} | {f"decoder.layers.{i}.*"}
    problems = [f"missing keys: {_listed(sorted(missing))}"] if missing else []
    if whole:
        problems[-1] += f" (the model has {cfg.num_layers} layers: args.num_layers)"
    unexpected = sorted(set(have) - set(want))
    problems += [f"unexpected keys: {_listed(unexpected)}"] if unexpected else []

    def shape_ok(k: str) -> bool:
        got = tuple(have[k].shape)
        return got == want[k] or (k.endswith(_SCALARS) and have[k].numel() == 1)
    wrong = sorted(f"{k} {tuple(have[k].shape)} (expected {want[k]})" for k in set(want) & set(have) if not shape_ok(k))
    problems += [f"wrong shapes: {_listed(wrong, 4)}"] if wrong else []
    bad_dtype = sorted(f"{k} {str(have[k].dtype).removeprefix('torch.')}" for k in set(want) & set(have)
                       if have[k].dtype not in FLOAT_DTYPES)
    problems += [f"{WRONG_DTYPES}: {_listed(bad_dtype, 4)}"] if bad_dtype else []
    if rows < cfg.vocab_size:
        problems.append(f"the memory tables have {rows} rows, fewer than vocab_size {cfg.vocab_size}")
    if problems:
        raise CheckpointError(f"{file}: " + "; ".join(problems))


def convert_state(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Megatron's (checked) state in our names: QKV and fc1 split, vocabulary padding trimmed."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("_extra_state"):
            continue
        if name == "embedding.word_embeddings.weight":
            out["embed.weight"] = tensor[:cfg.vocab_size]
        elif name == "decoder.final_layernorm.weight":
            out["norm.weight"] = tensor
        elif name == "output_layer.weight":
            out["lm_head.weight"] = tensor[:cfg.vocab_size]
        else:
            _, _, idx, rest = name.split(".", 3)
            _convert_layer(out, f"layers.{idx}.", rest, tensor, cfg)
    return out


def _convert_layer(out: dict, prefix: str, rest: str, t: torch.Tensor, cfg: ModelConfig) -> None:
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
    else:
        key = rest[len("meki_module."):]
        out[prefix + _MEKI[key]] = t[:cfg.vocab_size] if key == "embeddings.weight" else t.reshape(())\
            if key.endswith("_scale") else t


def load_megatron(path: Path, vocab_size: int, dtype: torch.dtype = torch.float32) -> MekiModel:
    """Import an official Megatron MeKi checkpoint; vocab_size is the tokenizer's (unpadded) size."""
    state, args, file = read_megatron(path)
    check_args(args, file)
    cfg = config_from_megatron(state, args, vocab_size, file)
    check_megatron_state(state, cfg, file)
    ours = {k: v.to(dtype) for k, v in convert_state(state, cfg).items()}
    return build_model(cfg, ours, str(file)).to(dtype)
