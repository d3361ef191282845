"""Memory pack reader behaviour: LRU cache bound, prefetch/collect, verified-block memo, stats."""
import os
import threading

import numpy as np
import pytest

from mobile_runtime.pack import MemoryPack, PackChecksumError, PackTokenError, verify_pack
from pipeline.pack_writer import write_pack

FP = "00112233445566778899aabbccddeeff"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    x = np.random.default_rng(3).standard_normal((500, 4, 32)).astype(np.float32)
    path = write_pack(tmp_path_factory.mktemp("r") / "p.mekipack", x, fingerprint=FP,
                      block_size=4096)
    with MemoryPack.open(path, cache_bytes=0) as p:
        return path, p.lookup(np.arange(500))


def test_cache_is_bounded_and_lru(packed):
    path, ref = packed
    with MemoryPack.open(path, cache_bytes=10_000) as pack:
        rng = np.random.default_rng(0)
        for tok in rng.integers(0, 500, 2000):
            np.testing.assert_array_equal(pack.lookup([tok])[0], ref[tok])
            assert pack.cache_info()["bytes"] <= 10_000
        info = pack.cache_info()
        assert info["entries"] >= 1
        hot = list(pack._cache)[-1]
        pack.lookup([hot])
        assert list(pack._cache)[-1] == hot


def test_prefetch_collect(packed):
    path, ref = packed
    with MemoryPack.open(path, mode="mmap") as pack:
        handles = [pack.prefetch([t, t + 1]) for t in range(0, 400, 40)]
        for i, h in enumerate(handles):
            out = np.empty((2, 4, 32), np.float16)
            pack.collect(h, out)
            assert h.waited_s is not None and h.waited_s >= 0
            np.testing.assert_array_equal(out, ref[[40 * i, 40 * i + 1]].astype(np.float16))


@pytest.mark.parametrize("layout", ["token-major", "layer-major"])
@pytest.mark.parametrize("mode", ["pread", "mmap"])
def test_read_now_reads_what_is_in_memory(tmp_path, layout, mode):
    x = np.random.default_rng(5).standard_normal((300, 3, 64)).astype(np.float32)
    path = write_pack(tmp_path / "p.mekipack", x, fingerprint=FP, layout=layout, dtype="int4",
                      block_size=4096)  # just written: in the page cache
    with MemoryPack.open(path, mode=mode, cache_bytes=0) as ref, MemoryPack.open(path, mode=mode) as pack:
        for tok in (0, 7, np.int64(299), 7):  # the second 7 from the LRU
            out = np.empty((3, 64), np.float32)
            assert pack.read_now(tok, out)
            np.testing.assert_array_equal(out, ref.lookup([tok])[0])
        assert pack._pool is None  # no worker thread was started
        for bad in (-1, 300, 2.0, "7"):
            with pytest.raises(PackTokenError):
                pack.read_now(bad, out)


def test_read_now_declines_a_read_that_would_wait(packed, monkeypatch):
    """Storage that is not in memory (RWF_NOWAIT -> EAGAIN, as the kernel answers for a cold page):
    False, nothing cached, and the blocking lookup still reads it."""
    path, ref = packed
    real = os.preadv

    def cold(fd, buffers, offset, flags=0):
        if flags:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(fd, buffers, offset)

    monkeypatch.setattr("mobile_runtime.pack.os.preadv", cold)
    with MemoryPack.open(path) as pack:
        out = np.full((4, 32), 7.0, np.float32)
        assert not pack.read_now(11, out) and (out == 7.0).all()
        assert pack.cache_info()["entries"] == 0 and not pack._verified.any()
        np.testing.assert_array_equal(pack.lookup([11])[0], ref[11])
        assert pack.read_now(11, out)  # now in the LRU
        np.testing.assert_array_equal(out, ref[11])


def test_read_now_checks_the_block(tmp_path):
    x = np.random.default_rng(6).standard_normal((200, 2, 32)).astype(np.float32)
    path = write_pack(tmp_path / "p.mekipack", x, fingerprint=FP, block_size=4096)
    with MemoryPack.open(path) as pack:
        off = pack.header.data_offset + 5 * pack.header.record_stride
    data = bytearray(path.read_bytes())
    data[off + 6] ^= 0xFF
    path.write_bytes(bytes(data))
    with MemoryPack.open(path) as pack:
        with pytest.raises(PackChecksumError, match="block 0"):
            pack.read_now(5, np.empty((2, 32), np.float32))


def test_concurrent_lookups_agree(packed):
    path, ref = packed
    errors = []
    with MemoryPack.open(path, cache_bytes=50_000) as pack:
        def work(seed):
            ids = np.random.default_rng(seed).integers(0, 500, 300)
            if not np.array_equal(pack.lookup(ids), ref[ids]):
                errors.append(seed)
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert not errors


def test_blocks_verified_once_and_stats(packed):
    path, _ = packed
    with MemoryPack.open(path, mode="mmap", cache_bytes=0) as pack:
        assert not pack._verified.any()
        pack.lookup([0])
        assert pack._verified[0] and pack._verified.sum() == 1
        pack.verify()
        assert pack._verified.all()
        assert pack.resident_bytes() > 0
    rep = verify_pack(path, expected_fingerprint=FP)
    assert rep.ok and rep.vocab_size == 500 and rep.dtype == "int8" and rep.error is None
    assert not verify_pack(path, expected_fingerprint="1" * 32).ok
