"""`meki eval BUNDLE... --data DATA_DIR`: held-out loss and perplexity through the exported artifacts.

Each bundle is scored on the same fixed slice of `val.bin` (windows spread evenly over the file,
each scored from position 0) at every export step, so the cost of each step shows up on its own:

    train form (fp32) -> folded (fp32 tables) -> pack as shipped (fp16/int8/int4 rows)
      -> backbone quant (the torchao weights the program was lowered with, eager)
      -> the artifact itself (ExecuTorch / LiteRT runtime; token by token through its decode method)

The eager steps need the checkpoint the bundle was exported from (--checkpoint; its fingerprint must
be the bundle's); without it only the artifacts are scored. A bundle whose tokenizer differs from the
data's is refused: its loss on those token ids would mean nothing.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mobile_runtime.backends import RUNNERS, open_runner
from contract.hashing import sha256_file
from contract.manifest import Backbone, BundleError, Manifest, verify_bundle
from training.data import TOKEN_DTYPE, DatasetMeta

Rows = Callable[[np.ndarray], "np.ndarray | None"]  # token ids [N] -> rows [N, L, m] (None: dense)


@dataclass
class EvalConfig:
    windows: int = 32  # windows scored, spread evenly over val.bin (the same for every bundle)
    window_len: int = 128  # tokens predicted per window (capped by each backbone's KV cache)
    targets: tuple[str, ...] = ()  # backbones to run (empty: every one with a runtime here)
    progress: bool = True  # tqdm bar per artifact


@dataclass
class StageLoss:
    stage: str  # train-form | folded | pack-int8 | quant-8da4w | executorch-xnnpack ...
    loss: float  # mean next-token cross-entropy, nats
    tokens: int  # predictions scored
    ppl: float = 0.0
    delta_pct: float | None = None  # perplexity change vs the previous step, percent
    note: str = ""

    def __post_init__(self) -> None:
        self.ppl = math.exp(self.loss)


@dataclass
class BundleEval:
    bundle: str
    name: str
    memory: str
    pack_dtype: str | None
    stages: list[StageLoss] = field(default_factory=list)

    def stage(self, name: str) -> StageLoss | None:
        return next((s for s in self.stages if s.stage == name), None)

    def add(self, s: StageLoss, previous: str | None) -> None:
        prev = self.stage(previous) if previous else None
        if prev is not None:
            s.delta_pct = 100.0 * (s.ppl / prev.ppl - 1.0)
        self.stages.append(s)


# ---------------------------------------------------------------------------------------------
# Data


def check_tokenizer(bundle: Path, manifest: Manifest, data_dir: Path, meta: DatasetMeta) -> None:
    """Refuse a bundle whose tokenizer is not the one the data was tokenised with."""
    if manifest.tokenizer is None:
        raise BundleError(f"{bundle}: bundle has no tokenizer, so it cannot be matched to {data_dir}'s token ids")
    want = meta.files.get("tokenizer", {}).get("sha256")
    if want is None and (data_dir / "tokenizer.json").exists():
        want = sha256_file(data_dir / "tokenizer.json")
    got = sha256_file(bundle / manifest.tokenizer.file)
    if want != got:
        raise BundleError(f"{bundle}: tokenizer differs from the data's ({got[:12]} vs {str(want)[:12]}); "
                          f"evaluate it on data made with its own tokenizer")


def val_windows(data_dir: Path, cfg: EvalConfig, window_len: int) -> Iterator[np.ndarray]:
    """int64 [window_len + 1] windows at evenly spaced starts of val.bin, read lazily (memmap)."""
    tokens = np.memmap(Path(data_dir) / "val.bin", dtype=TOKEN_DTYPE, mode="r")
    span = len(tokens) - window_len - 1
    if span < 0:
        raise ValueError(f"{data_dir}/val.bin has {len(tokens)} tokens, fewer than one window ({window_len + 1})")
    n = min(cfg.windows, span // window_len + 1)
    for start in np.linspace(0, span, n).astype(np.int64):
        yield np.asarray(tokens[start:start + window_len + 1], dtype=np.int64)


def _nll(logits: np.ndarray, target: np.ndarray) -> float:
    """Summed cross-entropy of logits [N, V] against targets [N], in float64."""
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    lse = np.log(np.exp(z).sum(-1))
    return float((lse - z[np.arange(len(target)), target]).sum())


# ---------------------------------------------------------------------------------------------
# Scorers: eager (whole window in one forward) and artifact (token by token, as the runtime runs)


@torch.no_grad()
def eager_loss(model: torch.nn.Module, windows: list[np.ndarray], rows: Rows | None = None,
               desc: str = "", progress: bool = True) -> StageLoss:
    model.eval()
    total, n = 0.0, 0
    for w in tqdm(windows, desc=desc, unit="win", disable=not progress, leave=False):
        x = torch.from_numpy(w[None, :-1])
        got = None if rows is None else rows(w[:-1])  # a dense bundle's lookup gives None
        r = None if got is None else torch.from_numpy(got)[None]
        logits = model(x) if r is None else model(x, meki_rows=r)
        total += float(F.cross_entropy(logits[0].float(), torch.from_numpy(w[1:]), reduction="sum"))
        n += len(w) - 1
    return StageLoss(desc, total / n, n)


def artifact_loss(bundle: Path, backbone: Backbone, windows: list[np.ndarray], rows: Rows,
                  progress: bool = True) -> StageLoss:
    """Teacher-forced decode through the artifact's own runtime: one decode call per token, so the
    KV cache, the pack rows and the lowered kernels are exactly what generation uses."""
    runner = open_runner(bundle, backbone)
    total, n = 0.0, 0
    bar = tqdm(total=sum(len(w) - 1 for w in windows), desc=backbone.target, unit="tok", disable=not progress,
               leave=False)
    for w in windows:
        if hasattr(runner, "reset"):  # LiteRT keeps the cache outside the program
            runner.reset()
        r = rows(w[:-1])
        steps = []
        for t in range(len(w) - 1):
            row = None if r is None else r[None, t:t + 1]
            steps.append(runner.step("decode", w[None, t:t + 1], np.array([t], np.int64), row).reshape(-1))
            bar.update(1)
        total += _nll(np.stack(steps), w[1:])
        n += len(w) - 1
    bar.close()
    return StageLoss(backbone.target, total / n, n, note=f"{backbone.quant} weights, runtime decode")


# ---------------------------------------------------------------------------------------------
# One bundle, every step


def pack_rows(bundle: Path, manifest: Manifest) -> Rows:
    """Rows as the runtime reads them from the shipped pack (dequantised to fp32)."""
    if manifest.memory_pack is None:
        return lambda ids: None
    from mobile_runtime.pack import MemoryPack

    pack = MemoryPack.open(bundle / manifest.memory_pack.file, expected_fingerprint=manifest.fingerprint)
    return lambda ids: pack.lookup(np.asarray(ids).reshape(-1))


def eager_stages(res: BundleEval, bundle: Path, manifest: Manifest, source: Path, windows: list[np.ndarray],
                 cfg: EvalConfig) -> tuple[torch.nn.Module, str | None]:
    """train form -> folded -> pack rows; returns the folded model (or dense) that the artifacts came from."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.export.bundle import dense_baseline
    from pipeline.fold import fold_model

    model, info = load_checkpoint(source)
    if info.fingerprint != manifest.fingerprint:
        raise BundleError(f"{source}: fingerprint {info.fingerprint} is not bundle {bundle}'s {manifest.fingerprint}: "
                          "another model")
    model = model.float().eval()
    prev = None
    if not model.cfg.folded:
        res.add(eager_loss(model, windows, desc="train-form", progress=cfg.progress), None)
        prev = "train-form"
    if manifest.memory == "none":
        if model.cfg.has_meki:  # a dense bundle derived from a MeKi checkpoint: the branch is cut off
            model = dense_baseline(fold_model(model)[0] if not model.cfg.folded else model)
            res.add(eager_loss(model, windows, desc="dense-cut", progress=cfg.progress), prev)
            prev = "dense-cut"
        return model, prev
    if not model.cfg.folded:
        model, tables = fold_model(model)
        res.add(eager_loss(model, windows, lambda ids: tables[ids], desc="folded", progress=cfg.progress), prev)
        prev = "folded"
    rows = pack_rows(bundle, manifest)
    stage = f"pack-{manifest.memory_pack.dtype}"
    res.add(eager_loss(model, windows, rows, desc=stage, progress=cfg.progress), prev)
    return model, stage


