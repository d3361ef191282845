"""Folding a checkpoint on disk, streamed: same tables as in memory, same logits as the train form."""

import pytest
import torch
from safetensors import safe_open

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.fold import fold_checkpoint, fold_model, load_tables
from tests.test_model import TOKENS, random_model


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
