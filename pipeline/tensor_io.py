"""Safetensors files read a few rows at a time and written a chunk at a time.

The `safetensors` library maps whole files (every touched page stays in RSS) and writes whole
dicts; folding a 1.7B model needs neither. The format is simple and documented (8-byte LE header
length, JSON header with dtype/shape/data_offsets, raw little-endian data), so these two classes
read and write exactly that format with os.pread/os.pwrite; `safetensors.safe_open` reads the result.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping, Protocol

import numpy as np
import torch
import xxhash

from contract.atomic import commit_file, temp_sibling
from contract.inputs import open_regular
from pipeline.safetensors_header import SafetensorsFormatError, parse_header

_DTYPES = {  # safetensors name -> (torch dtype, bytes per element)
    "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I8": (torch.int8, 1), "U8": (torch.uint8, 1),
}
_NAMES = {dt: name for name, (dt, _) in _DTYPES.items()}


class TensorSource(Protocol):
    """Named tensors, read whole or by leading-dimension rows."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> torch.Tensor: ...
    def rows(self, name: str, start: int, stop: int) -> torch.Tensor: ...


class DictSource:
    """A TensorSource over an in-memory state dict."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name].detach()

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.tensors[name].detach()[start:stop]


class SafetensorsReader:
    """Reads tensors or row ranges from one .safetensors file with pread (no mmap, bounded RSS)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = open_regular(self.path, "safetensors file")
        try:
            size = os.fstat(self._fd).st_size
            header, self._base = parse_header(self.path, os.pread(self._fd, 8, 0),
                                              lambda n: os.pread(self._fd, n, 8), size)
        except BaseException:
            os.close(self._fd)
            raise
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries = header
        unsupported = sorted(f"{n} ({e['dtype']})" for n, e in header.items() if e["dtype"] not in _DTYPES)
        if unsupported:
            self.close()
            raise SafetensorsFormatError(f"{self.path}: dtype not supported by meki: {', '.join(unsupported)} "
                                         f"(supported: {', '.join(_DTYPES)})")

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self._entries[name]["dtype"]][0]

    def _read(self, name: str, start_byte: int, nbytes: int, shape: tuple[int, ...]) -> torch.Tensor:
        dtype, _ = _DTYPES[self._entries[name]["dtype"]]
        buf = bytearray(nbytes)
        got = os.preadv(self._fd, [buf], self._base + self._entries[name]["data_offsets"][0] + start_byte)
        if got != nbytes:
            raise ValueError(f"{self.path}: short read of {name}")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)

    def get(self, name: str) -> torch.Tensor:
        begin, end = self._entries[name]["data_offsets"]
        return self._read(name, 0, end - begin, self.shape(name))

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        shape = self.shape(name)
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * _DTYPES[self._entries[name]["dtype"]][1]
        stop = min(stop, shape[0])
        return self._read(name, start * row_bytes, (stop - start) * row_bytes, (stop - start, *shape[1:]))

    def iter_bytes(self, name: str, block: int = 64 << 20) -> Iterator[bytes]:
        begin, end = self._entries[name]["data_offsets"]
        for off in range(begin, end, block):
            yield os.pread(self._fd, min(block, end - off), self._base + off)


class SafetensorsWriter:
    """Pre-declares every tensor, then accepts row ranges in any order; atomic on close.

    with SafetensorsWriter(path, {"t": ((V, m), torch.float32)}) as w: w.write_rows("t", 0, chunk)
    """

    def __init__(self, path: Path, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists (pass overwrite to replace it)")
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._layout = {}
        for name in sorted(layout):
            shape, dtype = layout[name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[_NAMES[dtype]][1]
            header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._layout[name] = (shape, dtype, offset)
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
        self._base = 8 + len(blob)
        self._tmp = temp_sibling(self.path)
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, struct.pack("<Q", len(blob)) + blob, 0)
        os.ftruncate(self._fd, self._base + offset)
        self._written = {name: 0 for name in layout}

    def write_rows(self, name: str, start: int, rows: torch.Tensor) -> None:
        shape, dtype, offset = self._layout[name]
        if tuple(rows.shape[1:]) != tuple(shape[1:]) or start + rows.shape[0] > shape[0]:
            raise ValueError(f"{name}: rows {tuple(rows.shape)} at {start} do not fit {shape}")
        data = rows.detach().to(dtype).contiguous().cpu()
        row_bytes = data[0].numel() * data.element_size() if data.shape[0] else 0
        os.pwrite(self._fd, data.view(torch.uint8).numpy().tobytes(), self._base + offset + start * row_bytes)
        self._written[name] += rows.shape[0]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shape, dtype, offset = self._layout[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} != declared {tuple(shape)}")
        data = tensor.detach().to(dtype).contiguous().cpu().reshape(-1)
        os.pwrite(self._fd, data.view(torch.uint8).numpy().tobytes(), self._base + offset)
        self._written[name] = shape[0] if shape else 1

    def close(self) -> None:
        short = [n for n, (shape, _, _) in self._layout.items() if self._written[n] != (shape[0] if shape else 1)]
        if short:
            self.abort()
            raise ValueError(f"{self.path}: tensors not completely written: {', '.join(short[:5])}")
        os.fsync(self._fd)
        os.close(self._fd)
        commit_file(self._tmp, self.path)

    def abort(self) -> None:
        os.close(self._fd)
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def fingerprint(config_json: str, source: TensorSource) -> str:
    """128-bit xxh3 over the canonical config and every tensor's name, dtype, shape and bytes."""
    h = xxhash.xxh3_128()
    h.update(config_json.encode())
    for name in source.names():
        if isinstance(source, SafetensorsReader):
            h.update(f"{name}|{source.dtype(name)}|{source.shape(name)}".encode())
            for block in source.iter_bytes(name):
                h.update(block)
        else:
            t = source.get(name).contiguous().cpu()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
