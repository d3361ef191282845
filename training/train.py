"""Train a MeKi (or dense) model on a prepared token folder: one entry for 1 CPU, 1 GPU or N GPUs.

`train(model_cfg, train_cfg, data_dir, out_dir)` runs in a plain process or under torchrun (DDP:
WORLD_SIZE/RANK/LOCAL_RANK from the environment). Outputs in out_dir: `log.jsonl` (one JSON object a
line: train loss, lr, tokens/s; validation loss at intervals on a fixed set of batches) and
`last/` (`model/`, our checkpoint folder, plus `state.pt`: optimizer, step, RNG and data streams).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import ConfigError, ModelConfig, check_types
from pipeline.devices import resolve_device
from training.data import DatasetMeta, TokenBatches, eval_batches
from contract.atomic import OutputExistsError, atomic_dir, atomic_write_bytes, atomic_write_text, output_lock
from pipeline.model import MekiModel, init_weights
from pipeline.safe_load import safe_torch_load


@dataclass
class TrainConfig:
    seed: int = 0  # weight init seed; rank r's data stream uses seed + 1000 * (r + 1)
    batch_size: int = 16  # sequences per micro-batch, per rank
    seq_len: int = 256  # tokens per sequence (inputs; windows are seq_len + 1)
    grad_accum: int = 1  # micro-batches per optimizer step, per rank
    max_steps: int = 1000  # optimizer steps; the cosine schedule ends here
    stop_after: int | None = None  # stop (with a checkpoint) after this step; the schedule is unchanged
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # AdamW decay, on Linear matrices only (see param_groups)
    beta1: float = 0.9  # AdamW beta1 (paper)
    beta2: float = 0.95  # AdamW beta2 (paper)
    grad_clip: float = 1.0  # max global grad norm
    init_std: float = 0.02  # N(0, std) init of linear and embedding weights
    log_interval: int = 10  # steps between train-loss lines in log.jsonl
    eval_interval: int = 100  # steps between validation losses (0: only at the end)
    eval_batches: int | None = 8  # fixed validation batches: the first windows of val.bin (None: all)
    eval_batch_size: int | None = None  # sequences per validation batch (None: batch_size)
    ckpt_interval: int = 200  # steps between checkpoints (0: only at the end / stop_after)
    compile: bool = False  # torch.compile the model
    amp: bool = True  # bf16 autocast on CUDA (CPU always trains in fp32)
    device: str | None = None  # "cpu", "cuda" (None: cuda if available); under DDP cuda:LOCAL_RANK
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        positive = ("batch_size", "seq_len", "grad_accum", "max_steps", "lr", "grad_clip", "init_std", "log_interval")
        nonneg = ("warmup_steps", "weight_decay", "eval_interval", "ckpt_interval", "seed")
        bad = [f"{k}={getattr(self, k)} must be positive" for k in positive if not getattr(self, k) > 0]
        bad += [f"{k}={getattr(self, k)} must be 0 or more" for k in nonneg if not getattr(self, k) >= 0]
        bad += [f"{k}={getattr(self, k)} must be positive or null" for k in ("stop_after", "eval_batches",
                "eval_batch_size") if getattr(self, k) is not None and not getattr(self, k) > 0]
        bad += [f"{k}={getattr(self, k)} must be in [0, 1)" for k in ("beta1", "beta2", "min_lr_ratio")
                if not 0 <= getattr(self, k) < 1 + (k == "min_lr_ratio")]
        if bad:
            raise ConfigError("invalid train config: " + "; ".join(bad))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        check_types(cls, data, "train config")
        return cls(**data)


@dataclass
class TrainResult:
    step: int  # optimizer steps done (== max_steps unless stop_after cut the run)
    tokens: int  # training tokens seen, all ranks
    train_loss: float | None  # mean train loss of the last log interval
    val_loss: float | None  # validation loss at `step` on the fixed batches
    wall_s: float  # seconds spent in this call
    checkpoint: Path  # our checkpoint folder of the model (load_checkpoint reads it)
    log: Path  # log.jsonl


@dataclass
class _Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device_pref: str | None) -> _Dist:
    if device_pref is not None:
        resolve_device(device_pref)  # an unknown or absent device fails here, before any work
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return _Dist(rank, world, device, owns)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay Linear matrices only. Norm weights and alpha/beta scalars are gains, not capacity.
    Embedding rows (E and the static tables M_l) are excluded because decoupled decay shrinks every
    row every step while a rare token's row only gets a gradient when that token appears: the
    memory tables MeKi adds would be pulled to zero for most of the vocabulary."""
    decay, keep = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and p.ndim == 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over warmup_steps, then cosine down to lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lm_loss(model: nn.Module, window: torch.Tensor, tables: torch.Tensor | None = None) -> torch.Tensor:
    """window: int64 [B, T + 1] -> mean next-token cross-entropy; tables [V, L, m] for a folded model."""
    x, y = window[:, :-1], window[:, 1:]
    logits = model(x) if tables is None else model(x, meki_rows=tables[x])  # [B, T, V]
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[torch.Tensor], device: torch.device, amp: bool = False,
             tables: torch.Tensor | None = None) -> float:
    """Token-weighted mean loss over `batches` (int64 [b, T + 1] each), summed over DDP ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [loss * tokens, tokens]
    for w in batches:
        w = w.to(device, non_blocking=True)
        with _autocast(device, amp):
            loss = lm_loss(model, w, tables)
        n = w[:, 1:].numel()
        total += torch.stack([loss.double() * n, torch.tensor(float(n), device=device, dtype=torch.float64)])
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


def fixed_val_batches(data_dir: Path, cfg: TrainConfig, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This rank's share of the fixed validation set (same windows every call, every run)."""
    bs = cfg.eval_batch_size or cfg.batch_size
    every = [torch.from_numpy(b) for b in eval_batches(Path(data_dir) / "val.bin", bs, cfg.seq_len, cfg.eval_batches)]
    return every[rank::world]


