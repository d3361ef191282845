"""This project's checkpoint format: a folder with config.json and model.safetensors.

A folded (inference-form) checkpoint also holds the tables: tables.safetensors (`layers.{i}.table`,
[V, m] each) or a memory pack; `checkpoint.json` names them and the fingerprint of the train-form
model they came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from pipeline.config import ConfigError, ModelConfig
from contract.atomic import atomic_dir
from pipeline.model import MekiModel
from pipeline.tensor_io import DictSource, fingerprint

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


def check_state_dict(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]], origin: str) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped key."""
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(set(shapes) - set(want))
    wrong = sorted(f"{k} {tuple(shapes[k])} (expected {want[k]})" for k in set(want) & set(shapes)
                   if tuple(shapes[k]) != want[k])
    problems = [f"missing keys: {', '.join(missing)}"] if missing else []
    problems += [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []
    problems += [f"wrong shapes: {', '.join(wrong)}"] if wrong else []
    if problems:
        raise CheckpointError(f"{origin}: " + "; ".join(problems))


def model_fingerprint(model: MekiModel) -> str:
    cfg = model.cfg.replace(name="")  # the informational name must not change identity
    return fingerprint(json.dumps(cfg.to_dict(), sort_keys=True), DictSource(model.state_dict()))


def build_model(cfg: ModelConfig, state: Mapping[str, torch.Tensor], origin: str) -> MekiModel:
    check_state_dict(cfg, {k: tuple(v.shape) for k, v in state.items()}, origin)
    model = MekiModel(cfg)
    model.load_state_dict(dict(state), strict=True)
    return model


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
    path = Path(folder) / "checkpoint.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no checkpoint.json (not a meki checkpoint folder)")
    data = json.loads(path.read_text())
    if data.get("format") != "meki-checkpoint" or data.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {data.get('format')!r} version {data.get('version')!r} "
                              f"is not meki-checkpoint v{FORMAT_VERSION}")
    return CheckpointInfo(fingerprint=data["fingerprint"], tables=data.get("tables"), source=data["source"])


def load_checkpoint(folder: Path) -> tuple[MekiModel, CheckpointInfo]:
    """Load one of our checkpoint folders (train or folded form) into a MekiModel (tables stay on disk)."""
    folder = Path(folder)
    info = read_info(folder)
    try:
        cfg = ModelConfig.load(folder / "config.json")
    except ConfigError as exc:
        raise CheckpointError(f"{folder / 'config.json'}: {exc}") from exc
    model = build_model(cfg, load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"))
    return model, info