def evaluate_bundle(bundle: Path, data_dir: Path, cfg: EvalConfig, checkpoint: Path | None = None) -> BundleEval:
    bundle, data_dir = Path(bundle), Path(data_dir)
    manifest = verify_bundle(bundle)
    meta = DatasetMeta.load(data_dir)
    check_tokenizer(bundle, manifest, data_dir, meta)
    runnable = [b for b in manifest.backbones if b.target in RUNNERS and (not cfg.targets or b.target in cfg.targets)]
    window_len = min([cfg.window_len] + [b.max_seq_len for b in runnable])
    windows = list(val_windows(data_dir, cfg, window_len))
    res = BundleEval(str(bundle), manifest.name, manifest.memory,
                     manifest.memory_pack.dtype if manifest.memory_pack else None)
    model, prev = None, None
    if checkpoint is not None:
        model, prev = eager_stages(res, bundle, manifest, Path(checkpoint), windows, cfg)
    rows = pack_rows(bundle, manifest)
    for b in runnable:
        before = prev
        if model is not None and b.quant != "none" and b.target.startswith("executorch"):
            from pipeline.export.quantize import quantize_weights

            q = copy.deepcopy(model)
            quantize_weights(q, b.quant)
            stage = f"quant-{b.quant}"
            if res.stage(stage) is None:
                res.add(eager_loss(q, windows, rows, desc=stage, progress=cfg.progress), prev)
            before = stage
        res.add(artifact_loss(bundle, b, windows, rows, cfg.progress), before)
    skipped = [b.target for b in manifest.backbones if b not in runnable]
    for t in skipped:
        res.stages.append(StageLoss(t, math.nan, 0, note="no runtime here (not scored)"))
    return res