class _Log:
    """Appends JSON lines (rank 0 only); on resume, drops lines past the resumed step."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and keep_until is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= keep_until]
            atomic_write_bytes(path, "".join(ln + "\n" for ln in kept).encode())
        elif enabled and keep_until is None:
            path.write_text("")

    def write(self, **row: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def _rng_state(device: torch.device, data: TokenBatches) -> dict:
    state = {"torch": torch.get_rng_state(), "data": data.state_dict()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device, data: TokenBatches) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    data.load_state_dict(state["data"])


def save_train_state(out_dir: Path, model: MekiModel, opt: torch.optim.Optimizer, step: int, tokens: int,
                     tcfg: TrainConfig, rng: dict, d: _Dist) -> None:
    """Collective: every rank hands in its RNG state; rank 0 writes out_dir/last atomically."""
    rngs = [None] * d.world
    if dist.is_initialized():
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if d.main:
        cpu_model = MekiModel(model.cfg)
        cpu_model.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        with atomic_dir(out_dir / "last", overwrite=True) as tmp:
            save_checkpoint(cpu_model, tmp / "model", source="train")
            state = {"step": step, "tokens": tokens, "optimizer": opt.state_dict(), "rng": rngs,
                     "train_config": tcfg.to_dict(), "world": d.world}
            torch.save(state, tmp / "state.pt")
    if dist.is_initialized():
        dist.barrier()


def _load_train_state(out_dir: Path, model: MekiModel, opt: torch.optim.Optimizer,
                      d: _Dist) -> tuple[int, int, dict]:
    saved, _ = load_checkpoint(out_dir / "last" / "model")
    if saved.cfg.to_dict() != model.cfg.to_dict():
        raise ConfigError(f"{out_dir / 'last'}: saved model config differs from the one asked for; "
                          "use another out_dir or resume=False, overwrite=True")
    model.load_state_dict(saved.state_dict())
    # weights_only: a state.pt is a pickle, and one from elsewhere must not run code when resumed
    state = safe_torch_load(out_dir / "last" / "state.pt", map_location=d.device)
    if state["world"] != d.world:
        raise ValueError(f"checkpoint was written by {state['world']} ranks, resuming with {d.world}")
    opt.load_state_dict(state["optimizer"])
    return state["step"], state["tokens"], state["rng"][d.rank]


def _check_data(model_cfg: ModelConfig, data_dir: Path) -> None:
    meta = DatasetMeta.load(data_dir)
    if meta.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"{data_dir}: tokenizer vocab {meta.vocab_size} > model vocab_size {model_cfg.vocab_size}")
    if model_cfg.folded:
        raise ConfigError("train needs a train-form config (folded=False)")


def _build(model_cfg: ModelConfig, tcfg: TrainConfig, d: _Dist):
    model = init_weights(MekiModel(model_cfg), seed=tcfg.seed, std=tcfg.init_std).to(d.device)
    opt = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))
    return model, opt


def _wrap(model: MekiModel, tcfg: TrainConfig, d: _Dist) -> nn.Module:
    run = torch.compile(model) if tcfg.compile else model
    if dist.is_initialized():
        ids = [d.device.index] if d.device.type == "cuda" else None
        run = nn.parallel.DistributedDataParallel(run, device_ids=ids)
    return run


def _step(run: nn.Module, params: list[nn.Parameter], opt: torch.optim.Optimizer, batches: Iterator,
          lr: float, tcfg: TrainConfig, d: _Dist) -> torch.Tensor:
    """One optimizer step over grad_accum micro-batches; returns the mean loss (a device tensor)."""
    for group in opt.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=d.device)
    for micro in range(tcfg.grad_accum):
        w = torch.from_numpy(next(batches)).to(d.device, non_blocking=True)
        last = micro == tcfg.grad_accum - 1
        sync = run.no_sync() if isinstance(run, nn.parallel.DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync:
            with _autocast(d.device, tcfg.amp):
                loss = lm_loss(run, w)
            (loss / tcfg.grad_accum).backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total / tcfg.grad_accum


def _mean_over_ranks(x: torch.Tensor) -> float:
    if dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return float(x)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data_dir: Path, out_dir: Path, resume: bool = True,
          overwrite: bool = False) -> TrainResult:
    """Train from scratch, or resume from out_dir/last (model, optimizer, step, RNG, data streams).

    Without resume, an existing out_dir/last is an error unless overwrite=True. Under torchrun each
    rank calls this with the same arguments; rank 0 logs and writes checkpoints.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    _check_data(model_cfg, data_dir)
    d = _setup_dist(train_cfg.device)
    try:
        # rank 0 holds the run folder's lock: a second `meki train` into it fails instead of racing
        with output_lock(out_dir) if d.main else contextlib.nullcontext():
            return _train(model_cfg, train_cfg, data_dir, out_dir, resume, overwrite, d)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _train(model_cfg: ModelConfig, tcfg: TrainConfig, data_dir: Path, out_dir: Path, resume: bool,
           overwrite: bool, d: _Dist) -> TrainResult:
    t0 = time.perf_counter()
    has_ckpt = (out_dir / "last" / "state.pt").exists()
    if has_ckpt and not resume and not overwrite:
        raise OutputExistsError(f"{out_dir / 'last'} exists; pass resume=True or overwrite=True")
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "train_config.json", json.dumps(tcfg.to_dict(), indent=2) + "\n")
    torch.manual_seed(tcfg.seed)
    model, opt = _build(model_cfg, tcfg, d)
    data = TokenBatches(data_dir / "train.bin", tcfg.batch_size, tcfg.seq_len, seed=tcfg.seed + 1000 * (d.rank + 1))
    step, tokens = 0, 0
    if has_ckpt and resume:
        step, tokens, rng = _load_train_state(out_dir, model, opt, d)
        _set_rng_state(rng, d.device, data)
    log = _Log(out_dir / "log.jsonl", d.main, step if has_ckpt and resume else None)
    val = fixed_val_batches(data_dir, tcfg, d.rank, d.world)
    stop = min(tcfg.max_steps, tcfg.stop_after or tcfg.max_steps)
    train_loss, val_loss = _loop(model, opt, data, val, tcfg, d, log, out_dir, step, stop, tokens)
    return TrainResult(step=max(step, stop), tokens=_tokens_at(max(step, stop), tcfg, d), train_loss=train_loss,
                       val_loss=val_loss, wall_s=time.perf_counter() - t0,
                       checkpoint=out_dir / "last" / "model", log=out_dir / "log.jsonl")


