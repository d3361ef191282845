"""Memory pack writer and reader refuse bad input with clear errors; writes are atomic."""
import os

import numpy as np
import pytest

from mobile_runtime.pack import (MemoryPack, PackError, PackFingerprintError, PackFormatError,
                                 PackTokenError, verify_pack)
from pipeline.pack_writer import (PackIncompleteError, PackRowsError, PackWriteError, PackWriter,
                                  write_pack)

FP = "00112233445566778899aabbccddeeff"


def _writer(path, **kw):
    args = dict(vocab_size=10, num_layers=2, d_mem=8, dtype="int8", fingerprint=FP,
                progress=False)
    return PackWriter(path, **{**args, **kw})


def _rows(c, val=1.0):
    return np.full((c, 2, 8), val, np.float32)


@pytest.mark.parametrize("bad, match", [
    (lambda w: w.write(1, _rows(3)), "gap"),
    (lambda w: (w.write(0, _rows(3)), w.write(2, _rows(3))), "overlap"),
    (lambda w: w.write(0, _rows(11)), "past vocab_size"),
    (lambda w: w.write(0, np.ones((3, 2, 9), np.float32)), "shape"),
    (lambda w: w.write(0, np.ones((3, 16))), "shape"),
    (lambda w: w.write(0, np.ones((3, 2, 8), np.int32)), "float"),
    (lambda w: w.write(0, _rows(3, np.nan)), "token 0 has NaN/Inf"),
    (lambda w: (w.write(0, _rows(4)), w.write(4, np.where(np.arange(3)[:, None, None] == 2,
                                                          np.inf, _rows(3)))), "token 6"),
])
def test_bad_chunks_raise_and_leave_nothing(tmp_path, bad, match):
    path = tmp_path / "p.mekipack"
    with pytest.raises(PackRowsError, match=match):
        with _writer(path) as w:
            bad(w)
    assert os.listdir(tmp_path) == []          # temp file removed, nothing at path


def test_too_few_rows(tmp_path):
    with pytest.raises(PackIncompleteError, match="only 9 of vocab_size=10"):
        with _writer(tmp_path / "p") as w:
            w.write(0, _rows(9))
    assert os.listdir(tmp_path) == []


def test_exception_inside_with_removes_temp(tmp_path):
    with pytest.raises(KeyError):
        with _writer(tmp_path / "p") as w:
            w.write(0, _rows(5))
            raise KeyError("folding crashed")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype, val", [("fp16", 7e4), ("bf16", np.inf)])
def test_float_overflow(tmp_path, dtype, val):
    with pytest.raises(PackRowsError):
        with _writer(tmp_path / "p", dtype=dtype) as w:
            w.write(0, _rows(10, val))


@pytest.mark.parametrize("kw, match", [
    (dict(dtype="int3"), "unknown dtype"), (dict(d_mem=12), "multiple of 8"),
    (dict(dtype="int4", group_size=3), "group_size"), (dict(fingerprint="ABC"), "fingerprint"),
    (dict(block_size=5000), "block_size"), (dict(vocab_size=0), "vocab_size"),
    (dict(layout="diagonal"), "layout")])
def test_bad_settings(tmp_path, kw, match):
    with pytest.raises(PackWriteError, match=match):
        _writer(tmp_path / "p", **kw)


