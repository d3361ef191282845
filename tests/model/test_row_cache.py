"""The Python loop's decoded-row cache: LRU by bytes, shared arrays, 0 turns it off."""

import numpy as np

from mobile_runtime.row_cache import RowCache


def rows(v: float) -> np.ndarray:
    return np.full((1, 1, 2, 4), v, dtype=np.float32)  # 32 bytes


def test_hits_return_the_same_array_and_the_oldest_goes_first():
    cache = RowCache(budget_bytes=64)
    a = cache.put(1, rows(1.0))
    cache.put(2, rows(2.0))
    assert cache.get(1) is a                 # 1 is now the most recent
    cache.put(3, rows(3.0))                  # over budget: 2 (least recent) leaves
    assert 2 not in cache and 1 in cache and 3 in cache
    assert cache.get(2) is None


def test_zero_budget_keeps_nothing_and_a_repeat_put_keeps_the_first():
    off = RowCache(0)
    off.put(1, rows(1.0))
    assert 1 not in off
    cache = RowCache(64)
    first = cache.put(1, rows(1.0))
    cache.put(1, rows(9.0))
    assert cache.get(1) is first and float(first[0, 0, 0, 0]) == 1.0
