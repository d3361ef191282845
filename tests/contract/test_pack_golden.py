"""The committed golden packs read back to the committed rows, and the writer reproduces them."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mobile_runtime.pack import MemoryPack
from pipeline.pack_writer import write_pack

GOLDEN = Path(__file__).resolve().parents[2] / "conformance" / "golden"
SPEC = json.loads((GOLDEN / "pack_golden.json").read_text())


@pytest.mark.parametrize("entry", SPEC["packs"], ids=lambda e: e["file"])
def test_golden_pack(tmp_path, entry):
    path = GOLDEN / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    with MemoryPack.open(path, expected_fingerprint=SPEC["fingerprint"]) as pack:
        assert (pack.dtype, pack.layout) == (entry["dtype"], entry["layout"])
        pack.verify()
        got = pack.lookup(SPEC["tokens"])
    for i, t in enumerate(SPEC["tokens"]):
        np.testing.assert_array_equal(got[i], np.asarray(entry["rows"][str(t)], np.float32))
    # the writer is deterministic: same input, same bytes
    import sys
    sys.path.insert(0, str(GOLDEN))
    from make_golden import BLOCK, GROUP, golden_tables
    again = write_pack(tmp_path / "p", golden_tables(), fingerprint=SPEC["fingerprint"],
                       dtype=entry["dtype"], group_size=GROUP, layout=entry["layout"],
                       block_size=BLOCK)
    assert again.read_bytes() == path.read_bytes()
