"""Evidence runs for issue 8: dense vs MeKi variants at equal backbone and tokens, quantised-pack losses
of the folded models, and a small shipped pair (MeKi + dense twin) for the demo.

    python3 benchmarks/train_evidence.py --data .evdata --work /tmp/ev --out $OUT --budget-s 300
    python benchmarks/train_evidence.py --data .evdata --work /tmp/ev --out /tmp/evout --smoke   # CPU

Steps are chosen from a short timed run of the largest model so every evidence run gets the same
number of steps (equal tokens) and all of them fit --budget-s. Everything lands in --out:
results.json (written after each stage), logs.tar.gz (log.jsonl and configs of every run) and
ship_meki.tar / ship_dense.tar (fp16 checkpoints + tokenizer.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pipeline.config import ModelConfig  # noqa: E402
from pipeline.fold import fold_model  # noqa: E402
from pipeline.model import MekiModel  # noqa: E402
from pipeline.pack_writer import write_pack  # noqa: E402
from training.train import TrainConfig, evaluate, fixed_val_batches, train  # noqa: E402

SEED = 1234
PACK_DTYPES = ("fp16", "bf16", "int8", "int4")


def evidence_backbone(vocab: int, smoke: bool) -> ModelConfig:
    if smoke:
        return ModelConfig(vocab_size=vocab, num_layers=2, dim=64, ffn_dim=192, num_heads=2, num_kv_heads=1,
                           head_dim=32, max_seq_len=64, d_mem=16, name="evidence-smoke")
    return ModelConfig(vocab_size=vocab, num_layers=8, dim=512, ffn_dim=1536, num_heads=8, num_kv_heads=4,
                       head_dim=64, max_seq_len=512, d_mem=128, name="evidence-8x512")


def ship_backbone(vocab: int, smoke: bool) -> ModelConfig:
    if smoke:
        return evidence_backbone(vocab, True).replace(name="demo-smoke")
    return ModelConfig(vocab_size=vocab, num_layers=4, dim=192, ffn_dim=512, num_heads=4, num_kv_heads=2,
                       head_dim=48, max_seq_len=512, d_mem=64, name="demo-4x192")


def evidence_runs(base: ModelConfig, smoke: bool) -> dict[str, ModelConfig]:
    """Most important first: results are written after each run, so a cut-off keeps those."""
    m = base.d_mem
    mems = (m // 2, m * 2) if smoke else (32, 256, 64)
    runs = {"dense": base.replace(memory="none"), f"meki_both_m{m}": base,
            f"meki_static_m{m}": base.replace(memory="static"), f"meki_dynamic_m{m}": base.replace(memory="dynamic")}
    runs.update({f"meki_both_m{k}": base.replace(d_mem=k) for k in mems})
    return runs


def train_cfg(steps: int, smoke: bool, lr: float, batch: int, seq: int) -> TrainConfig:
    return TrainConfig(seed=SEED, batch_size=batch, seq_len=seq, max_steps=steps, lr=lr,
                       warmup_steps=max(1, steps // 20), log_interval=max(1, steps // 50),
                       eval_interval=max(1, steps // 10), eval_batches=4 if smoke else None,
                       eval_batch_size=batch, ckpt_interval=0, progress=False,
                       device="cpu" if smoke else None)


def seconds_per_step(cfg: ModelConfig, tcfg: TrainConfig, data: Path, work: Path) -> float:
    """Time a short run (the second log interval, past warm-up) of `cfg`."""
    probe = TrainConfig(**{**tcfg.to_dict(), "max_steps": 12, "log_interval": 6, "eval_interval": 0,
                           "eval_batches": 1})
    train(cfg, probe, data, work, resume=False, overwrite=True)
    rows = [json.loads(x) for x in (work / "log.jsonl").read_text().splitlines()]
    rate = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][-1]
    shutil.rmtree(work)
    return tcfg.batch_size * tcfg.seq_len / rate


def sizes(cfg: ModelConfig) -> dict:
    with torch.device("meta"):
        model = MekiModel(cfg)
    named = dict(model.named_parameters())
    tables = sum(p.numel() for n, p in named.items() if ".memory.table" in n)
    folded_away = sum(p.numel() for n, p in named.items() if ".memory." in n)
    total = sum(p.numel() for p in named.values())
    return {"params_train_form": total, "params_inference_ram": total - folded_away,
            "table_values_rom": cfg.vocab_size * cfg.num_layers * cfg.d_mem if cfg.has_meki else 0,
            "static_table_params": tables}


def quant_losses(ckpt: Path, data: Path, tcfg: TrainConfig, device: torch.device, work: Path) -> dict:
    """fp32 val loss: train form, folded with fp32 tables, folded with tables read back from packs."""
    from mobile_runtime.pack import MemoryPack

    model, info = load_checkpoint(ckpt)
    val = fixed_val_batches(data, tcfg)
    out = {"train_form_fp32": evaluate(model.to(device), val, device, amp=False)}
    folded, tables = fold_model(model.cpu())
    folded = folded.to(device)
    out["folded_fp32"] = evaluate(folded, val, device, tables=torch.from_numpy(tables).to(device))
    for dtype in PACK_DTYPES:
        path = write_pack(work / f"{dtype}.mekipack", tables, fingerprint=info.fingerprint, dtype=dtype,
                          group_size=next(g for g in (32, 16, 8, 4, 2) if tables.shape[2] % g == 0), overwrite=True)
        with MemoryPack.open(path, expected_fingerprint=info.fingerprint) as pack:
            deq = pack.lookup(np.arange(pack.vocab_size))  # [V, L, m] float32, as the runtime sees it
        out[f"pack_{dtype}"] = evaluate(folded, val, device, tables=torch.from_numpy(deq).to(device))
        out[f"pack_{dtype}_bytes"] = path.stat().st_size
    base = out["train_form_fp32"]
    out["rel_diff"] = {k: (v - base) / base for k, v in out.items() if isinstance(v, float) and k != "train_form_fp32"}
    return out


@torch.no_grad()
def greedy(model: MekiModel, ids: list[int], n: int, tables: torch.Tensor | None = None) -> list[int]:
    """Greedy continuation without a KV cache (small models; full re-forward per token)."""
    model.eval()
    device = next(model.parameters()).device
    out = list(ids)
    for _ in range(n):
        x = torch.tensor([out[-model.cfg.max_seq_len:]], device=device)
        logits = model(x) if tables is None else model(x, meki_rows=tables[x])
        out.append(int(logits[0, -1].float().argmax()))
    return out[len(ids):]


def sample_text(ckpt: Path, tokenizer: Path, prompt: str, n: int = 48) -> str | None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    tok = Tokenizer.from_file(str(tokenizer))
    model, _ = load_checkpoint(ckpt)
    return prompt + tok.decode(greedy(model, tok.encode(prompt).ids, n))


class Results:
    """results.json and logs.tar.gz, rewritten after every stage (a killed command keeps what finished)."""

    def __init__(self, out: Path, work: Path, meta: dict) -> None:
        self.out, self.work, self.t0 = out, work, time.perf_counter()
        self.data = {"meta": meta, "runs": {}, "quant": {}, "ship": {}, "controls": {}}

    def save(self) -> None:
        self.data["meta"]["elapsed_s"] = time.perf_counter() - self.t0
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.out / "results.json")
        with tarfile.open(self.out / "logs.tar.gz.tmp", "w:gz") as tar:
            for log in sorted(self.work.glob("*/log.jsonl")):
                tar.add(log, arcname=f"{log.parent.name}/log.jsonl")
        (self.out / "logs.tar.gz.tmp").replace(self.out / "logs.tar.gz")


def run_one(name: str, cfg: ModelConfig, tcfg: TrainConfig, data: Path, work: Path, res: Results,
            section: str = "runs") -> Path:
    t0 = time.perf_counter()
    result = train(cfg, tcfg, data, work / name, resume=False, overwrite=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in result.log.read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:] or [0.0]
    res.data[section][name] = {"config": cfg.to_dict(), "train": tcfg.to_dict(), "steps": result.step,
                               "tokens": result.tokens, "val_loss": result.val_loss,
                               "train_loss": result.train_loss, "wall_s": wall,
                               "median_tokens_per_s": float(np.median(rates)), **sizes(cfg)}
    res.save()
    print(f"[{name}] steps={result.step} tokens={result.tokens} val={result.val_loss:.4f} wall={wall:.1f}s",
          flush=True)
    return result.checkpoint


def ship(name: str, ckpt: Path, tokenizer: Path, out: Path, work: Path) -> None:
    """fp16 checkpoint in our format + tokenizer.json, tarred into out/ship_<name>.tar."""
    model, _ = load_checkpoint(ckpt)
    folder = work / "ship" / name
    save_checkpoint(model.half(), folder, source="train-evidence", overwrite=True)
    shutil.copy(tokenizer, folder / "tokenizer.json")
    with tarfile.open(out / f"ship_{name}.tar", "w") as tar:
        tar.add(folder, arcname=name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=300.0, help="training seconds for all evidence runs")
    ap.add_argument("--ship-budget-s", type=float, default=120.0, help="training seconds for the shipped pair")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script")
    ap.add_argument("--controls", type=int, default=0, metavar="STEPS",
                    help="instead: dense vs MeKi controls (seed, lr, 3x steps) at STEPS steps per run")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((a.data / "meta.json").read_text())
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    res = Results(a.out, a.work, {"seed": SEED, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "torch": torch.__version__, "data_vocab": meta["vocab_size"],
                          "train_tokens_available": meta["files"]["train"]["tokens"],
                          "val_tokens": meta["files"]["val"]["tokens"]})
    try:
        if a.controls:
            controls(a, meta, device, res)
            return
        evidence(a, meta, device, res)
        ship_pair(a, meta, device, res)
    finally:
        res.save()


def evidence(a: argparse.Namespace, meta: dict, device: torch.device, res: Results) -> None:
    base = evidence_backbone(meta["vocab_size"], a.smoke)
    runs = evidence_runs(base, a.smoke)
    batch, seq = (8, 64) if a.smoke else (64, 512)
    probe = train_cfg(12, a.smoke, 1.5e-3, batch, seq)
    biggest = max(runs.values(), key=lambda c: sizes(c)["params_train_form"])
    sps = seconds_per_step(biggest, probe, a.data, a.work / "probe")
    steps = 30 if a.smoke else max(50, int(a.budget_s / (len(runs) * sps * 1.08)))
    res.data["meta"].update(evidence_steps=steps, probe_seconds_per_step=sps, evidence_batch=[batch, seq])
    print(f"probe: {sps * 1e3:.1f} ms/step for {biggest.memory} m={biggest.d_mem}; {steps} steps per run", flush=True)
    tcfg = train_cfg(steps, a.smoke, 1.5e-3, batch, seq)
    for name, cfg in runs.items():
        ckpt = run_one(name, cfg, tcfg, a.data, a.work, res)
        if cfg.has_meki:
            with tempfile.TemporaryDirectory() as tmp:
                res.data["quant"][name] = quant_losses(ckpt, a.data, tcfg, device, Path(tmp))
            res.save()
            print(f"[{name}] quant: {json.dumps(res.data['quant'][name]['rel_diff'])}", flush=True)


def controls(a: argparse.Namespace, meta: dict, device: torch.device, res: Results) -> None:
    """Is the dense-vs-MeKi gap a tuning or seed artefact, and does it hold with more tokens?"""
    base = evidence_backbone(meta["vocab_size"], a.smoke)
    batch, seq = (8, 64) if a.smoke else (64, 512)
    steps = a.controls
    plan = [("seed", SEED + 1, 1.5e-3, steps), ("lr3e-3", SEED, 3e-3, steps), ("3x", SEED, 1.5e-3, 3 * steps)]
    for tag, seed, lr, n in plan:
        tcfg = dataclasses.replace(train_cfg(n, a.smoke, lr, batch, seq), seed=seed)
        for name, cfg in (("dense", base.replace(memory="none")), (f"meki_both_m{base.d_mem}", base)):
            run_one(f"{name}_{tag}", cfg, tcfg, a.data, a.work, res, section="controls")
            res.data["controls"][f"{name}_{tag}"]["note"] = f"seed={seed} lr={lr} steps={n}"


def ship_pair(a: argparse.Namespace, meta: dict, device: torch.device, res: Results) -> None:
    base = ship_backbone(meta["vocab_size"], a.smoke)
    batch, seq = (8, 64) if a.smoke else (64, 512)
    probe = train_cfg(12, a.smoke, 2e-3, batch, seq)
    sps = seconds_per_step(base, probe, a.data, a.work / "probe")
    steps = 30 if a.smoke else max(50, int(a.ship_budget_s / (2 * sps * 1.08)))
    tcfg = train_cfg(steps, a.smoke, 2e-3, batch, seq)
    res.data["meta"].update(ship_steps=steps)
    tokenizer = a.data / "tokenizer.json"
    for name, cfg in (("meki", base), ("dense", base.replace(memory="none"))):
        ckpt = run_one(f"ship_{name}", cfg, tcfg, a.data, a.work, res, section="ship")
        ship(name, ckpt, tokenizer, a.out, a.work)
        res.data["ship"][f"ship_{name}"]["sample"] = sample_text(ckpt, tokenizer, "The function returns")
        res.save()
        if cfg.has_meki:
            with tempfile.TemporaryDirectory() as tmp:
                res.data["quant"][f"ship_{name}"] = quant_losses(ckpt, a.data, tcfg, device, Path(tmp))
            res.save()


if __name__ == "__main__":
    main()
