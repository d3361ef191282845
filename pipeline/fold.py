"""Folding: turn each layer's static table + dynamic MLP into one [V, m] lookup table.

M~_l = alpha_l * RMSNorm_mix(M_l + beta_l * G_l(E)), computed a vocabulary chunk at a time and
streamed to a sink, so peak memory is one chunk plus the small per-layer weights.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from contract import pack_format as pf
from pipeline.checkpoint import (CheckpointError, CheckpointInfo, check_fingerprint, check_state_dict, read_info,
                                 write_info)
from pipeline.config import ConfigError, ModelConfig
from pipeline.devices import resolve_device
from contract.atomic import atomic_dir
from pipeline.meki_branch import MekiMemory
from pipeline.model import MekiModel
from pipeline.tensor_io import DictSource, SafetensorsReader, SafetensorsWriter, TensorSource

MEMORY_PREFIX = ".memory."


class TableSink(Protocol):
    """Receives folded rows token-major, in ascending contiguous chunks: rows [c, L, m] float32."""

    def write(self, start: int, rows: np.ndarray) -> None: ...


class SafetensorsTableSink:
    """Folded tables as `layers.{l}.table` [V, m] tensors of one safetensors file."""

    def __init__(self, writer: SafetensorsWriter) -> None:
        self.writer = writer

    @staticmethod
    def layout(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {f"layers.{i}.table": ((cfg.vocab_size, cfg.d_mem), dtype) for i in range(cfg.num_layers)}

    def write(self, start: int, rows: np.ndarray) -> None:
        chunk = torch.from_numpy(rows)
        for layer in range(chunk.shape[1]):
            self.writer.write_rows(f"layers.{layer}.table", start, chunk[:, layer])


class ArraySink:
    """Collects the folded tables in memory as [V, L, m] (tests and tiny models)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.tables = np.zeros((cfg.vocab_size, cfg.num_layers, cfg.d_mem), dtype=np.float32)

    def write(self, start: int, rows: np.ndarray) -> None:
        self.tables[start:start + rows.shape[0]] = rows


def _layer_memories(cfg: ModelConfig, source: TensorSource, device: torch.device) -> list[MekiMemory]:
    """Each layer's MekiMemory with its small weights loaded and no [V, m] table allocated."""
    memories = []
    for i in range(cfg.num_layers):
        with torch.device("meta"):
            mem = MekiMemory(cfg)
        mem.table = None  # rows of M_l are streamed per chunk instead
        mem = mem.to_empty(device=device)
        prefix = f"layers.{i}.memory."
        state = {k: source.get(prefix + k).to(device, torch.float32) for k in mem.state_dict()}
        mem.load_state_dict(state, strict=True)
        memories.append(mem.eval())
    return memories


@torch.no_grad()
def fold_tables(cfg: ModelConfig, source: TensorSource, sink: TableSink, chunk_size: int = 4096,
                device: str | torch.device = "cpu", progress: bool = True) -> None:
    """Stream M~ for all layers to `sink`, chunk_size tokens at a time ([c, L, m] float32)."""
    if not cfg.has_meki or cfg.folded:
        raise ValueError(f"fold needs a train-form MeKi model (memory={cfg.memory}, folded={cfg.folded})")
    check_chunk_size(chunk_size)
    device = resolve_device(device)
    memories = _layer_memories(cfg, source, device)
    bar = tqdm(total=cfg.vocab_size, unit="tok", desc="fold", disable=not progress)
    for start in range(0, cfg.vocab_size, chunk_size):
        stop = min(start + chunk_size, cfg.vocab_size)
        emb = source.rows("embed.weight", start, stop).to(device, torch.float32)  # [c, d]
        out = torch.empty(stop - start, cfg.num_layers, cfg.d_mem, device=device)
        for i, mem in enumerate(memories):
            static = (source.rows(f"layers.{i}.memory.table.weight", start, stop).to(device, torch.float32)
                      if cfg.has_static else None)
            out[:, i] = mem.mix(static, emb)
        sink.write(start, out.cpu().numpy())
        bar.update(stop - start)
    bar.close()


def folded_config(cfg: ModelConfig) -> ModelConfig:
    return cfg.replace(folded=True)


def fold_model(model: MekiModel, chunk_size: int = 4096) -> tuple[MekiModel, np.ndarray]:
    """In memory: the folded model (backbone + fusion) and its tables [V, L, m] float32."""
    sink = ArraySink(model.cfg)
    state = model.state_dict()
    fold_tables(model.cfg, DictSource(state), sink, chunk_size, progress=False)
    folded = MekiModel(folded_config(model.cfg))
    folded.load_state_dict({k: v for k, v in state.items() if MEMORY_PREFIX not in k}, strict=True)
    return folded, sink.tables


