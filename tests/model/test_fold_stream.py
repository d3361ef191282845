"""Folding a checkpoint on disk, streamed: same tables as in memory, same logits as the train form."""

import pytest
import torch
from safetensors import safe_open

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.fold import fold_checkpoint, fold_model, load_tables
from tests.model.helpers import TOKENS, random_model


@pytest.mark.parametrize("variant", ["paper", "megatron"])
def test_fold_checkpoint_streams_the_same_tables(tmp_path, variant):
    model = random_model(variant=variant)
    info = save_checkpoint(model, tmp_path / "train")
    out = fold_checkpoint(tmp_path / "train", tmp_path / "folded", chunk_size=50, progress=False)
    assert out.fingerprint == info.fingerprint and out.tables == "tables.safetensors"
    tables = load_tables(tmp_path / "folded")
    _, ref_tables = fold_model(model)
    assert abs(tables - ref_tables).max() == 0.0
    folded, _ = load_checkpoint(tmp_path / "folded")
    with torch.no_grad():
        got = folded(TOKENS, meki_rows=torch.from_numpy(tables)[TOKENS])
        assert (got - model(TOKENS)).abs().max().item() <= 1e-5
    with safe_open(str(tmp_path / "folded" / "tables.safetensors"), framework="pt") as fh:  # the real reader agrees
        assert torch.equal(fh.get_tensor("layers.1.table"), torch.from_numpy(ref_tables[:, 1]))


def test_fold_refuses_to_overwrite_and_dense(tmp_path):
    save_checkpoint(random_model(), tmp_path / "train")
    fold_checkpoint(tmp_path / "train", tmp_path / "folded", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        fold_checkpoint(tmp_path / "train", tmp_path / "folded", progress=False)
    save_checkpoint(random_model(memory="none"), tmp_path / "dense")
    with pytest.raises(ValueError, match="nothing to fold"):
        fold_checkpoint(tmp_path / "dense", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("dtype,tol", [("fp16", 1e-2), ("int8", 5e-2)])
def test_fold_straight_into_a_memory_pack(tmp_path, dtype, tol):
    from mobile_runtime.pack import MemoryPack

    model = random_model()
    info = save_checkpoint(model, tmp_path / "train")
    fold_checkpoint(tmp_path / "train", tmp_path / "folded", chunk_size=50, progress=False, pack_dtype=dtype)
    _, ref = fold_model(model)
    with MemoryPack.open(tmp_path / "folded" / "tables.mekipack", expected_fingerprint=info.fingerprint) as pack:
        assert pack.dtype == dtype
        got = pack.lookup(list(range(128)))
    assert abs(got - ref).max() <= tol * abs(ref).max()
    assert abs(load_tables(tmp_path / "folded") - got).max() == 0.0


def test_cli_pack_and_verify(tmp_path):
    from meki.cli import main

    save_checkpoint(random_model(), tmp_path / "train")
    assert main(["fold", str(tmp_path / "train"), str(tmp_path / "folded")]) == 0
    assert main(["pack", str(tmp_path / "folded" / "tables.safetensors"), str(tmp_path / "t.mekipack"), "--dtype", "int4", "--group-size", "8"]) == 0
    assert main(["verify-pack", str(tmp_path / "t.mekipack")]) == 0
    data = bytearray((tmp_path / "t.mekipack").read_bytes())
    data[-5] ^= 0x10
    (tmp_path / "t.mekipack").write_bytes(bytes(data))
    assert main(["verify-pack", str(tmp_path / "t.mekipack")]) == 1
