"""Read a MeKi memory pack (format v1, PACK_FORMAT.md): lookup, prefetch, LRU cache, verify.

numpy + stdlib (+ xxhash) only; never imports torch.

    with MemoryPack.open(path, mode="pread", expected_fingerprint=fp) as pack:
        rows = pack.lookup([17, 42])                 # float32 [2, L, m]
        h = pack.prefetch([99]); ...; rows = pack.collect(h)

Every data block a read touches is checked against its checksum the first time (then remembered
as verified), so a damaged block raises PackChecksumError instead of returning garbage.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import operator
import os
import stat
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from contract import pack_format as pf

_CACHE_ENTRY_OVERHEAD = 120   # bytes a cached record costs beyond its payload (bytes obj + dict)
# preadv2 flag: fail with EAGAIN instead of waiting for storage (Linux >= 4.14, so Android too); 0 where absent
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


class PackError(Exception):
    """Base of every error the reader raises. `check` is its conformance/CHECKS.md name."""

    check = "pack.io"

    def __init__(self, message: str, check: str | None = None):
        super().__init__(message)
        if check is not None:
            self.check = check


class PackFormatError(PackError):
    """Not a pack, an unsupported version, or an inconsistent header."""
    check = "pack.header_fields"


class PackTruncatedError(PackFormatError):
    """The file is shorter (or longer) than its header says."""
    check = "pack.file_size"


class PackChecksumError(PackError):
    """A header, table or data block does not match its checksum."""
    check = "pack.block_checksum"


class PackFingerprintError(PackError):
    """The pack was folded from a different model than expected."""
    check = "pack.fingerprint"


class PackTokenError(PackError, IndexError):
    """A token id is out of range or not an integer."""
    check = "pack.token"


@dataclass
class PrefetchHandle:
    """A background lookup started by MemoryPack.prefetch; pass it to collect()."""
    token_ids: np.ndarray            # [T] int64
    future: Future
    submitted_at: float              # perf_counter() at submit
    waited_s: float | None = None    # set by collect(): time collect() blocked


@dataclass
class VerifyReport:
    """Result of verify_pack(): ok, or the error that refused the pack."""
    path: str
    ok: bool
    error: str | None = None
    version: int | None = None
    vocab_size: int | None = None
    num_layers: int | None = None
    d_mem: int | None = None
    dtype: str | None = None
    layout: str | None = None
    fingerprint: str | None = None
    num_blocks: int | None = None
    file_size: int | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def read_header(fd: int, actual_size: int, expected_fingerprint: str | None = None):
    """Read, check and decode the header of an open pack; raises PackError on any problem."""
    if actual_size < pf.HEADER_SIZE:
        raise PackTruncatedError(f"file is {actual_size} bytes, too small for a {pf.HEADER_SIZE}"
                                 f"-byte pack header (truncated or not a pack)", "pack.too_short")
    buf = os.pread(fd, pf.HEADER_SIZE, 0)
    if buf[:8] != pf.MAGIC:
        raise PackFormatError(f"bad magic {buf[:8]!r}: not a MeKi memory pack", "pack.magic")
    fields, stored = pf.unpack_header(buf)
    (_, version, header_size, v, n_layers, m, dcode, lcode, res16, group, stride, data_off,
     data_size, block, n_blocks, table_off, file_size, fp_raw, table_sum, reserved) = fields
    if version != pf.VERSION:
        raise PackFormatError(f"unsupported pack version {version} (this reader reads "
                              f"version {pf.VERSION})", "pack.version")
    if pf.checksum(buf[:pf.HEADER_CHECKSUM_OFFSET]) != stored:
        raise PackChecksumError("header checksum mismatch: the header is damaged", "pack.header_checksum")
    if dcode not in pf.DTYPE_NAMES or lcode not in pf.LAYOUT_NAMES:
        raise PackFormatError(f"unknown dtype code {dcode} or layout code {lcode}")
    try:
        want = pf.plan_header(v, n_layers, m, pf.DTYPE_NAMES[dcode], pf.LAYOUT_NAMES[lcode],
                              group, block, fp_raw.hex(), table_sum)
    except ValueError as e:
        raise PackFormatError(f"invalid header: {e}") from None
    got = (header_size, res16, reserved, group, stride, data_off, data_size, n_blocks,
           table_off, file_size)
    exp = (pf.HEADER_SIZE, 0, bytes(16), want.group_size, want.record_stride, want.data_offset,
           want.data_size, want.num_blocks, want.table_offset, want.file_size)
    if got != exp:
        names = ("header_size", "reserved (16-bit)", "reserved", "group_size", "record_stride", "data_offset",
                 "data_size", "num_blocks", "table_offset", "file_size")
        show = lambda v: v.hex() if isinstance(v, bytes) else v  # noqa: E731
        wrong = [f"{n}={show(g)} (expected {show(e)})" for n, g, e in zip(names, got, exp) if g != e]
        raise PackFormatError(f"inconsistent header fields: {', '.join(wrong)}")
    if actual_size != file_size:
        raise PackTruncatedError(f"file is {actual_size} bytes but its header says {file_size}"
                                 f" ({'truncated' if actual_size < file_size else 'extra bytes'})")
    if os.pread(fd, data_off - pf.HEADER_SIZE, pf.HEADER_SIZE).count(0) != data_off - pf.HEADER_SIZE:
        raise PackChecksumError("header padding is not zero: the header region is damaged", "pack.padding")
    if expected_fingerprint is not None and want.fingerprint != expected_fingerprint:
        raise PackFingerprintError(f"pack fingerprint {want.fingerprint} does not match the "
                                   f"model's {expected_fingerprint}: it was folded from another model")
    return want


class MemoryPack:
    """An open pack. Use MemoryPack.open(); thread-safe for lookup/prefetch."""

    def __init__(self, path, fd: int, header: pf.PackHeader, mode: str, cache_bytes: int,
                 verify_on_read: bool):
        h = self.header = header
        self.path, self.mode, self.verify_on_read = str(path), mode, verify_on_read
        self.vocab_size, self.num_layers, self.d_mem = h.vocab_size, h.num_layers, h.d_mem
        self.dtype, self.layout, self.fingerprint = h.dtype, h.layout, h.fingerprint
        self.file_size = h.file_size
        self.cache_bytes = int(cache_bytes)
        self._fd = fd
        self._token_bytes = h.num_layers * h.row_bytes   # one token's raw record
        table = os.pread(fd, pf.CHECKSUM_BYTES * h.num_blocks, h.table_offset)
        if pf.checksum(table) != h.table_checksum:
            raise PackChecksumError("checksum table does not match its checksum in the header",
                                    "pack.table_checksum")
        self._sums = np.frombuffer(table, dtype="<u8")
        self._verified = np.zeros(h.num_blocks, dtype=bool)
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_used = 0
        self._pool: ThreadPoolExecutor | None = None
        self._mm = self._map = None
        if mode == "mmap":
            self._mm = mmap.mmap(fd, h.file_size, access=mmap.ACCESS_READ)
            if hasattr(self._mm, "madvise"):
                self._mm.madvise(mmap.MADV_RANDOM)   # one token = one small read; no readahead
            self._map = np.frombuffer(self._mm, dtype=np.uint8)
        elif hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, h.data_offset, h.data_size, os.POSIX_FADV_RANDOM)

    @classmethod
    def open(cls, path, mode: str = "pread", cache_bytes: int = 8 << 20,
             expected_fingerprint: str | None = None, verify_on_read: bool = True) -> "MemoryPack":
        """Open and check a pack. mode: "pread" (reads into the process) or "mmap"."""
        if mode not in ("pread", "mmap"):
            raise ValueError(f"mode must be 'pread' or 'mmap', got {mode!r}")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise PackError(f"cannot open pack {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PackError(f"cannot open pack {path}: not a regular file")
            try:
                header = read_header(fd, st.st_size, expected_fingerprint)
            except PackError as e:  # the header's findings name the file they are about
                raise type(e)(f"{path}: {e}", e.check) from None
            return cls(path, fd, header, mode, cache_bytes, verify_on_read)
        except OSError as e:   # a read failing under us (EIO, a file replaced by a folder)
            os.close(fd)
            raise PackError(f"cannot read pack {path}: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------ lookups
    def lookup(self, token_ids, dtype=np.float32) -> np.ndarray:
        """token_ids: [T] ints -> dequantised rows [T, L, m] (float32 by default)."""
        ids = self._check_ids(token_ids)
        out = np.empty((ids.size, self.num_layers, self.d_mem), dtype=dtype)
        return self._lookup_ids(ids, out)

    def lookup_into(self, token_ids, out: np.ndarray) -> np.ndarray:
        """Fill the caller's out: [T, L, m] float32 or float16 with the rows of token_ids."""
        ids = self._check_ids(token_ids)
        want = (ids.size, self.num_layers, self.d_mem)
        if not isinstance(out, np.ndarray) or out.shape != want or \
                out.dtype not in (np.float32, np.float16):
            raise ValueError(f"out must be a float32/float16 array of shape {list(want)}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} "
                             f"{list(getattr(out, 'shape', []))}")
        return self._lookup_ids(ids, out)

    def read_now(self, token: int, out: np.ndarray) -> bool:
        """One token's rows decoded into out [L, m] (float32/float16) if its record is at hand without
        waiting for storage: in the LRU, or in the OS page cache (probed with preadv's RWF_NOWAIT,
        which fails rather than wait). False, out untouched, when the read would wait or the platform
        cannot tell: prefetch() it then. A decode loop's fast path: no thread hand-off, and no worker
        competing with the backbone's threads for cores when there is nothing to wait for."""
        try:
            tok = operator.index(token)
        except TypeError:
            raise PackTokenError(f"token id must be an int, got {type(token).__name__}") from None
        if not 0 <= tok < self.vocab_size:
            raise PackTokenError(f"token id {tok} out of range [0, {self.vocab_size})")
        if self._fd is None:
            raise PackError("pack is closed")
        h = self.header
        raw = np.empty((1, h.num_layers, h.row_bytes), dtype=np.uint8)
        if not self._gather_token(tok, raw.reshape(-1), nowait=True):
            return False
        pf.decode_rows(raw, h.dtype, h.d_mem, h.group_size, out.reshape(1, h.num_layers, h.d_mem))
        return True

    def prefetch(self, token_ids) -> PrefetchHandle:
        """Start the lookup of token_ids in a background thread; collect() it later."""
        ids = self._check_ids(token_ids).copy()
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(2, thread_name_prefix="meki-pack")
        fut = self._pool.submit(self.lookup, ids)
        return PrefetchHandle(ids, fut, time.perf_counter())

    def collect(self, handle: PrefetchHandle, out: np.ndarray | None = None) -> np.ndarray:
        """Wait for a prefetch; returns its rows [T, L, m] (copied into out if given).

        handle.waited_s records how long this call blocked (0 when the read was already done).
        """
        t0 = time.perf_counter()
        rows = handle.future.result()
        handle.waited_s = time.perf_counter() - t0
        if out is not None:
            out[...] = rows
            return out
        return rows

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim == 0:
            ids = ids.reshape(1)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise PackTokenError(f"token_ids must be a 1-D sequence of ints, got "
                                 f"{ids.dtype} shape {list(ids.shape)}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise PackTokenError(f"token id {bad} out of range [0, {self.vocab_size})")
        return ids

    def _lookup_ids(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self._fd is None:
            raise PackError("pack is closed")
        h = self.header
        raw = np.empty((ids.size, self._token_bytes), dtype=np.uint8)
        for i, tok in enumerate(ids.tolist()):
            self._gather_token(tok, raw[i])
        pf.decode_rows(raw.reshape(ids.size, h.num_layers, h.row_bytes), h.dtype, h.d_mem,
                       h.group_size, out)
        return out

    def _gather_token(self, tok: int, dst: np.ndarray, nowait: bool = False) -> bool:
        """Copy token tok's raw record [L * row_bytes] into dst, via the LRU cache. nowait: False
        (dst partly written, nothing cached) when a read would wait for storage."""
        if self.cache_bytes > 0:
            with self._lock:
                rec = self._cache.get(tok)
                if rec is not None:
                    self._cache.move_to_end(tok)
            if rec is not None:
                dst[:] = np.frombuffer(rec, dtype=np.uint8)
                return True
        h = self.header
        if h.layout == "token-major":
            if not self._read(h.data_offset + tok * h.record_stride, dst, nowait):
                return False
        else:
            rb = h.row_bytes
            for layer in range(h.num_layers):
                off = h.data_offset + (layer * h.vocab_size + tok) * rb
                if not self._read(off, dst[layer * rb:(layer + 1) * rb], nowait):
                    return False
        if self.cache_bytes > 0:
            self._cache_put(tok, dst.tobytes())
        return True

    def _cache_put(self, tok: int, rec: bytes) -> None:
        cost = len(rec) + _CACHE_ENTRY_OVERHEAD
        if cost > self.cache_bytes:
            return
        with self._lock:
            if tok in self._cache:
                return
            self._cache[tok] = rec
            self._cache_used += cost
            while self._cache_used > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cache_used -= len(old) + _CACHE_ENTRY_OVERHEAD

    def _read(self, off: int, dst: np.ndarray, nowait: bool = False) -> bool:
        """Read dst.size bytes at file offset off into dst, verifying the blocks touched.
        nowait: False when the bytes are not all in memory (nothing read waits for storage)."""
        h = self.header
        b0 = (off - h.data_offset) // h.block_size
        b1 = (off + dst.size - 1 - h.data_offset) // h.block_size
        if self.verify_on_read and not self._verified[b0:b1 + 1].all():
            start = h.data_offset + b0 * h.block_size
            n = (b1 - b0 + 1) * h.block_size
            blocks = self._read_span(start, n) if not nowait else np.empty(n, dtype=np.uint8)
            if nowait and not self._pread_nowait(start, blocks):
                return False
            self._check_blocks(b0, blocks)
            dst[:] = blocks[off - start: off - start + dst.size]
            return True
        if nowait:   # through the fd in both modes: a mapped page cannot say it would fault
            return self._pread_nowait(off, dst)
        if self._map is not None:
            self._check_still_whole()
            dst[:] = self._map[off: off + dst.size]
        else:
            n = os.preadv(self._fd, [dst], off)
            if n != dst.size:
                raise PackTruncatedError(f"short read at offset {off}: the file shrank")
        return True

    def _pread_nowait(self, off: int, dst: np.ndarray) -> bool:
        """preadv with RWF_NOWAIT: True when all of dst came from memory. A short read (part not
        in memory, or a shrunken file) is False too: the waiting read that follows tells them apart."""
        if not _RWF_NOWAIT:
            return False
        try:
            return os.preadv(self._fd, [dst], off, _RWF_NOWAIT) == dst.size
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):   # a file system without it
                return False
            raise

    def _check_still_whole(self) -> None:
        """mmap mode: refuse before touching a page if the file shrank (a page past the new end
        would raise SIGBUS and kill the process; Python cannot recover from that signal).
        One fstat per read; pread mode needs none (a short read is an error, not a signal)."""
        size = os.fstat(self._fd).st_size
        if size < self.file_size:
            raise PackTruncatedError(f"{self.path} shrank to {size} bytes while open (header says "
                                     f"{self.file_size}): refusing to read the mapping")

    def _read_span(self, start: int, n: int) -> np.ndarray:
        if self._map is not None:
            self._check_still_whole()
            if hasattr(self._mm, "madvise"):   # one readahead for the block, not a fault per page
                self._mm.madvise(mmap.MADV_WILLNEED, start, n)
            return self._map[start:start + n]
        buf = np.empty(n, dtype=np.uint8)
        if os.preadv(self._fd, [buf], start) != n:
            raise PackTruncatedError(f"short read at offset {start}: the file shrank")
        return buf

    def _check_blocks(self, first: int, blocks: np.ndarray) -> None:
        """blocks: uint8 [k * block_size] holding blocks first..first+k-1; raise on a mismatch."""
        bs = self.header.block_size
        for k in range(blocks.size // bs):
            b = first + k
            if self._verified[b]:
                continue
            if pf.checksum(blocks[k * bs:(k + 1) * bs]) != int(self._sums[b]):
                start = self.header.data_offset + b * bs
                raise PackChecksumError(f"{self.path}: data block {b} (bytes {start}..{start + bs}) does not "
                                        f"match its checksum: the pack is damaged")
            self._verified[b] = True

    # ------------------------------------------------------------ whole-pack checks, stats
    def verify(self) -> None:
        """Check every data block against its checksum; raises PackChecksumError naming the
        first bad block. Reads with pread in 8 MiB steps whatever the mode."""
        h = self.header
        step = max(1, (8 << 20) // h.block_size)
        for first in range(0, h.num_blocks, step):
            n = min(step, h.num_blocks - first)
            buf = np.empty(n * h.block_size, dtype=np.uint8)
            start = h.data_offset + first * h.block_size
            if os.preadv(self._fd, [buf], start) != buf.size:
                raise PackTruncatedError(f"short read at offset {start}: the file shrank")
            self._check_blocks(first, buf)

    def resident_bytes(self) -> int:
        """Bytes of this pack held in RAM for this process.

        mmap: pages of the mapping resident in the page cache (mincore). pread: the LRU cache
        plus the checksum table and verified-block map (the file's pages are not mapped).
        """
        own = self._cache_used + self._sums.nbytes + self._verified.nbytes
        if self._map is None:
            return own
        return _mincore_bytes(self._map) + own

    def cache_info(self) -> dict:
        """Entries and bytes in the LRU cache, and the configured limit."""
        return {"entries": len(self._cache), "bytes": self._cache_used, "limit": self.cache_bytes}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._map = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:   # a view is still alive (e.g. in a traceback): unmapped by GC
                pass
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "MemoryPack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MemoryPack({self.path!r}, V={self.vocab_size}, L={self.num_layers}, "
                f"m={self.d_mem}, {self.dtype}, {self.layout}, mode={self.mode})")


def _mincore_bytes(arr: np.ndarray) -> int:
    """Resident bytes of a page-aligned mapping (Linux/Android/macOS mincore); -1 if unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = mmap.PAGESIZE
        n_pages = (arr.size + page - 1) // page
        vec = (ctypes.c_ubyte * n_pages)()
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        if libc.mincore(ctypes.c_void_p(arr.ctypes.data), ctypes.c_size_t(arr.size), vec) != 0:
            return -1
        return int((np.frombuffer(vec, dtype=np.uint8) & 1).sum()) * page
    except (OSError, AttributeError):
        return -1


def verify_pack(path, expected_fingerprint: str | None = None) -> VerifyReport:
    """Full check of a pack (header, table, every block). Never raises for a bad pack: the
    report's ok is False and error names the problem."""
    t0 = time.perf_counter()
    rep = VerifyReport(path=str(path), ok=False)
    try:
        with MemoryPack.open(path, expected_fingerprint=expected_fingerprint,
                             cache_bytes=0) as p:
            h = p.header
            rep.version, rep.vocab_size, rep.num_layers, rep.d_mem = (
                pf.VERSION, h.vocab_size, h.num_layers, h.d_mem)
            rep.dtype, rep.layout, rep.fingerprint = h.dtype, h.layout, h.fingerprint
            rep.num_blocks, rep.file_size = h.num_blocks, h.file_size
            p.verify()
        rep.ok = True
    except PackError as e:
        rep.error = f"{type(e).__name__}: {e}"
    rep.seconds = time.perf_counter() - t0
    return rep
