"""Safetensors headers, validated as strictly as the official loader (safetensors' Rust `Metadata`).

Refused, each with the tensor named: files under 8 bytes, a header length over 100 MB or past the
end of the file, a header that is not UTF-8 JSON starting with `{`, duplicate keys, unknown dtype
names, negative or non-integer shapes/offsets, offsets that overlap, leave gaps, do not start at 0,
hold fewer or more bytes than dtype x shape, and data that ends before or after the file does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
DTYPE_BITS = {  # every dtype name the format defines -> bits per element
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class SafetensorsFormatError(ValueError):
    """A file that is not a well-formed safetensors file."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise SafetensorsFormatError(f"duplicate header keys: {', '.join(dup)}")
    return dict(pairs)


def _is_uint(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _looks_like_pickle(first: bytes) -> str:
    if first.startswith(b"PK\x03\x04"):
        return " (it is a zip archive: a torch.save .pt/.bin file? meki reads safetensors only; " \
               "load it with torch.load(weights_only=True) and save it with safetensors.torch.save_file)"
    if first[:1] == b"\x80":
        return " (it looks like a Python pickle: meki reads safetensors only, never pickles)"
    return ""


def parse_header(path: Path, first8: bytes, read: Callable[[int], bytes], size: int) -> tuple[dict, int]:
    """Validate the header of a safetensors file of `size` bytes; returns (header, data start)."""
    if len(first8) < 8:
        raise SafetensorsFormatError(f"{path}: {size} bytes is too short for a safetensors file")
    n = int.from_bytes(first8, "little")
    if n > MAX_HEADER_BYTES or n > size - 8:
        why = (f"over the {MAX_HEADER_BYTES}-byte limit" if n > MAX_HEADER_BYTES
               else f"past the end of the file ({size} bytes)")
        raise SafetensorsFormatError(f"{path}: not a safetensors file: header length {n} is {why}"
                                     + _looks_like_pickle(first8))
    raw = read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SafetensorsFormatError(f"{path}: header is not UTF-8") from None
    if not text.startswith("{"):
        raise SafetensorsFormatError(f"{path}: header does not start with '{{'")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except SafetensorsFormatError as exc:
        raise SafetensorsFormatError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SafetensorsFormatError(f"{path}: header is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: header is not a JSON object")
    _check_entries(path, header, size - 8 - n)
    return header, 8 + n


def _check_entries(path: Path, header: dict, data_bytes: int) -> None:
    meta = header.get("__metadata__")
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        raise SafetensorsFormatError(f"{path}: __metadata__ must map strings to strings")
    spans = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or set(e) != _ENTRY_KEYS:
            raise SafetensorsFormatError(f"{path}: tensor {name}: entry must have exactly dtype, shape, data_offsets")
        if e["dtype"] not in DTYPE_BITS:
            raise SafetensorsFormatError(f"{path}: tensor {name}: unknown dtype {e['dtype']!r}")
        shape, offs = e["shape"], e["data_offsets"]
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise SafetensorsFormatError(f"{path}: tensor {name}: shape {shape!r} is not a list of non-negative ints")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_uint(o) for o in offs) or offs[1] < offs[0]:
            raise SafetensorsFormatError(f"{path}: tensor {name}: data_offsets {offs!r} are not [begin <= end]")
        bits = math.prod(shape) * DTYPE_BITS[e["dtype"]]
        if bits % 8 or bits // 8 != offs[1] - offs[0]:
            raise SafetensorsFormatError(f"{path}: tensor {name}: {e['dtype']} {shape} needs {bits / 8:g} bytes "
                                         f"but data_offsets {offs} hold {offs[1] - offs[0]}")
        spans.append((offs[0], offs[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the previous tensor" if begin < end else f"leaves a gap of {begin - end} bytes"
            raise SafetensorsFormatError(f"{path}: tensor {name}: data_offsets start at {begin}, {what} "
                                         f"(expected {end})")
        end = stop
    if end != data_bytes:
        raise SafetensorsFormatError(f"{path}: tensors end at data byte {end} but the file holds {data_bytes} "
                                     f"({'truncated' if end > data_bytes else 'trailing bytes'})")
