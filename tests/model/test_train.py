"""training.train on the fake config and a synthetic token folder: learning, exact resume, DDP (gloo, 2 ranks)."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.config import ConfigError, fake
from training.data import META_FORMAT, TOKEN_DTYPE
from contract.atomic import OutputExistsError
from pipeline.model import MekiModel
from pipeline.checkpoint import load_checkpoint
from pipeline.safe_load import safe_torch_load
from training.train import TrainConfig, lr_at, param_groups, train

VOCAB = 128


def _tokens(n: int, seed: int) -> np.ndarray:
    """A noisy bigram chain: next = (5 * prev + 3) % V nine times in ten, so the loss can fall fast."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    out[0] = 1
    noise = rng.random(n) < 0.1
    rand = rng.integers(0, VOCAB, n)
    for i in range(1, n):
        out[i] = rand[i] if noise[i] else (5 * out[i - 1] + 3) % VOCAB
    return out.astype(TOKEN_DTYPE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    files = {}
    for name, n, seed in (("train", 20_000, 0), ("val", 2_000, 1)):
        (d / f"{name}.bin").write_bytes(_tokens(n, seed).tobytes())
        files[name] = {"file": f"{name}.bin", "tokens": n, "docs": 1, "bytes": 2 * n, "sha256": ""}
    meta = {"format": META_FORMAT, "dtype": "uint16", "vocab_size": VOCAB, "eot_id": 0, "files": files,
            "split": {}, "corpus": {}, "bytes_per_token": 1.0, "max_train_tokens": None}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def _tcfg(**kw) -> TrainConfig:
    base = dict(seed=3, batch_size=4, seq_len=32, max_steps=8, lr=1e-2, warmup_steps=2, log_interval=1,
                eval_interval=4, eval_batches=2, ckpt_interval=0, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def _train_losses(path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in _log(path) if "train_loss" in r}


def _weights(path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(path / "last" / "model")
    return model.state_dict()


def test_lr_schedule_and_decay_groups():
    cfg = _tcfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    model = MekiModel(fake())
    decay, keep = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "layers.0.ffn.w_up.weight" in decayed and "layers.0.memory.dyn.w_down.weight" in decayed
    assert not any(k in n for n in decayed for k in ("embed", "table", "norm", "alpha", "beta"))
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})


def test_learns_and_resumes_exactly(data_dir, tmp_path):
    full = train(fake(), _tcfg(), data_dir, tmp_path / "full")
    losses = _train_losses(tmp_path / "full")
    assert full.step == 8 and full.tokens == 8 * 4 * 32
    assert losses[8] < losses[1] - 0.5 and full.val_loss < 4.0
    assert sum("val_loss" in r for r in _log(tmp_path / "full")) == 2  # steps 4 and 8

    part = train(fake(), _tcfg(stop_after=5), data_dir, tmp_path / "split")
    assert part.step == 5
    with pytest.raises(OutputExistsError):
        train(fake(), _tcfg(), data_dir, tmp_path / "split", resume=False)
    train(fake(), _tcfg(), data_dir, tmp_path / "split")
    split = _train_losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 9))  # the log continues, no duplicate lines
    for step in range(1, 9):
        assert split[step] == pytest.approx(losses[step], abs=1e-6, rel=0), step
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data_dir, tmp_path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # one process group for three runs (one spawn is the slow part); train() then leaves it alone
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train(fake(), _tcfg(max_steps=6), data_dir, tmp_path / "full")
        train(fake(), _tcfg(max_steps=6, stop_after=3), data_dir, tmp_path / "split")
        train(fake(), _tcfg(max_steps=6), data_dir, tmp_path / "split")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_gloo(data_dir, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), data_dir, tmp_path), nprocs=2, join=True)
    full, split = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "split")
    assert sorted(full) == sorted(split) == list(range(1, 7))  # rank 0 logs, once per step
    assert full[6] < full[1]
    for step in full:
        assert split[step] == pytest.approx(full[step], abs=1e-5, rel=0), step
    state = safe_torch_load(tmp_path / "full" / "last" / "state.pt")  # what resume reads: no pickled code
    assert state["world"] == 2 and len(state["rng"]) == 2 and state["tokens"] == 6 * 4 * 32 * 2
    # the two ranks sampled different windows (rank-aware data streams)
    assert state["rng"][0]["data"] != state["rng"][1]["data"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)


def test_cli_train_verb(data_dir, tmp_path):
    from pipeline.checkpoint import load_checkpoint
    from meki.cli import main

    args = ["train", str(tmp_path / "run"), "--data", str(data_dir), "--preset", "fake", "--d-mem", "8",
            "--set", "max_steps=3", "--set", "batch_size=2", "--set", "seq_len=16", "--set", "device=cpu",
            "--set", "progress=false", "--set", "eval_batches=1"]
    assert main(args) == 0
    model, _ = load_checkpoint(tmp_path / "run" / "last" / "model")
    assert model.cfg.d_mem == 8 and model.cfg.name == "fake"
    assert main(args[:-2] + ["--set", "colour=1"]) == 2  # unknown TrainConfig key, named
