"""This project's checkpoint format: a folder with config.json and model.safetensors.

A folded (inference-form) checkpoint also holds the tables: tables.safetensors (`layers.{i}.table`,
[V, m] each) or a memory pack; `checkpoint.json` names them and the fingerprint of the train-form
model they came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from safetensors.torch import save_file

from contract.inputs import InputError, read_text
from pipeline.config import ConfigError, ModelConfig
from contract.atomic import atomic_dir
from pipeline.model import MekiModel, rope_tables
from pipeline.tensor_io import DictSource, SafetensorsReader, TensorSource, fingerprint

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # every model tensor is a float
WRONG_DTYPES = "wrong dtypes (expected float32, float16 or bfloat16)"  # how every importer words the finding

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that does not match its config: every offending key is named."""


@dataclass
class CheckpointInfo:
    fingerprint: str  # of the train-form model (folded checkpoints keep their source's)
    tables: str | None  # file holding the folded tables, relative to the folder
    source: str  # where the weights came from (hf, megatron, mekify, random, ...)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = MekiModel(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_state_dict(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]], origin: str,
                     dtypes: Mapping[str, torch.dtype] | None = None, *, display: Callable[[str], str] = str,
                     unknown: Sequence[str] = ()) -> None:
    """Raise CheckpointError naming every missing, unexpected, mis-shaped or non-float key. An importer
    passes display (our key -> its checkpoint's name for it) and unknown (its names that map to none)."""
    want = expected_shapes(cfg)
    missing = sorted(display(k) for k in set(want) - set(shapes))
    unexpected = sorted([*unknown, *(display(k) for k in set(shapes) - set(want))])
    wrong = sorted(f"{display(k)} {tuple(shapes[k])} (expected {want[k]})" for k in set(want) & set(shapes)
                   if tuple(shapes[k]) != want[k])
    # an int8 norm weight (say) would be read as garbage floats; quantised weights are not a checkpoint
    bad_dtype = sorted(f"{display(k)} {str(dt).removeprefix('torch.')}" for k, dt in (dtypes or {}).items()
                       if k in want and dt not in FLOAT_DTYPES)
    problems = [f"missing keys: {', '.join(missing)}"] if missing else []
    problems += [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []
    problems += [f"wrong shapes: {', '.join(wrong)}"] if wrong else []
    problems += [f"{WRONG_DTYPES}: {', '.join(bad_dtype)}"] if bad_dtype else []
    if problems:
        raise CheckpointError(f"{origin}: " + "; ".join(problems))


def source_fingerprint(cfg: ModelConfig, source: TensorSource) -> str:
    """xxh3-128 of the config (its informational name left out) and every tensor of `source`."""
    return fingerprint(json.dumps(cfg.replace(name="").to_dict(), sort_keys=True), source)


def model_fingerprint(model: MekiModel) -> str:
    return source_fingerprint(model.cfg, DictSource(model.state_dict()))


def check_fingerprint(folder: Path, cfg: ModelConfig, info: CheckpointInfo, reader: SafetensorsReader) -> None:
    """A train-form checkpoint's claimed fingerprint must be the hash of its own config and weights."""
    actual = source_fingerprint(cfg, reader)
    if actual != info.fingerprint:
        raise CheckpointError(f"{folder}: checkpoint.json claims fingerprint {info.fingerprint} but config.json + "
                              f"model.safetensors hash to {actual} (weights replaced or edited?); re-save the "
                              "model with `meki import`/`meki init`, or restore the original files")


def build_model(cfg: ModelConfig, state: Mapping[str, torch.Tensor], origin: str) -> MekiModel:
    """The model over `state`'s tensors, no second copy: built on the meta device, the tensors assigned
    (cast to the model's dtype first where they differ: the same values load_state_dict's copy gives)."""
    check_state_dict(cfg, {k: tuple(v.shape) for k, v in state.items()}, origin,
                     {k: v.dtype for k, v in state.items()})
    with torch.device("meta"):
        model = MekiModel(cfg)
    want = model.state_dict()
    model.load_state_dict({k: v.detach().to(want[k].dtype).contiguous() for k, v in state.items()},
                          strict=True, assign=True)
    return materialize_buffers(model)


def materialize_buffers(model: MekiModel) -> MekiModel:
    """Compute the non-persistent buffers (RoPE tables) a meta-built model lacks; no meta tensor may remain."""
    model.rope_cos, model.rope_sin = rope_tables(model.cfg, model.cfg.max_seq_len)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"tensors never loaded: {', '.join(left)}")
    return model


