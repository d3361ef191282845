"""MeKi memory pack, format version 1: header layout, constants and the numpy codecs.

Shared by the writer (`pipeline.pack_writer`) and the reader (`mobile_runtime.pack`). numpy and
stdlib only. The byte-level spec is PACK_FORMAT.md in this folder; keep the two in step.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np
import xxhash

MAGIC = b"MEKIPACK"
SUFFIX = ".mekipack"             # the one file extension of a memory pack
VERSION = 1
HEADER_SIZE = 128              # bytes of fixed header; the rest of [0, data_offset) is zero
HEADER_CHECKSUM_OFFSET = 120   # xxh3_64 of bytes [0, 120) is stored here
DATA_ALIGN = 16 * 1024         # data offset alignment: 16 KiB pages (Android 15)
DEFAULT_BLOCK_SIZE = 16 * 1024  # checksum block size; a power of two in [4 KiB, 16 MiB]
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 4 * 1024, 16 * 1024 * 1024
CHECKSUM_BYTES = 8             # one little-endian u64 xxh3_64 (seed 0) per block

# dtype codes (header byte 28)
DTYPE_CODES = {"fp16": 1, "bf16": 2, "int8": 3, "int4": 4}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
# layout codes (header byte 29)
LAYOUT_CODES = {"token-major": 0, "layer-major": 1}
LAYOUT_NAMES = {v: k for k, v in LAYOUT_CODES.items()}

INT8_QMAX = 127   # int8 values are in [-127, 127]; scale = absmax / 127
INT4_QMAX = 7     # int4 values are in [-7, 7], stored as nibble q + 8
FP16_MAX = 65504.0

# little-endian header struct, 120 bytes, then the u64 header checksum
_HEADER_STRUCT = struct.Struct("<8sIIIII BBH II QQ II QQ 16s Q 16s")
assert _HEADER_STRUCT.size == HEADER_CHECKSUM_OFFSET
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{32}$")


def checksum(buf) -> int:
    """xxh3_64, seed 0, of a bytes-like object (the only hash the format uses)."""
    return xxhash.xxh3_64_intdigest(buf)


def check_fingerprint(fp: str) -> bytes:
    """Validate a 32-lowercase-hex fingerprint; returns its 16 raw bytes."""
    if not isinstance(fp, str) or not _FINGERPRINT_RE.match(fp):
        raise ValueError(f"fingerprint must be 32 lowercase hex characters, got {fp!r}")
    return bytes.fromhex(fp)


def num_scales(dtype: str, d_mem: int, group_size: int) -> int:
    """fp32 scales stored in front of each row: int8 1, int4 d_mem/group_size, float 0."""
    return {"int8": 1, "int4": d_mem // group_size if group_size else 0}.get(dtype, 0)


def value_bytes(dtype: str, d_mem: int) -> int:
    """Bytes of the packed values of one row (d_mem values)."""
    return {"fp16": 2 * d_mem, "bf16": 2 * d_mem, "int8": d_mem, "int4": d_mem // 2}[dtype]


def row_bytes(dtype: str, d_mem: int, group_size: int) -> int:
    """Bytes of one encoded row: fp32 scales, then packed values."""
    return 4 * num_scales(dtype, d_mem, group_size) + value_bytes(dtype, d_mem)


def round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class PackHeader:
    """The decoded fixed header (all sizes in bytes)."""
    vocab_size: int      # V, tokens
    num_layers: int      # L
    d_mem: int           # m, values per row
    dtype: str           # "fp16" | "bf16" | "int8" | "int4"
    layout: str          # "token-major" | "layer-major"
    group_size: int      # int4: values per scale; int8: d_mem; floats: 0
    row_bytes: int       # one encoded row (scales + values)
    record_stride: int   # token-major: L * row_bytes; layer-major: row_bytes
    data_offset: int     # start of the data section, multiple of 16 KiB
    data_size: int       # data section length, multiple of block_size (zero padded)
    block_size: int      # checksum block size
    num_blocks: int      # data_size / block_size
    table_offset: int    # = data_offset + data_size; num_blocks u64 checksums
    file_size: int       # = table_offset + 8 * num_blocks
    fingerprint: str     # 32 lowercase hex
    table_checksum: int  # xxh3_64 of the checksum table bytes

    def pack(self) -> bytes:
        """The 128 header bytes, checksum included."""
        body = _HEADER_STRUCT.pack(
            MAGIC, VERSION, HEADER_SIZE, self.vocab_size, self.num_layers, self.d_mem,
            DTYPE_CODES[self.dtype], LAYOUT_CODES[self.layout], 0,
            self.group_size, self.record_stride, self.data_offset, self.data_size,
            self.block_size, self.num_blocks, self.table_offset, self.file_size,
            bytes.fromhex(self.fingerprint), self.table_checksum, bytes(16))
        return body + struct.pack("<Q", checksum(body))


def plan_header(vocab_size: int, num_layers: int, d_mem: int, dtype: str, layout: str,
                group_size: int, block_size: int, fingerprint: str,
                table_checksum: int = 0) -> PackHeader:
    """Derive every size of a pack from its shapes and settings; raises ValueError if invalid."""
    validate_shape(vocab_size, num_layers, d_mem, dtype, layout, group_size, block_size)
    check_fingerprint(fingerprint)
    if dtype == "int8":
        group_size = d_mem
    elif dtype != "int4":
        group_size = 0
    rb = row_bytes(dtype, d_mem, group_size)
    stride = num_layers * rb if layout == "token-major" else rb
    data_size = round_up(vocab_size * num_layers * rb, block_size)
    num_blocks = data_size // block_size
    table_offset = DATA_ALIGN + data_size
    return PackHeader(vocab_size, num_layers, d_mem, dtype, layout, group_size, rb, stride,
                      DATA_ALIGN, data_size, block_size, num_blocks, table_offset,
                      table_offset + CHECKSUM_BYTES * num_blocks, fingerprint, table_checksum)


def validate_shape(vocab_size, num_layers, d_mem, dtype, layout, group_size, block_size) -> None:
    """Raise ValueError naming the first setting a v1 pack cannot hold."""
    if dtype not in DTYPE_CODES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPE_CODES)}")
    if layout not in LAYOUT_CODES:
        raise ValueError(f"unknown layout {layout!r}; valid: {sorted(LAYOUT_CODES)}")
    for name, v in (("vocab_size", vocab_size), ("num_layers", num_layers), ("d_mem", d_mem)):
        if not isinstance(v, (int, np.integer)) or not 1 <= v < 2**31:
            raise ValueError(f"{name} must be an int in [1, 2**31), got {v!r}")
    if d_mem % 8:
        raise ValueError(f"d_mem must be a multiple of 8 for a memory pack (its rows are 8-byte aligned), got {d_mem}: "
                         "such a model folds to safetensors tables (meki fold without --pack) but cannot ship")
    if dtype == "int4" and (group_size < 2 or group_size % 2 or d_mem % group_size):
        raise ValueError(f"int4 group_size must be even and divide d_mem={d_mem}, got {group_size}: pack int8, or "
                         "int4 with `meki pack --group-size` dividing d_mem")
    if (block_size & (block_size - 1)) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be a power of two in [4096, 16 MiB], got {block_size}")
    if vocab_size * num_layers * row_bytes(dtype, d_mem, group_size) > 2**62:
        raise ValueError("pack too large")


def unpack_header(buf: bytes):
    """Raw header fields (tuple, struct order) and the stored header checksum; no validation."""
    fields = _HEADER_STRUCT.unpack_from(buf, 0)
    (stored,) = struct.unpack_from("<Q", buf, HEADER_CHECKSUM_OFFSET)
    return fields, stored


# ---------------------------------------------------------------- codecs (numpy)

def quantize_int8(x: np.ndarray, out_q: np.ndarray | None = None):
    """x: [..., m] float32 -> (q int8 [..., m], scale float32 [...]); scale = absmax / 127.

    q = rint(x / scale) lies in [-127, 127] by construction (no clip needed).
    out_q: optional int8 (or int8-viewable) destination [..., m], filled in place.
    """
    # two reductions, no |x| temp; abs() turns a -0.0 (all-zero row) into +0.0
    absmax = np.abs(np.maximum(x.max(axis=-1), -x.min(axis=-1)))
    scale = (absmax / np.float32(INT8_QMAX)).astype(np.float32)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    tmp = x * inv[..., None]
    np.rint(tmp, out=tmp)
    if out_q is None:
        out_q = np.empty(x.shape, np.int8)
    np.copyto(out_q, tmp, casting="unsafe")
    return out_q, scale


def quantize_int4(x: np.ndarray, group_size: int):
    """x: [..., m] float32 -> (packed uint8 [..., m/2], scales float32 [..., m/g]).

    Symmetric per group of `group_size` values along m: q = rint(x / s) in [-7, 7], s = absmax/7.
    Byte j holds value 2j in its low nibble and value 2j+1 in its high nibble, each as q + 8.
    """
    m = x.shape[-1]
    g = x.reshape(*x.shape[:-1], m // group_size, group_size)
    scale = (np.max(np.abs(g), axis=-1) / np.float32(INT4_QMAX)).astype(np.float32)
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.rint(g * inv[..., None])
    np.clip(q, -INT4_QMAX, INT4_QMAX, out=q)
    n = (q.astype(np.int8) + 8).astype(np.uint8).reshape(*x.shape[:-1], m // 2, 2)
    return (n[..., 0] | (n[..., 1] << 4)).astype(np.uint8), scale


def float_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even. x must be finite."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def encode_rows(x: np.ndarray, dtype: str, group_size: int) -> np.ndarray:
    """See _encode_rows; non-finite input raises ValueError without numpy warnings."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _encode_rows(x, dtype, group_size)


