"""Static activation quantisation for the Qualcomm HTP (tflite-qnn --quant w8a16 | w4a16), and per-layer SNR.

Why ai-edge-quantizer (Google's, pinned in the litert extra) and not PT2E: it quantises the very
.tflite that LiteRT's Qualcomm plugin compiles, and the plugin maps its per-channel int8/int4 weights
and int16 activations onto QNN's quantised types; PT2E's Qualcomm quantizer belongs to ExecuTorch's
QNN backend, which does not run here (executorch_npu.py). Gathers (token embedding, rope tables,
last-index pick) stay float: the HTP's GatherNd takes FP16 or INT8 data, not INT16 (validation fails
and 5 ops fall back to the CPU otherwise).

Calibration is real text fed the way the runtime feeds it: windows of token ids (a `meki data`
folder's val.bin, a text file, or by default the repo's own docs through the checkpoint's
tokenizer), prefill chunks then decode steps, each with the KV cache the earlier steps left and the
MeKi rows read from the bundle's pack; the eager NpuStep produces the caches.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from contract.atomic import commit_file, temp_sibling
from pipeline.export.common import share_weights_copy
from pipeline.export.npu_graph import NpuStep
from pipeline.model import MekiModel

QNN_QUANTS = ("none", "w8a16", "w4a16")
WEIGHT_BITS = {"w8a16": 8, "w4a16": 4}
# Calibrated activation ranges are widened this much before the int16 scales are set. The text the
# calibration sees is short (a few dozen decode steps), so held-out values ran past min/max and were
# clipped: on the HTP simulator and on the CPU interpreter alike (demo dense, 6 layers: logits 18.9 dB,
# v_new_5 11.7 dB). Clipping, not the HTP's int16 arithmetic, was the w8a16 loss; x4 costs 12 dB of
# a ~90 dB int16 noise floor and gave 40.0 dB logits (x2: 34.1, x8 and x16: no better than x4 at 1 layer).
RANGE_MARGIN = 4.0
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEXTS = ("README.md", "docs/evidence.md", "mobile_runtime/README.md", "device_tests/README.md")
Feeds = dict[str, Sequence[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class CalibConfig:
    windows: int = 4  # text windows, each: prefill_chunks chunks then decode_steps steps
    prefill_chunks: int = 2
    decode_steps: int = 6
    skip_tokens: int = 0  # held-out windows for the SNR report start past the calibration ones


def calibration_tokens(source: Path | None, tokenizer: Path | None, vocab_size: int) -> np.ndarray:
    """Real text as token ids: a `meki data` folder (val.bin), a text file, or the repo's docs."""
    if source is not None and Path(source).is_dir():
        meta = json.loads((Path(source) / "meta.json").read_text())
        ids = np.fromfile(Path(source) / "val.bin", dtype=meta["dtype"]).astype(np.int64)
        if ids.size and int(ids.max()) >= vocab_size:
            raise ValueError(f"{source}: token ids up to {int(ids.max())} do not fit vocab {vocab_size}")
        return ids
    paths = [Path(source)] if source is not None else [REPO_ROOT / p for p in DEFAULT_TEXTS if (REPO_ROOT / p).is_file()]
    text = "\n\n".join(p.read_text(errors="replace") for p in paths)
    if tokenizer is None:  # test models without a tokenizer: UTF-8 bytes folded into the vocabulary
        return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64) % vocab_size
    from tokenizers import Tokenizer

    return np.asarray(Tokenizer.from_file(str(tokenizer)).encode(text).ids, dtype=np.int64)


class StepFeeds(Sequence[dict[str, np.ndarray]]):
    """One signature's feeds, each step's KV cache made when it is read: a window's cache at a step
    starting at position s is the window's final cache with positions >= s still zero, so a window
    keeps one cache instead of one per step (at the Qwen3-0.6B shape, S = 512: 117 MB per step)."""

    def __init__(self, steps: list[tuple[int, int, dict[str, np.ndarray]]], caches: list[dict[str, np.ndarray]]):
        self.steps, self.caches = steps, caches  # steps: (window, start, the step's own inputs)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        window, start, inputs = self.steps[i]
        feed = dict(inputs)
        for name, final in self.caches[window].items():
            feed[name] = np.zeros_like(final)
            feed[name][:, :, :start] = final[:, :, :start]
        return feed