def read_config(folder: Path) -> tuple[ModelConfig, CheckpointInfo]:
    """A checkpoint folder's config and info, no weights read."""
    folder = Path(folder)
    info = read_info(folder)
    try:
        return ModelConfig.load(folder / "config.json"), info
    except ConfigError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from exc


def save_checkpoint(model: MekiModel, out: Path, source: str = "meki", overwrite: bool = False,
                    fp: str | None = None) -> CheckpointInfo:
    """Write config.json, model.safetensors and checkpoint.json atomically."""
    info = CheckpointInfo(fingerprint=fp or model_fingerprint(model), tables=None, source=source)
    with atomic_dir(Path(out), overwrite) as tmp:
        model.cfg.save(tmp / "config.json")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"fingerprint": info.fingerprint})
        write_info(tmp, info)
    return info


def write_info(folder: Path, info: CheckpointInfo) -> None:
    data = {"format": "meki-checkpoint", "version": FORMAT_VERSION, **info.__dict__}
    (folder / "checkpoint.json").write_text(json.dumps(data, indent=2) + "\n")


def read_info(folder: Path) -> CheckpointInfo:
    folder = Path(folder)
    path = folder / "checkpoint.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (expected a directory with checkpoint.json)")
    if not path.exists():
        raise CheckpointError(f"{folder}: no checkpoint.json (not a meki checkpoint folder)")
    try:
        data = json.loads(read_text(path, "checkpoint.json"))
    except (InputError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != "meki-checkpoint" or data.get("version") != FORMAT_VERSION:
        got = (data.get("format"), data.get("version")) if isinstance(data, dict) else (type(data).__name__, None)
        raise CheckpointError(f"{path}: format {got[0]!r} version {got[1]!r} is not meki-checkpoint v{FORMAT_VERSION}")
    fp, tables, source = data.get("fingerprint"), data.get("tables"), data.get("source", "unknown")
    if not isinstance(fp, str) or len(fp) != 32 or any(c not in "0123456789abcdef" for c in fp):
        raise CheckpointError(f"{path}: missing or malformed 'fingerprint' (32 hex digits expected, got {fp!r}); "
                              "the folder was not written by meki or was edited")
    if tables is not None and (not isinstance(tables, str) or "/" in tables or tables.startswith(".")):
        raise CheckpointError(f"{path}: 'tables' must be a file name in the folder, got {tables!r}")
    if not isinstance(source, str):
        raise CheckpointError(f"{path}: 'source' must be a string, got {source!r}")
    return CheckpointInfo(fingerprint=fp, tables=tables, source=source)


def load_checkpoint(folder: Path, verify: bool = True, prepare: Callable[[nn.Module], nn.Module | None] | None = None
                    ) -> tuple[MekiModel, CheckpointInfo]:
    """Load one of our checkpoint folders (train or folded form) into a MekiModel (tables stay on disk).

    verify: recompute a train-form checkpoint's fingerprint and refuse one that does not match.
    The model is built on the meta device and each tensor read (pread, no mmap) and assigned, one
    decoder layer at a time: peak memory is the model plus one tensor. prepare(module), if given,
    runs on each layer once it is loaded and then on the whole model (e.g. quantise in place, so the
    full-precision model never exists at once); a module it returns for a layer replaces the layer
    (e.g. the export's fused form, pipeline/export/eager_quant.py)."""
    cfg, info = read_config(folder)
    path = Path(folder) / "model.safetensors"
    with SafetensorsReader(path) as reader:
        names = reader.names()
        check_state_dict(cfg, {n: reader.shape(n) for n in names}, str(path), {n: reader.dtype(n) for n in names})
        if verify and not cfg.folded:
            check_fingerprint(Path(folder), cfg, info, reader)
        with torch.device("meta"):
            model = MekiModel(cfg)
        dtypes = {k: v.dtype for k, v in model.state_dict().items()}
        read = lambda n: reader.get(n).to(dtypes[n])  # noqa: E731  (same values as load_state_dict's copy)
        for i, layer in enumerate(model.layers):
            prefix = f"layers.{i}."
            layer.load_state_dict({n[len(prefix):]: read(n) for n in names if n.startswith(prefix)},
                                  strict=True, assign=True)
            if prepare is not None:
                model.layers[i] = prepare(layer) or layer
        model.load_state_dict({n: read(n) for n in names if not n.startswith("layers.")}, strict=False, assign=True)
    materialize_buffers(model)
    if prepare is not None:
        prepare(model)
    return model, info
