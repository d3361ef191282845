"""Memory pack round trips: every dtype and layout, both read modes, hypothesis over shapes."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import pack_format as pf
from mobile_runtime.pack import MemoryPack
from pipeline.pack_writer import write_pack

FP = "00112233445566778899aabbccddeeff"
DTYPES = ["fp16", "bf16", "int8", "int4"]


def _tables(v, n_layers, m, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((v, n_layers, m)) * scale).astype(np.float32)


def _check_error(dtype, x, got, group):
    """Assert got is within the dtype's rounding of x. x, got: [..., m]."""
    if dtype == "fp16":
        np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    elif dtype == "bf16":
        assert np.all(np.abs(got - x) <= np.abs(x) * 2.0**-8 + 1e-30)
    elif dtype == "int8":
        scale = np.abs(x).max(-1, keepdims=True) / 127
        assert np.all(np.abs(got - x) <= scale / 2 * (1 + 1e-5) + 1e-30)
    else:
        g = x.reshape(*x.shape[:-1], -1, group)
        step = np.abs(g).max(-1, keepdims=True) / 7
        err = np.abs(got.reshape(g.shape) - g)
        assert np.all(err <= step / 2 * (1 + 1e-5) + 1e-30)


@pytest.mark.parametrize("layout", ["token-major", "layer-major"])
@pytest.mark.parametrize("mode", ["pread", "mmap"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, dtype, mode, layout):
    x = _tables(300, 3, 32)
    x[5, 1] = 0.0                                # an all-zero row (scale 0)
    path = write_pack(tmp_path / "t.mekipack", x, fingerprint=FP, dtype=dtype, group_size=8,
                      layout=layout, block_size=4096, chunk_tokens=77)
    with MemoryPack.open(path, mode=mode, cache_bytes=4096) as pack:
        assert (pack.vocab_size, pack.num_layers, pack.d_mem) == (300, 3, 32)
        assert (pack.dtype, pack.fingerprint, pack.layout) == (dtype, FP, layout)
        assert pack.file_size == path.stat().st_size
        ids = np.arange(300)
        got = pack.lookup(ids)
        assert got.dtype == np.float32 and got.shape == (300, 3, 32)
        _check_error(dtype, x, got, 8)
        np.testing.assert_array_equal(got[5, 1], 0.0)
        again = pack.lookup(ids[::-1])           # cache hits and misses give the same rows
        np.testing.assert_array_equal(again, got[::-1])
        half = np.empty((4, 3, 32), np.float16)
        pack.lookup_into([7, 7, 299, 0], half)
        np.testing.assert_array_equal(half, got[[7, 7, 299, 0]].astype(np.float16))
        pack.verify()


def test_list_of_layer_tables_equals_stacked(tmp_path):
    x = _tables(50, 2, 16)
    a = write_pack(tmp_path / "a", x, fingerprint=FP)
    b = write_pack(tmp_path / "b", [x[:, 0], x[:, 1]], fingerprint=FP)
    assert a.read_bytes() == b.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v=st.integers(1, 200), n_layers=st.integers(1, 4), m8=st.integers(1, 6),
       dtype=st.sampled_from(DTYPES), chunk=st.integers(1, 64), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_round_trip_shapes(tmp_path_factory, v, n_layers, m8, dtype, chunk, seed, scale):
    m = 8 * m8
    group = 8 if m % 16 else 16
    x = _tables(v, n_layers, m, seed, scale)
    path = write_pack(tmp_path_factory.mktemp("h") / "p", x, fingerprint=FP, dtype=dtype,
                      group_size=group, block_size=4096, chunk_tokens=chunk)
    with MemoryPack.open(path) as pack:
        ids = np.random.default_rng(seed).integers(0, v, size=min(v, 20))
        _check_error(dtype, x[ids], pack.lookup(ids), group)


def test_codecs_match_reference_formulas():
    x = np.array([[1.0, -2.0, 0.5, 127.0, -127.0, 0.0, 3.3, -0.01]], np.float32)
    q, s = pf.quantize_int8(x)
    assert s[0] == np.float32(1.0) and list(q[0]) == [1, -2, 0, 127, -127, 0, 3, 0]
    packed, s4 = pf.quantize_int4(x, 8)
    nib = np.stack([packed & 15, packed >> 4], -1).reshape(1, 8).astype(int) - 8
    np.testing.assert_array_equal(nib[0], np.clip(np.rint(x[0] / s4[0, 0]), -7, 7))
    bits = pf.float_to_bf16_bits(np.array([1.0, 1.00390625, 1.01171875], np.float32))
    assert list(bits) == [0x3F80, 0x3F80, 0x3F82]   # ties round to even