def step_feeds(model: MekiModel, max_seq_len: int, prefill_len: int, tokens: np.ndarray,
               lookup: Callable[[np.ndarray], np.ndarray | None], cfg: CalibConfig) -> tuple[Feeds, Feeds]:
    """Signature feeds over text windows (inputs) and what eager NpuStep returns for each (outputs)."""
    step = NpuStep(share_weights_copy(model), max_seq_len).eval()
    mcfg, p = model.cfg, prefill_len
    span = cfg.prefill_chunks * p + cfg.decode_steps
    if span > max_seq_len:
        raise ValueError(f"calibration window of {span} tokens > max_seq_len {max_seq_len}")
    need = cfg.skip_tokens + cfg.windows * span
    if tokens.size < need:
        raise ValueError(f"calibration text has {tokens.size} tokens, {need} needed")
    steps: dict[str, list[tuple[int, int, dict[str, np.ndarray]]]] = {"prefill": [], "decode": []}
    outs: Feeds = {"prefill": [], "decode": []}
    caches: list[dict[str, np.ndarray]] = []
    shape = [1, mcfg.num_kv_heads, max_seq_len, mcfg.head_dim]
    for w in range(cfg.windows):
        window = tokens[cfg.skip_tokens + w * span: cfg.skip_tokens + (w + 1) * span]
        cache = {f"kv_{k}_{i}": np.zeros(shape, np.float32) for i in range(mcfg.num_layers) for k in ("k", "v")}
        caches.append(cache)
        for start, n, sig in ([(c * p, p, "prefill") for c in range(cfg.prefill_chunks)]
                              + [(cfg.prefill_chunks * p + d, 1, "decode") for d in range(cfg.decode_steps)]):
            chunk = window[None, start:start + n]
            own = {"tokens": chunk.astype(np.int32), "input_pos": np.arange(start, start + n, dtype=np.int32)}
            rows = lookup(chunk)
            if rows is not None:
                own["meki_rows"] = np.ascontiguousarray(rows, np.float32)
            if sig == "prefill":
                own["last_index"] = np.array([n - 1], np.int32)
            feed = {**own, **{k: v.copy() for k, v in cache.items()}}  # the cache as it is now
            with torch.no_grad():
                got = {k: v.numpy() for k, v in step(**{k: torch.from_numpy(v) for k, v in feed.items()}).items()}
            del feed
            for name in cache:
                kind, layer = name.split("_")[1], name.split("_")[2]
                cache[name][:, :, start:start + n] = got[f"{kind}_new_{layer}"]
            steps[sig].append((w, start, own))
            outs[sig].append(got)
    return {sig: StepFeeds(items, caches) for sig, items in steps.items()}, outs


def save_feeds(feeds: Feeds, path: Path) -> None:
    """The compact form: each window's final cache once, each step's own inputs and start."""
    arrays: dict[str, np.ndarray] = {}
    for sig, items in feeds.items():
        if not isinstance(items, StepFeeds):
            raise TypeError(f"save_feeds: {sig}: feeds from step_feeds expected, got {type(items).__name__}")
        for w, cache in enumerate(items.caches):
            arrays |= {f"cache/{w}/{name}": v for name, v in cache.items()}
        for i, (w, start, own) in enumerate(items.steps):
            arrays |= {f"{sig}/{i}/{name}": v for name, v in own.items()}
            arrays[f"{sig}/{i}/@at"] = np.array([w, start], np.int64)
    np.savez(path, **arrays)


def load_feeds(path: Path) -> Feeds:
    caches: dict[int, dict[str, np.ndarray]] = {}
    own: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    with np.load(path) as z:
        for key in z.files:
            head, i, name = key.split("/")
            group = caches.setdefault(int(i), {}) if head == "cache" else own.setdefault(head, {}).setdefault(int(i), {})
            group[name] = z[key]
    windows = [caches[w] for w in sorted(caches)]
    feeds: Feeds = {}
    for sig, items in own.items():
        steps = []
        for i in sorted(items):
            window, start = (int(v) for v in items[i].pop("@at"))
            steps.append((window, start, items[i]))
        feeds[sig] = StepFeeds(steps, windows)
    return feeds


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((ref - got) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref ** 2).sum()) / noise)


