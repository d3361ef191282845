"""Dequantised decode rows of recently generated tokens, for the Python loop's single-token step.

The pack's own LRU keeps raw records (what storage would return); a hit there still costs the id
checks, a lock, a copy and the dequantisation: ~35 us per step in numpy, 5% of the demo model's step.
Generated text reuses a small set of tokens, so the loop keeps their decoded rows [1, 1, L, m] too,
shared between steps (runners only read their inputs; left writeable because torch.from_numpy warns
on a read-only array): a hit is one dict lookup.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class RowCache:
    """LRU of token id -> float32 rows, bounded by bytes (0 disables it)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()
        self._used = 0

    def __contains__(self, token: int) -> bool:
        return token in self._rows

    def get(self, token: int) -> np.ndarray | None:
        rows = self._rows.get(token)
        if rows is not None:
            self._rows.move_to_end(token)
        return rows

    def put(self, token: int, rows: np.ndarray) -> np.ndarray:
        """Keep rows for token; returns them."""
        if rows.nbytes > self.budget_bytes or token in self._rows:
            return rows
        self._rows[token] = rows
        self._used += rows.nbytes
        while self._used > self.budget_bytes:
            _, old = self._rows.popitem(last=False)
            self._used -= old.nbytes
        return rows
