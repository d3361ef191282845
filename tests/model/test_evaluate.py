"""`meki eval`: held-out loss through every export step of small bundles (ExecuTorch, int8 pack, 8da4w).

The model is the fake preset with a 512-token vocabulary (a BPE needs > 256): the tiny preset
exports the same graph but several times slower on the 2-core CI machine."""
import json
import math

import numpy as np
import pytest

from contract.manifest import BundleError
from training import data
from pipeline.checkpoint import save_checkpoint
from meki.cli import main
from pipeline.config import fake
from pipeline.evaluate import EvalConfig, evaluate_bundles, val_windows
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from pipeline.model import MekiModel, init_weights

_WORDS = "the pack holds one row per token and the runtime reads it while attention runs".split()


def _data_dir(root, vocab: int, seed: int):
    src = root / "html"
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(30):
        paras = "".join(f"<p>{' '.join(rng.choice(_WORDS, 12))}.</p>" for _ in range(8))
        (src / f"p{i:02d}.html").write_text(f"<html><body><div role='main'>{paras}</div></body></html>")
    return data.prepare_data(root / "data", [src], vocab_size=vocab, val_fraction=0.3) and root / "data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data_dir = _data_dir(root / "d1", 400, 0)
    save_checkpoint(init_weights(MekiModel(fake().replace(vocab_size=512)), seed=3, std=0.05), root / "ck")
    settings = ExportSettings(quant="8da4w", max_seq_len=32, prefill_len=8)
    export_bundles(root / "ck", root / "out", ["executorch-xnnpack"], settings, pack_dtype="int8",
                   tokenizer=data_dir / "tokenizer.json")
    return root, data_dir


def test_every_step_scored_and_close(setup):
    root, data_dir = setup
    cfg = EvalConfig(windows=3, window_len=16, progress=False)
    meki, dense = evaluate_bundles([root / "out" / "meki", root / "out" / "dense"], data_dir, cfg, [root / "ck"])
    steps = [s.stage for s in meki.stages]
    assert steps == ["train-form", "folded", "pack-int8", "quant-8da4w", "executorch-xnnpack"]
    assert all(s.tokens == 3 * 16 for s in meki.stages)
    by = {s.stage: s for s in meki.stages}
    assert abs(by["folded"].loss - by["train-form"].loss) < 1e-4  # folding is exact
    assert abs(by["pack-int8"].delta_pct) < 0.5
    # the artifact runs the same quantised weights as the eager quant step
    assert abs(by["executorch-xnnpack"].loss - by["quant-8da4w"].loss) < 0.01 * by["quant-8da4w"].loss
    assert math.isclose(by["executorch-xnnpack"].ppl, math.exp(by["executorch-xnnpack"].loss))
    assert [s.stage for s in dense.stages][-1] == "executorch-xnnpack"


def test_windows_cover_val_evenly(setup):
    _, data_dir = setup
    wins = list(val_windows(data_dir, EvalConfig(windows=4), 8))
    n = len(np.memmap(data_dir / "val.bin", dtype=np.uint16))
    assert len(wins) == 4 and all(len(w) == 9 for w in wins)
    assert wins[0][0] == np.memmap(data_dir / "val.bin", dtype=np.uint16)[0] and n > 40


def test_refuses_other_tokenizer(setup, tmp_path):
    root, _ = setup
    other = _data_dir(tmp_path, 280, 1)
    with pytest.raises(BundleError, match="tokenizer differs"):
        evaluate_bundles([root / "out" / "meki"], other, EvalConfig(windows=1, window_len=8, progress=False))


def test_cli_table_and_json(setup, tmp_path, capsys):
    root, data_dir = setup
    out = tmp_path / "eval.json"
    rc = main(["eval", str(root / "out" / "meki"), "--data", str(data_dir), "--windows", "1",
               "--window-len", "8", "--checkpoint", str(root / "ck"), "--json", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert got["bundles"][0]["stages"][-1]["stage"] == "executorch-xnnpack"
    assert "pack-int8" in capsys.readouterr().out