def layer_snr(outs: Feeds, run: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]], feeds: Feeds) -> dict[str, float]:
    """Per output (logits, each layer's k_new_i / v_new_i), the worst SNR (dB) of `run` against eager."""
    worst: dict[str, float] = {}
    for sig, items in feeds.items():
        for feed, ref in zip(items, outs[sig]):
            got = run(sig, feed)
            for name, value in ref.items():
                worst[name] = min(worst.get(name, math.inf), round(snr_db(value, got[name]), 1))
    return dict(sorted(worst.items(), key=lambda kv: (kv[0] != "logits", int(kv[0].split("_")[-1]) if "_" in kv[0] else 0, kv[0])))


def widen_ranges(calibration: dict, margin: float) -> dict:
    """Each calibrated tensor's min/max times `margin` (headroom for values the calibration text missed)."""
    return {name: {k: (np.asarray(v) * margin if k in ("min", "max") else v) for k, v in qsv.items()}
            for name, qsv in calibration.items()}


def quantize_tflite(src: Path, dst: Path, quant: str, feeds: Feeds, margin: float = RANGE_MARGIN) -> None:
    """ai-edge-quantizer: static int16 activations, int8/int4 per-channel weights, gathers left float."""
    from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe_manager

    ops, algo = qtyping.TFLOperationName, algorithm_manager.AlgorithmName
    rm = recipe_manager.RecipeManager()
    rm.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED, activation_num_bits=16,
                         weight_num_bits=WEIGHT_BITS[quant], algorithm_key=algo.MIN_MAX_UNIFORM_QUANT)
    for op in (ops.GATHER, ops.GATHER_ND, ops.EMBEDDING_LOOKUP):
        rm.add_quantization_config(regex=".*", operation_name=op, algorithm_key=algo.NO_QUANTIZE)
    # RMSNorm's square/mean/rsqrt in int16 (one scale per tensor, outlier-driven) fell to 13 dB on its own
    rm.add_quantization_config(regex=".*RMSNorm.*", operation_name=ops.ALL_SUPPORTED, algorithm_key=algo.NO_QUANTIZE)
    # the attention core (rope, scores over the cache, the -200 mask bias, softmax, p @ v) stays float
    # (fp16 on the HTP): one int16 scale per tensor cannot hold a masked score and a real one, nor the
    # cache-as-weights matmuls; the linears keep int8/int4 weights and int16 inputs
    rm.add_quantization_config(regex=".*SplitCacheAttention_attn;.*", operation_name=ops.ALL_SUPPORTED,
                               algorithm_key=algo.NO_QUANTIZE)
    qt = quantizer.Quantizer(str(src))
    qt.load_quantization_recipe(rm.get_quantization_recipe())
    # min/max tracked inside TFLite's C++ profiler: the default mode (preserve_all_tensors) copies every
    # tensor, weights included, into Python at each step (15.8 GB at the Qwen3-0.6B shape: killed)
    ranges = qt.calibrate(feeds, mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED)
    # written through a mapping of the output file, each buffer's pages dropped once written, rather than
    # assembled in a bytearray (the whole quantised model) and then written
    tmp = temp_sibling(dst)
    try:
        qt.quantize(widen_ranges(ranges, margin), enable_progress_report=False, serialize_to_path=tmp)
        del qt
        commit_file(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """The quantiser half, run inside .venv-litert (ai-edge-quantizer lives there)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.export.qnn_quant")
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quant", choices=tuple(WEIGHT_BITS), required=True)
    ap.add_argument("--feeds", type=Path, required=True)
    ap.add_argument("--margin", type=float, default=RANGE_MARGIN)
    a = ap.parse_args(argv)
    quantize_tflite(a.src, a.out, a.quant, load_feeds(a.feeds), a.margin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
