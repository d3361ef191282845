"""Memory pack reader behaviour: LRU cache bound, prefetch/collect, verified-block memo, stats."""
import threading

import numpy as np
import pytest

from mobile_runtime.pack import MemoryPack, verify_pack
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


def test_cached_says_whether_a_lookup_reads_storage(packed):
    path, _ = packed
    with MemoryPack.open(path, cache_bytes=50_000) as pack:
        assert not pack.cached([7])
        pack.lookup([7])
        assert pack.cached([7]) and not pack.cached([7, 8])
    with MemoryPack.open(path, cache_bytes=0) as pack:
        pack.lookup([7])
        assert not pack.cached([7])  # no cache: every lookup reads


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
