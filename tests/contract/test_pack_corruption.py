"""Damaged packs are always refused with a PackError: bit flips anywhere, truncation anywhere.

Every byte of a v1 pack is covered: the header by its checksum, the header padding by the
all-zero rule, data (scales and values) by block checksums, the block table by its checksum.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import pack_format as pf
from mobile_runtime.pack import MemoryPack, PackChecksumError, PackError, verify_pack
from pipeline.pack_writer import write_pack

FP = "00112233445566778899aabbccddeeff"
V, L, M = 300, 2, 16


@pytest.fixture(scope="module", params=["int8", "int4"])
def pack(request, tmp_path_factory):
    x = np.random.default_rng(1).standard_normal((V, L, M)).astype(np.float32)
    path = write_pack(tmp_path_factory.mktemp("c") / "good.mekipack", x, fingerprint=FP,
                      dtype=request.param, group_size=8, block_size=4096)
    with MemoryPack.open(path) as p:
        return path.read_bytes(), p.header


def _regions(h: pf.PackHeader):
    """(name, [start, end)) byte ranges of a pack; 'scales' are the scale bytes of rows."""
    n_scale = 4 * pf.num_scales(h.dtype, h.d_mem, h.group_size)
    rows = h.data_offset + np.arange(V * L) * h.row_bytes
    scales = (rows[:, None] + np.arange(n_scale)).ravel()
    values = (rows[:, None] + np.arange(n_scale, h.row_bytes)).ravel()
    return {"header": np.arange(0, pf.HEADER_SIZE),
            "header_padding": np.arange(pf.HEADER_SIZE, h.data_offset),
            "scales": scales, "values": values,
            "data_padding": np.arange(h.data_offset + V * L * h.row_bytes, h.table_offset),
            "table": np.arange(h.table_offset, h.file_size)}


def _refused(tmp_path, data: bytes) -> str:
    """Open, look up every token in both modes and verify; return the PackError message.

    Any exception other than PackError (a crash) propagates and fails the test."""
    path = tmp_path / "bad.mekipack"
    path.write_bytes(data)
    errors = []
    for mode in ("pread", "mmap"):
        try:
            with MemoryPack.open(path, mode=mode, cache_bytes=1 << 16) as p:
                p.lookup(np.arange(V))
        except PackError as e:
            errors.append(str(e))
    try:
        with MemoryPack.open(path) as p:
            p.verify()
    except PackError as e:
        errors.append(str(e))
    assert len(errors) == 3, "damaged pack was accepted"
    assert not verify_pack(path).ok
    return errors[0]


@pytest.mark.parametrize("region", ["header", "header_padding", "scales", "values",
                                    "data_padding", "table"])
def test_bit_flips_refused(tmp_path, pack, region):
    data, h = pack
    offsets = _regions(h)[region]
    rng = np.random.default_rng(abs(hash(region)) % 2**32)
    for off in rng.choice(offsets, size=min(25, offsets.size), replace=False):
        bad = bytearray(data)
        bad[int(off)] ^= 1 << int(rng.integers(8))
        msg = _refused(tmp_path, bytes(bad))
        assert msg


def test_data_flip_names_the_block(tmp_path, pack):
    data, h = pack
    off = h.data_offset + 2 * h.block_size + 100
    bad = bytearray(data)
    bad[off] ^= 0x10
    (tmp_path / "b").write_bytes(bytes(bad))
    with MemoryPack.open(tmp_path / "b") as p:
        with pytest.raises(PackChecksumError, match="data block 2 "):
            p.verify()
        p.lookup([0])                                  # undamaged blocks still read
        tok = (off - h.data_offset) // (L * h.row_bytes)
        with pytest.raises(PackChecksumError, match="data block 2 "):
            p.lookup([tok])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_bit_flip_refused(tmp_path, pack, frac, bit):
    data, _ = pack
    bad = bytearray(data)
    bad[int(frac * len(data))] ^= 1 << bit
    _refused(tmp_path, bytes(bad))


def test_truncation_refused(tmp_path, pack):
    data, _ = pack
    rng = np.random.default_rng(7)
    cuts = [0, 1, 7, 127, 128, len(data) - 1] + list(rng.integers(0, len(data), 40))
    for cut in cuts:
        assert "bytes" in _refused(tmp_path, data[:int(cut)])
    assert "extra bytes" in _refused(tmp_path, data + b"\0")
