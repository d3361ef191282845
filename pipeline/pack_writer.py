"""Write a MeKi memory pack (format v1, see contract/PACK_FORMAT.md), streamed chunk by chunk.

    with PackWriter(path, vocab_size=V, num_layers=L, d_mem=m, dtype="int8",
                    fingerprint=fp) as w:
        for start, rows in chunks:          # rows: float32 [c, L, m], ascending and contiguous
            w.write(start, rows)

The file appears at `path` only after a clean exit (temp file, fsync, rename); on any error the
temp file is removed and nothing is left at `path`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from contract import pack_format as pf
from contract.atomic import commit_file, temp_sibling


class PackWriteError(ValueError):
    """Base of every writer error (bad settings, bad rows, wrong row count)."""


class PackRowsError(PackWriteError):
    """A chunk has the wrong shape, a gap/overlap, too many rows, or non-finite values."""


class PackIncompleteError(PackWriteError):
    """The writer was closed before all vocab_size rows were written."""


class PackWriter:
    """Streams [c, L, m] float32 chunks into a pack; see the module docstring."""

    def __init__(self, path, *, vocab_size: int, num_layers: int, d_mem: int, dtype: str = "int8",
                 fingerprint: str, group_size: int = 32, layout: str = "token-major",
                 block_size: int = pf.DEFAULT_BLOCK_SIZE, overwrite: bool = False,
                 progress: bool = True):
        try:
            self.header = pf.plan_header(vocab_size, num_layers, d_mem, dtype, layout,
                                         group_size, block_size, fingerprint)
        except ValueError as e:
            raise PackWriteError(str(e)) from None
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self._progress = progress
        self._next = 0                  # next token expected
        self._digests: list[int] = []   # one xxh3_64 per finished block
        self._pending = bytearray()     # bytes of the current, unfinished block (token-major)
        self._f = None
        self._tmp = None
        self._bar = None

    # ------------------------------------------------------------ context manager
    def __enter__(self) -> "PackWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.path)
        self._f = open(self._tmp, "x+b", buffering=0)
        h = self.header
        # header region stays zero until finalize: a crash leaves a file with no magic
        self._f.truncate(h.data_offset if h.layout == "token-major" else h.table_offset)
        self._f.seek(h.data_offset)
        if self._progress:
            from tqdm import tqdm
            self._bar = tqdm(total=h.vocab_size, unit="tok", desc=f"pack {self.path.name}")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._finalize()
        except BaseException:
            self._abort()
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
        if exc_type is not None:
            self._abort()
        return False

    # ------------------------------------------------------------ writing
    def write(self, start_token: int, rows: np.ndarray) -> None:
        """rows: float32 [c, L, m] for tokens [start_token, start_token + c)."""
        if self._f is None:
            raise PackWriteError("PackWriter.write called outside its `with` block")
        h = self.header
        rows = self._check_chunk(start_token, rows)
        try:
            enc = pf.encode_rows(rows, h.dtype, h.group_size)   # [c, L, row_bytes] uint8
        except ValueError as e:
            bad = np.flatnonzero(~np.isfinite(rows).all(axis=(1, 2)))
            where = f"token {start_token + bad[0]} has NaN/Inf" if bad.size else str(e)
            raise PackRowsError(f"chunk at token {start_token}: {where}") from None
        self._write_encoded(start_token, enc)

    def write_encoded(self, start_token: int, enc: np.ndarray) -> None:
        """Write rows already encoded by pack_format.encode_rows: uint8 [c, L, row_bytes].

        For a folding stage that quantises itself (e.g. on an accelerator); no NaN check here.
        """
        if self._f is None:
            raise PackWriteError("PackWriter.write_encoded called outside its `with` block")
        h = self.header
        if not isinstance(enc, np.ndarray) or enc.dtype != np.uint8 or enc.ndim != 3 or \
                enc.shape[1:] != (h.num_layers, h.row_bytes):
            raise PackRowsError(f"encoded rows must be uint8 [c, {h.num_layers}, {h.row_bytes}], "
                                f"got {getattr(enc, 'dtype', type(enc).__name__)} "
                                f"{list(getattr(enc, 'shape', []))}")
        self._check_position(start_token, enc.shape[0])
        self._write_encoded(start_token, np.ascontiguousarray(enc))

    def _write_encoded(self, start_token: int, enc: np.ndarray) -> None:
        h = self.header
        if h.layout == "token-major":
            self._append(memoryview(enc).cast("B"))
        else:
            for layer in range(h.num_layers):
                off = h.data_offset + (layer * h.vocab_size + start_token) * h.row_bytes
                os.pwrite(self._f.fileno(), np.ascontiguousarray(enc[:, layer]), off)
        self._next += enc.shape[0]
        if self._bar is not None:
            self._bar.update(enc.shape[0])

    def _check_chunk(self, start_token: int, rows) -> np.ndarray:
        h = self.header
        if not isinstance(rows, np.ndarray) or rows.dtype.kind != "f":
            raise PackRowsError(f"rows must be a float numpy array, got "
                                f"{type(rows).__name__} {getattr(rows, 'dtype', '')}")
        if rows.ndim != 3 or rows.shape[1:] != (h.num_layers, h.d_mem) or rows.shape[0] < 1:
            raise PackRowsError(f"rows must have shape [c>=1, {h.num_layers}, {h.d_mem}], "
                                f"got {list(rows.shape)}")
        self._check_position(start_token, rows.shape[0])
        return np.ascontiguousarray(rows, dtype=np.float32)

    def _check_position(self, start_token: int, count: int) -> None:
        if start_token != self._next:
            what = "gap" if start_token > self._next else "overlap"
            raise PackRowsError(f"chunk starts at token {start_token} but token {self._next} is "
                                f"next ({what}); chunks must be ascending and contiguous")
        if start_token + count > self.header.vocab_size:
            raise PackRowsError(f"chunk [{start_token}, {start_token + count}) goes past "
                                f"vocab_size={self.header.vocab_size}")

    def _append(self, mv: memoryview) -> None:
        """Write token-major bytes sequentially, hashing each block as it completes."""
        bs, f = self.header.block_size, self._f
        if self._pending:
            take = min(bs - len(self._pending), len(mv))
            self._pending += mv[:take]
            mv = mv[take:]
            if len(self._pending) < bs:
                return
            self._digests.append(pf.checksum(self._pending))
            _write_all(f, memoryview(self._pending))
            self._pending = bytearray()
        full = len(mv) // bs * bs
        for off in range(0, full, bs):
            self._digests.append(pf.checksum(mv[off:off + bs]))
        _write_all(f, mv[:full])
        self._pending += mv[full:]

    # ------------------------------------------------------------ finishing
    def _finalize(self) -> None:
        h, f = self.header, self._f
        if self._next != h.vocab_size:
            raise PackIncompleteError(f"only {self._next} of vocab_size={h.vocab_size} token rows "
                                      f"were written")
        if h.layout == "token-major":
            if self._pending:   # zero-pad the last block
                self._pending += bytes(h.block_size - len(self._pending))
                self._digests.append(pf.checksum(self._pending))
                _write_all(f, memoryview(self._pending))
                self._pending = bytearray()
        else:
            self._digests = list(_hash_blocks(f, h))
        assert len(self._digests) == h.num_blocks
        table = np.asarray(self._digests, dtype="<u8").tobytes()
        f.seek(h.table_offset)
        _write_all(f, memoryview(table))
        header = pf.PackHeader(**{**h.__dict__, "table_checksum": pf.checksum(table)})
        os.pwrite(f.fileno(), header.pack(), 0)
        os.fsync(f.fileno())
        f.close()
        self._f = None
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path} appeared while writing; not overwriting it")
        commit_file(self._tmp, self.path)

    def _abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()


def _write_all(f, mv: memoryview) -> None:
    while len(mv):
        n = f.write(mv)
        mv = mv[n:]


def _hash_blocks(f, h: pf.PackHeader):
    """Checksums of every data block read back from disk (layer-major is written out of order)."""
    step = max(1, (8 << 20) // h.block_size)
    for first in range(0, h.num_blocks, step):
        n = min(step, h.num_blocks - first)
        buf = os.pread(f.fileno(), n * h.block_size, h.data_offset + first * h.block_size)
        mv = memoryview(buf)
        for i in range(n):
            yield pf.checksum(mv[i * h.block_size:(i + 1) * h.block_size])



def write_pack(path, tables, *, fingerprint: str, dtype: str = "int8", group_size: int = 32,
               layout: str = "token-major", block_size: int = pf.DEFAULT_BLOCK_SIZE,
               chunk_tokens: int = 4096, overwrite: bool = False, progress: bool = False) -> Path:
    """Write in-memory tables to a pack.

    tables: float [V, L, m] array (token-major), or a list of L arrays [V, m] (one per layer).
    Returns the path written.
    """
    if isinstance(tables, (list, tuple)):
        if not tables:
            raise PackWriteError("tables is an empty list")
        shapes = {np.shape(t) for t in tables}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise PackRowsError(f"per-layer tables must all be [V, m], got {sorted(shapes)}")
        (v, m), n_layers = next(iter(shapes)), len(tables)
        chunk = lambda a, b: np.stack([np.asarray(t[a:b]) for t in tables], axis=1)  # noqa: E731
    else:
        if np.ndim(tables) != 3:
            raise PackRowsError(f"tables must be [V, L, m], got shape {list(np.shape(tables))}")
        v, n_layers, m = tables.shape
        chunk = lambda a, b: tables[a:b]  # noqa: E731
    with PackWriter(path, vocab_size=v, num_layers=n_layers, d_mem=m, dtype=dtype,
                    fingerprint=fingerprint, group_size=group_size, layout=layout,
                    block_size=block_size, overwrite=overwrite, progress=progress) as w:
        for a in range(0, v, chunk_tokens):
            w.write(a, chunk(a, min(v, a + chunk_tokens)))
    return Path(path)


def pack_tables_file(tables_path, path, *, dtype: str = "int8", group_size: int = 32,
                     fingerprint: str | None = None, chunk_tokens: int = 4096,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Pack a folded `tables.safetensors` (`layers.{l}.table` [V, m] float32/float16 tensors,
    fingerprint in its metadata) without loading it whole: reads chunk_tokens rows at a time."""
    from safetensors import safe_open

    from contract.atomic import output_lock
    from contract.inputs import require_file
    from pipeline.safetensors_header import parse_header

    require_file(Path(tables_path), "tables.safetensors")
    with open(tables_path, "rb") as fh:  # refuse what the official loader would, with our messages
        parse_header(Path(tables_path), fh.read(8), fh.read, os.fstat(fh.fileno()).st_size)
    with output_lock(Path(path)):  # a second pack to the same file fails instead of racing
        _pack_tables(safe_open, tables_path, path, dtype, group_size, fingerprint, chunk_tokens, overwrite, progress)
    return Path(path)


def _pack_tables(safe_open, tables_path, path, dtype, group_size, fingerprint, chunk_tokens, overwrite,
                 progress) -> None:
    with safe_open(str(tables_path), framework="numpy") as f:
        fp = fingerprint or (f.metadata() or {}).get("fingerprint")
        if fp is None:
            raise PackWriteError(f"{tables_path}: no fingerprint in metadata; pass fingerprint=")
        n_layers = sum(1 for k in f.keys() if k.startswith("layers.") and k.endswith(".table"))
        if n_layers == 0:
            raise PackWriteError(f"{tables_path}: no `layers.{{l}}.table` tensors")
        slices = [f.get_slice(f"layers.{i}.table") for i in range(n_layers)]
        v, m = slices[0].get_shape()
        with PackWriter(path, vocab_size=v, num_layers=n_layers, d_mem=m, dtype=dtype,
                        fingerprint=fp, group_size=group_size, overwrite=overwrite,
                        progress=progress) as w:
            for a in range(0, v, chunk_tokens):
                b = min(v, a + chunk_tokens)
                w.write(a, np.stack([s[a:b] for s in slices], axis=1).astype(np.float32))