def test_no_overwrite_unless_told(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _writer(path)
    assert path.read_bytes() == b"keep me"
    write_pack(path, _rows(10), fingerprint=FP, overwrite=True)
    assert MemoryPack.open(path).vocab_size == 10
    assert oct(path.stat().st_mode & 0o777) != "0o600"


def test_reader_errors(tmp_path):
    path = write_pack(tmp_path / "p", _rows(10), fingerprint=FP)
    with pytest.raises(PackFingerprintError, match="another model"):
        MemoryPack.open(path, expected_fingerprint="f" * 32)
    with pytest.raises(PackError, match="cannot open"):
        MemoryPack.open(tmp_path / "missing")
    with pytest.raises(ValueError, match="mode"):
        MemoryPack.open(path, mode="aio")
    with MemoryPack.open(path, expected_fingerprint=FP) as pack:
        for ids in ([10], [-1], [0, 3, 99]):
            with pytest.raises(PackTokenError, match="out of range"):
                pack.lookup(ids)
        with pytest.raises(PackTokenError, match="ints"):
            pack.lookup([1.5])
        with pytest.raises(ValueError, match="out must be"):
            pack.lookup_into([1], np.empty((1, 2, 8), np.float64))
        assert pack.lookup([]).shape == (0, 2, 8)
    with pytest.raises(PackError, match="closed"):
        pack.lookup([1])


def test_unknown_version_is_named(tmp_path):
    from contract import pack_format as pf
    path = write_pack(tmp_path / "p", _rows(10), fingerprint=FP)
    data = bytearray(path.read_bytes())
    data[8:12] = (2).to_bytes(4, "little")
    body = bytes(data[:pf.HEADER_CHECKSUM_OFFSET])
    data[120:128] = pf.checksum(body).to_bytes(8, "little")   # a well-formed v2 header
    path.write_bytes(bytes(data))
    with pytest.raises(PackFormatError, match="unsupported pack version 2"):
        MemoryPack.open(path)
    rep = verify_pack(path)
    assert not rep.ok and "version 2" in rep.error


def test_not_a_pack(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"PK\x03\x04" + bytes(20000))
    with pytest.raises(PackFormatError, match="not a MeKi memory pack"):
        MemoryPack.open(path)


def test_pack_tables_file(tmp_path):
    from safetensors.numpy import save_file

    from pipeline.pack_writer import pack_tables_file
    x = np.random.default_rng(0).standard_normal((70, 3, 16)).astype(np.float32)
    save_file({f"layers.{i}.table": x[:, i].copy() for i in range(3)}, tmp_path / "t.safetensors",
              metadata={"fingerprint": FP})
    out = pack_tables_file(tmp_path / "t.safetensors", tmp_path / "p", dtype="fp16",
                           chunk_tokens=32, progress=False)
    with MemoryPack.open(out, expected_fingerprint=FP) as pack:
        np.testing.assert_array_equal(pack.lookup(np.arange(70)), x.astype(np.float16))


def test_pack_errors_name_the_file_and_the_field(tmp_path):
    """A header finding says which pack and which field (not a tuple of raw values); a damaged block says
    which pack too (what `meki run` prints when a lookup meets it)."""
    import shutil
    from pathlib import Path

    from mobile_runtime.pack import PackChecksumError
    src = Path(__file__).resolve().parents[2] / "conformance/golden/golden_int8_token.mekipack"
    pack = tmp_path / "p.mekipack"
    shutil.copyfile(src, pack)
    with MemoryPack.open(pack) as p:
        first = p.header.data_offset
    raw = bytearray(pack.read_bytes())
    raw[first + 3] ^= 0xFF
    pack.write_bytes(bytes(raw))
    with MemoryPack.open(pack) as p, pytest.raises(PackChecksumError, match=f"^{pack}: data block 0"):
        p.lookup([0])
    import contract.pack_format as pf
    raw = bytearray(src.read_bytes())
    fields = list(pf._HEADER_STRUCT.unpack_from(raw, 0))
    fields[-1] = b"\x01" * 16                                  # the reserved bytes: not zero
    body = pf._HEADER_STRUCT.pack(*fields)
    raw[:pf.HEADER_SIZE] = body + pf.struct.pack("<Q", pf.checksum(body))   # a header that checks out
    pack.write_bytes(bytes(raw))
    with pytest.raises(PackFormatError) as err:
        MemoryPack.open(pack)
    assert str(err.value) == f"{pack}: inconsistent header fields: reserved={'01' * 16} (expected {'00' * 16})"
