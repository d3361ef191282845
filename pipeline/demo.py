"""`meki demo`: the main job end to end on an embedded default model, into one output folder."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import preset
from pipeline.fold import fold_checkpoint, load_tables
from pipeline.fsutil import check_free
from pipeline.model import MekiModel, init_weights

console = Console()


def run_demo(out: Path, preset_name: str = "tiny", overwrite: bool = False) -> int:
    """Build a random MeKi model, fold its tables (streamed), and prove the folded model exact."""
    check_free(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    model = init_weights(MekiModel(preset(preset_name)), seed=0).eval()
    info = save_checkpoint(model, out / "train", "random", overwrite=True)
    t0 = time.perf_counter()
    fold_checkpoint(out / "train", out / "folded", overwrite=True)
    fold_s = time.perf_counter() - t0
    folded, _ = load_checkpoint(out / "folded")
    tables = torch.from_numpy(load_tables(out / "folded"))
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(tokens) - folded.eval()(tokens, meki_rows=tables[tokens])).abs().max().item()
    cfg = model.cfg
    table = Table(title=f"meki demo: {cfg.name} ({cfg.num_layers} layers, d={cfg.dim}, d_mem={cfg.d_mem})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("fingerprint", info.fingerprint)
    table.add_row("folded tables", f"{cfg.num_layers} x [{cfg.vocab_size}, {cfg.d_mem}] fp32")
    table.add_row("fold time", f"{fold_s:.2f} s")
    table.add_row("train vs folded logits, max |diff|", f"{diff:.2e}")
    console.print(table)
    console.print(f"outputs under {out}/")
    return 0 if diff <= 1e-4 else 1