def _tokens_at(step: int, tcfg: TrainConfig, d: _Dist) -> int:
    return step * tcfg.batch_size * tcfg.seq_len * tcfg.grad_accum * d.world


def _loop(model: MekiModel, opt: torch.optim.Optimizer, data: TokenBatches, val: list[torch.Tensor],
          tcfg: TrainConfig, d: _Dist, log: _Log, out_dir: Path, step: int, stop: int,
          tokens: int) -> tuple[float | None, float | None]:
    """Steps step+1 .. stop; logs, evaluates and checkpoints on their intervals and at the end."""
    run = _wrap(model, tcfg, d)
    run.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _bar(step, stop, d, tcfg)
    running, n_running, t_last, tok_last = torch.zeros((), device=d.device), 0, time.perf_counter(), tokens
    train_loss = val_loss = None
    if step >= stop:  # resumed a finished run: say where it stands rather than skip silently
        val_loss = evaluate(run, val, d.device, tcfg.amp)
    while step < stop:
        lr = lr_at(step, tcfg)
        running += _step(run, params, opt, data, lr, tcfg, d)
        n_running += 1
        step += 1
        tokens = _tokens_at(step, tcfg, d)
        final = step == stop
        if step % tcfg.log_interval == 0 or final:
            train_loss = _mean_over_ranks(running / n_running)
            now = time.perf_counter()
            rate = (tokens - tok_last) / max(now - t_last, 1e-9)
            log.write(step=step, train_loss=train_loss, lr=lr, tokens=tokens, tokens_per_s=rate)
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{rate:,.0f}")
            running, n_running, t_last, tok_last = torch.zeros((), device=d.device), 0, now, tokens
        if (tcfg.eval_interval and step % tcfg.eval_interval == 0) or final:
            val_loss = evaluate(run, val, d.device, tcfg.amp)
            log.write(step=step, val_loss=val_loss, tokens=tokens)
        if (tcfg.ckpt_interval and step % tcfg.ckpt_interval == 0) or final:
            save_train_state(out_dir, model, opt, step, tokens, tcfg, _rng_state(d.device, data), d)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return train_loss, val_loss


def _bar(step: int, stop: int, d: _Dist, tcfg: TrainConfig):
    if not (d.main and tcfg.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=stop, initial=step, unit="step", desc="train", dynamic_ncols=True)