def evaluate_bundles(bundles: list[Path], data_dir: Path, cfg: EvalConfig,
                     checkpoints: list[Path] | None = None) -> list[BundleEval]:
    checkpoints = checkpoints or [None]
    if len(checkpoints) == 1:  # one checkpoint for every bundle (meki/ and dense/ of one export)
        checkpoints = checkpoints * len(bundles)
    if len(checkpoints) != len(bundles):
        raise ValueError(f"{len(checkpoints)} --checkpoint for {len(bundles)} bundles; give one, one per bundle, "
                         "or none")
    return [evaluate_bundle(b, data_dir, cfg, c) for b, c in zip(bundles, checkpoints)]


def to_json(results: list[BundleEval], data_dir: Path, cfg: EvalConfig) -> str:
    meta = DatasetMeta.load(data_dir)
    out = {"data": {"dir": str(data_dir), "val_sha256": meta.files["val"]["sha256"],
                    "tokenizer_sha256": meta.files["tokenizer"]["sha256"]},
           "config": asdict(cfg), "bundles": [asdict(r) for r in results]}
    return json.dumps(out, indent=2, allow_nan=True)


def render_table(results: list[BundleEval]):
    """A rich Table: one row per bundle and step; perplexity change vs the step before."""
    from rich.table import Table

    table = Table(title="held-out loss through every export step")
    for col in ("bundle", "step", "loss", "ppl", "vs previous step", "tokens", "note"):
        table.add_column(col, justify="left" if col in ("bundle", "step", "note") else "right")
    for r in results:
        for s in r.stages:
            delta = "-" if s.delta_pct is None else f"{s.delta_pct:+.2f}%"
            loss = "-" if math.isnan(s.loss) else f"{s.loss:.4f}"
            ppl = "-" if math.isnan(s.loss) else f"{s.ppl:.2f}"
            table.add_row(Path(r.bundle).name, s.stage, loss, ppl, delta, str(s.tokens), s.note)
    return table