PACK_DTYPES = ("fp16", "bf16", "int8", "int4")


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ConfigError(f"chunk size {chunk_size!r} must be a positive number of vocabulary rows (e.g. 4096)")


def fold_checkpoint(src: Path, out: Path, chunk_size: int = 4096, device: str = "cpu",
                    table_dtype: torch.dtype = torch.float32, overwrite: bool = False,
                    progress: bool = True, pack_dtype: str | None = None) -> CheckpointInfo:
    """Fold a train-form checkpoint folder into an inference-form one, streaming from disk.

    Tables go to tables.safetensors (fp32 by default), or straight into a memory pack `tables.mekipack`
    when pack_dtype (fp16 | bf16 | int8 | int4) is given.
    """
    if pack_dtype is not None and pack_dtype not in PACK_DTYPES:
        raise ValueError(f"unknown pack dtype {pack_dtype!r} (valid: {', '.join(PACK_DTYPES)})")
    check_chunk_size(chunk_size)
    resolve_device(device)
    info = read_info(src)
    cfg = ModelConfig.load(Path(src) / "config.json")
    with SafetensorsReader(Path(src) / "model.safetensors") as reader:
        check_state_dict(cfg, {n: reader.shape(n) for n in reader.names()}, str(reader.path),
                         {n: reader.dtype(n) for n in reader.names()})
        if not cfg.has_meki or cfg.folded:
            raise CheckpointError(f"{src}: nothing to fold (memory={cfg.memory}, folded={cfg.folded})")
        # the folded outputs carry this fingerprint: it must be these weights', not just what the JSON says
        check_fingerprint(Path(src), cfg, info, reader)
        tables = f"tables{pf.SUFFIX}" if pack_dtype else "tables.safetensors"
        out_info = CheckpointInfo(fingerprint=info.fingerprint, tables=tables, source=info.source)
        with atomic_dir(Path(out), overwrite) as tmp:
            folded_config(cfg).save(tmp / "config.json")
            _copy_backbone(reader, tmp / "model.safetensors", info.fingerprint)
            with _table_sink(cfg, tmp / tables, info.fingerprint, table_dtype, pack_dtype) as sink:
                fold_tables(cfg, reader, sink, chunk_size, device, progress)
            write_info(tmp, out_info)
    return out_info


@contextlib.contextmanager
def _table_sink(cfg: ModelConfig, path: Path, fp: str, table_dtype: torch.dtype,
                pack_dtype: str | None) -> Iterator[TableSink]:
    if pack_dtype:
        from pipeline.pack_writer import PackWriter

        with PackWriter(path, vocab_size=cfg.vocab_size, num_layers=cfg.num_layers, d_mem=cfg.d_mem,
                        dtype=pack_dtype, fingerprint=fp, progress=False) as writer:
            yield writer
        return
    meta = {"fingerprint": fp, "layout": json.dumps(["vocab", "d_mem"])}
    with SafetensorsWriter(path, SafetensorsTableSink.layout(cfg, table_dtype), metadata=meta) as writer:
        yield SafetensorsTableSink(writer)


def _copy_backbone(reader: SafetensorsReader, path: Path, fp: str, rows_per_copy: int = 8192) -> None:
    """Copy every non-memory tensor, a block of rows at a time (the embedding alone can be GBs)."""
    names = [n for n in reader.names() if MEMORY_PREFIX not in n]
    layout = {n: (reader.shape(n), reader.dtype(n)) for n in names}
    with SafetensorsWriter(path, layout, metadata={"fingerprint": fp}) as writer:
        for name in names:
            shape = reader.shape(name)
            if len(shape) < 2:
                writer.write(name, reader.get(name))
                continue
            for start in range(0, shape[0], rows_per_copy):
                writer.write_rows(name, start, reader.rows(name, start, start + rows_per_copy))


def load_tables(folder: Path) -> np.ndarray:
    """The folded tables of a small folded checkpoint as one [V, L, m] float32 array (tests, demo)."""
    folder = Path(folder)
    info = read_info(folder)
    cfg = ModelConfig.load(folder / "config.json")
    if info.tables is None:
        raise CheckpointError(f"{folder}: not a folded checkpoint (no tables)")
    if not info.tables.endswith(".safetensors"):  # a memory pack
        from mobile_runtime.pack import MemoryPack

        with MemoryPack.open(folder / info.tables, expected_fingerprint=info.fingerprint) as pack:
            return pack.lookup(np.arange(pack.vocab_size))
    with SafetensorsReader(folder / info.tables) as reader:
        if reader.metadata.get("fingerprint") != info.fingerprint:
            raise CheckpointError(f"{folder / info.tables}: fingerprint does not match checkpoint.json")
        return np.stack([reader.get(f"layers.{i}.table").float().numpy() for i in range(cfg.num_layers)], axis=1)
