"""GPU runs for issue 14: the shipped demo pair (MeKi + dense twin) and a larger evidence pair.

    python3 benchmarks/train_demo.py demo  --data DATA --work /tmp/td --out $OUT --tokens 60e6
    python3 benchmarks/train_demo.py large --data DATA --work /tmp/td --out $OUT --budget-s 500
    python3 benchmarks/train_demo.py demo  --data DATA --work /tmp/td --out /tmp/o --smoke   # CPU check

`demo` trains, at a fixed token count, dense and MeKi twins of the demo backbone (6 x 256): MeKi
with the paper's table width (d_mem = d / 8, MEKI.md Table 5) and with twice that, each at two seeds,
then writes fp16 checkpoints (our format + tokenizer.json) as ship_<run>.tar.xz. `large` trains a
dense / MeKi pair of a 10 x 640 backbone for an equal number of steps that fit --budget-s. Both
write results.json (after every run) and logs.tar.gz into --out, like train_evidence.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pipeline.config import ModelConfig  # noqa: E402
from train_evidence import (Results, quant_losses, run_one, sample_text, seconds_per_step,  # noqa: E402
                            train_cfg)

SEED = 1234
BATCH, SEQ = 64, 512
PROMPTS = ("The function returns", "To install the package, run")


def demo_backbone(vocab: int, smoke: bool) -> ModelConfig:
    if smoke:
        return ModelConfig(vocab_size=vocab, num_layers=2, dim=64, ffn_dim=192, num_heads=2, num_kv_heads=1,
                           head_dim=32, max_seq_len=64, d_mem=8, name="demo-smoke")
    # d_mem = d / 8, the paper's ratio at 0.6B (1024 -> 128) and 1.7B (2048 -> 256)
    return ModelConfig(vocab_size=vocab, num_layers=6, dim=256, ffn_dim=768, num_heads=4, num_kv_heads=2,
                       head_dim=64, max_seq_len=512, d_mem=32, name="demo-6x256")


def large_backbone(vocab: int, smoke: bool) -> ModelConfig:
    if smoke:
        return demo_backbone(vocab, True).replace(name="large-smoke", d_mem=16)
    return ModelConfig(vocab_size=vocab, num_layers=10, dim=640, ffn_dim=1920, num_heads=10, num_kv_heads=5,
                       head_dim=64, max_seq_len=512, d_mem=80, name="evidence-10x640")


def ship(name: str, ckpt: Path, tokenizer: Path, out: Path, work: Path) -> None:
    """fp16 checkpoint in our format + tokenizer.json as out/ship_<name>.tar.xz (split at 15 MB)."""
    model, _ = load_checkpoint(ckpt)
    folder = work / "ship" / name
    save_checkpoint(model.half(), folder, source="train-demo", overwrite=True)
    shutil.copy(tokenizer, folder / "tokenizer.json")
    buf = work / "ship" / f"{name}.tar"
    with tarfile.open(buf, "w") as tar:
        tar.add(folder, arcname=name)
    data = lzma.compress(buf.read_bytes(), preset=6)
    part = 15 * 2**20
    for i in range(0, len(data), part):
        (out / f"ship_{name}.tar.xz.{i // part}").write_bytes(data[i:i + part])


def demo(a: argparse.Namespace, meta: dict, device: torch.device, res: Results) -> None:
    base = demo_backbone(meta["vocab_size"], a.smoke)
    steps = 20 if a.smoke else int(a.tokens // (BATCH * SEQ))
    batch, seq = (8, 64) if a.smoke else (BATCH, SEQ)
    tcfg = train_cfg(steps, a.smoke, a.lr, batch, seq)
    tcfg = dataclasses.replace(tcfg, eval_batches=4 if a.smoke else None)
    res.data["meta"].update(demo_steps=steps, demo_batch=[batch, seq], demo_lr=a.lr)
    m = base.d_mem
    plan = [("dense", base.replace(memory="none"), SEED, True), (f"meki_m{m}", base, SEED, True),
            (f"meki_m{2 * m}", base.replace(d_mem=2 * m), SEED, True),
            ("dense_s2", base.replace(memory="none"), SEED + 1, False), (f"meki_m{m}_s2", base, SEED + 1, False)]
    tokenizer = a.data / "tokenizer.json"
    for name, cfg, seed, shipped in plan:
        ckpt = run_one(name, cfg, dataclasses.replace(tcfg, seed=seed), a.data, a.work, res, section="ship")
        row = res.data["ship"][name]
        row["samples"] = {p: sample_text(ckpt, tokenizer, p) for p in PROMPTS}
        if cfg.has_meki:
            with tempfile.TemporaryDirectory() as tmp:
                res.data["quant"][name] = quant_losses(ckpt, a.data, tcfg, device, Path(tmp))
        if shipped:
            ship(name, ckpt, tokenizer, a.out, a.work)
        res.save()


def large(a: argparse.Namespace, meta: dict, device: torch.device, res: Results) -> None:
    base = large_backbone(meta["vocab_size"], a.smoke)
    batch, seq = (8, 64) if a.smoke else (BATCH, SEQ)
    probe = train_cfg(12, a.smoke, a.lr, batch, seq)
    sps = None if a.steps else seconds_per_step(base, probe, a.data, a.work / "probe")
    steps = 20 if a.smoke else a.steps or max(50, int(a.budget_s / (2 * sps * 1.1)))
    res.data["meta"].update(large_steps=steps, large_probe_seconds_per_step=sps, large_lr=a.lr)
    print(f"probe: {sps} s/step; {steps} steps per run", flush=True)
    tcfg = train_cfg(steps, a.smoke, a.lr, batch, seq)
    runs = {"dense": ("large_dense", base.replace(memory="none")), "meki": (f"large_meki_m{base.d_mem}", base)}
    for name, cfg in (runs[k] for k in a.runs.split(",")):
        ckpt = run_one(name, cfg, tcfg, a.data, a.work, res, section="runs")
        res.data["runs"][name]["samples"] = {p: sample_text(ckpt, a.data / "tokenizer.json", p) for p in PROMPTS}
        if cfg.has_meki:
            with tempfile.TemporaryDirectory() as tmp:
                res.data["quant"][name] = quant_losses(ckpt, a.data, tcfg, device, Path(tmp))
        res.save()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=("demo", "large"))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=float, default=60e6, help="demo: training tokens per run")
    ap.add_argument("--budget-s", type=float, default=480.0, help="large: training seconds for both runs")
    ap.add_argument("--steps", type=int, default=0, help="large: steps per run (default: from --budget-s)")
    ap.add_argument("--runs", default="dense,meki", help="large: which of dense,meki to train")
    ap.add_argument("--lr", type=float, default=None, help="peak lr (demo 2e-3, large 1.5e-3)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script")
    a = ap.parse_args()
    a.lr = a.lr or (2e-3 if a.stage == "demo" else 1.5e-3)
    a.out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((a.data / "meta.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    res = Results(a.out, a.work, {"seed": SEED, "stage": a.stage, "argv": sys.argv[1:],
                                  "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                  "torch": torch.__version__, "data_vocab": meta["vocab_size"],
                                  "data_files": meta["files"], "corpus_sha256": meta["corpus"]["sha256"],
                                  "train_tokens_available": meta["files"]["train"]["tokens"],
                                  "val_tokens": meta["files"]["val"]["tokens"]})
    try:
        (demo if a.stage == "demo" else large)(a, meta, device, res)
    finally:
        res.save()


if __name__ == "__main__":
    main()