def _encode_rows(x: np.ndarray, dtype: str, group_size: int) -> np.ndarray:
    """x: [..., m] finite float32 -> encoded rows uint8 [..., row_bytes] (scales, then values).

    Raises ValueError if a value does not fit the dtype (fp16/bf16 overflow).
    """
    lead, m = x.shape[:-1], x.shape[-1]
    if dtype in ("int8", "int4"):
        if dtype == "int8":
            enc = np.empty((*lead, 4 + m), np.uint8)
            _, s = quantize_int8(x, enc[..., 4:].view(np.int8))
            enc[..., :4] = s.astype("<f4")[..., None].view(np.uint8)
            if not np.isfinite(s).all():
                raise ValueError("non-finite value (NaN/Inf)")
            return enc
        else:
            q, s = quantize_int4(x, group_size)
            parts = (np.ascontiguousarray(s, dtype="<f4").view(np.uint8), q)
        if not np.isfinite(s).all():   # NaN/Inf anywhere in a row shows up in its absmax
            raise ValueError("non-finite value (NaN/Inf)")
        return np.concatenate([p.reshape(*lead, -1) for p in parts], axis=-1)
    if dtype == "fp16":
        h = x.astype("<f2")
        if not np.isfinite(h).all():
            raise ValueError(f"non-finite value or |x| > {FP16_MAX} (fp16 overflow)")
        return h.view(np.uint8).reshape(*lead, 2 * m)
    b = float_to_bf16_bits(x)
    if ((b & 0x7F80) == 0x7F80).any():
        raise ValueError("non-finite value or bf16 overflow")
    return b.astype("<u2").view(np.uint8).reshape(*lead, 2 * m)


def decode_rows(raw: np.ndarray, dtype: str, d_mem: int, group_size: int,
                out: np.ndarray) -> np.ndarray:
    """raw: uint8 [..., row_bytes] encoded rows -> out: [..., d_mem] float32 or float16.

    int8: q * scale; int4: (nibble - 8) * group scale; computed in float32, then cast to out.
    """
    if dtype == "fp16":
        out[...] = raw.view("<f2")
        return out
    if dtype == "bf16":
        bits = raw.view("<u2").astype(np.uint32) << 16
        out[...] = bits.view(np.float32)
        return out
    ns = num_scales(dtype, d_mem, group_size)
    scale = raw[..., : 4 * ns].view("<f4")          # [..., ns]
    vals = raw[..., 4 * ns:]
    if dtype == "int8":
        res = vals.view(np.int8).astype(np.float32)
        res *= scale
    else:
        lo = (vals & 0x0F).astype(np.int8) - 8
        hi = (vals >> 4).astype(np.int8) - 8
        q = np.stack([lo, hi], axis=-1).reshape(*raw.shape[:-1], ns, group_size)
        res = (q.astype(np.float32) * scale[..., None]).reshape(*raw.shape[:-1], d_mem)
    out[...] = res
    return out
