"""Will the export fit? An estimate of each stage's peak from the config, checked before it starts.

The figures are parameter counts times bytes per parameter at each stage, with factors measured by
benchmarks/bench_export.py (pipeline.profile) on the paper's shapes; they are meant to be a little
pessimistic. A stage whose estimate exceeds what the machine has free (MemAvailable plus what this
process already holds and will reuse) raises ExportError naming the stage, the figures and what to
do instead, rather than letting the kernel kill the process half-way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from pipeline.config import ModelConfig
from pipeline.export.registry import ExportError, ExportSettings, decode_program
from pipeline.memory_limit import cgroup_memory, headroom_bytes, memory_cap, physical_bytes
from pipeline.model import MekiModel

log = logging.getLogger(__name__)
GIB = 1 << 30
FP32 = 4
# bytes per parameter of a Linear weight held quantised by torchao (int8 qdata + fp32 scale and
# int8 zero point per group of 32) and as serialised by XNNPACK (packed int4 + scales)
HELD = {"none": 4.0, "8da4w": 1.4, "8da4w-h8": 1.4, "int8wo": 1.05}  # 8da4w: 1.45 measured at qwen3-4b (load-only run)
PACKED = {"none": 4.0, "8da4w": 0.6, "8da4w-h8": 0.6, "int8wo": 1.05}
# the delegate's packed weights, the emitted program and its serialised buffer: fitted on full-depth pair
# exports, keyed by the decode program (registry.ExportSettings.decode_program). "own" (two lowerings per
# bundle): the dense bundle's peak, qwen3-0.6b 4.15, qwen3-1.7b 3.78, qwen3-4b 3.6. "prefill" (one):
# qwen3-0.6b 2.70, qwen3-1.7b 2.69 (ninth session, --jobs 1); 3.2 leaves ~10% over those
LOWERING_COPIES = {"own": 3.8, "prefill": 3.2}
# converters' own copies of the fp32 weights, beside the parent's model. LiteRT's child references the
# weights (lightweight_conversion) in the file the parent saved for it, which the parent then maps too
# (litert.map_weights): the Qwen3-0.6B tflite pair (fp32) peaked at 3,961 MiB for parent and child
# together, 0.3 copies beyond the 2.25 GiB of weights (tenth session; the NPU graph's child 3,722 MiB, sixth);
# 1.0 leaves room. Core ML's fp32 ct.convert (in process; palettize4, none) at 9,492 MiB with the model's
# 2.25 GiB, i.e. 2.7 copies beyond it (bench_export.py --shape qwen3-0.6b --target coreml)
CONVERTER_COPIES = {"tflite": 1.0, "coreml": 3.0}
# Since litert.weights_left_unwritten (twelfth session) LiteRT's child no longer copies the weights it maps:
# beside the parent's model, which is that same file's pages by then, the tree holds little of its own (peak
# RssAnon in the converter stage, parent and child: 1.6 / 3.9 / 6.0 GiB at 0.6B / 1.7B / 4B, i.e. ~1 GiB of the
# two runtimes, which SLACK stands for, and 0.2-0.4 copies of the fp32 weights). The file's pages are
# reclaimable, but read over and over: the 4B pair converted at full speed inside a 22 GB memory cgroup with
# ~0.8 copies of them resident. So the stage needs 0.8 + 0.3 copies.
LITERT_ANON, LITERT_PAGE_CACHE = 0.3, 0.8
# LiteRT's int8 / int8wo recipes quantise after conversion: ai-edge-quantizer in the converter child, once
# the float file is written and the converter's module gone, file to file (litert.quantise_file: the float
# file mapped, its tensors views of the mapping; the int8 model written through a mapping of the output).
# That stage stays below the converter's estimate: the Qwen3-0.6B tflite int8 pair peaked at 4,684 MiB
# (eleventh session; 7,355 quantising bytes in memory, 8,540 beside the converter) against 5.4 GiB
# Core ML int4 made in torch as the layers load (coreml_quant.py): int8 codes and an fp32 scale per 32
# weights for every Linear and the embedding (1.125 bytes per weight; 1.5 held, with what the allocator
# keeps of the quantiser's temporaries: 6,014 MiB after loading the Qwen3-4B shape). The converter holds
# its own codes for the function it converts and the last one's until both are saved (save_functions):
# ct.convert decode peaked 1.9 / 1.4 / 2.0 copies of the codes above the loaded model at 0.6B / 1.7B / 4B.
# While loading, the embedding is in flight as bf16, fp32 and fp16 row blocks: 10 bytes per element covers
# the measured load peaks (3,040 MiB at 0.6B, 8,976 MiB at 4B)
COREML_INT4_CODES = 1 + FP32 / 32
COREML_INT4_HELD = 1.5
COREML_INT4_COPIES = 2.2
COREML_INT4_EMBED_IN_FLIGHT = 10
# tflite-qnn at the Qwen3-0.6B shape (2.4 GB of fp32 weights): ai-edge-quantizer's child (w8a16) peaked
# at 11,100 MiB (it reads the float model twice and runs it); LiteRT's QNN compile (apply_plugin_main
# with QAIRT's HTP prepare) of the fp16 graph at 14,458 MiB, of the w8a16 one at <= 11,100 MiB
QNN_QUANTISER = 4.9
QNN_COMPILE = {False: 6.4, True: 4.9}  # keyed by "quantised"
QNN_CALIBRATION_WINDOWS = 5  # qnn_quant.CalibConfig's 4 windows and the held-out one: one KV cache each
SLACK = 0.8 * GIB  # the Python/torch/ExecuTorch runtime itself


@dataclass(frozen=True)
class Counts:
    linear: int  # quantisable Linear weights
    other: int  # embedding, norms, non-quantisable linears
    kv_cache: int  # bytes of the KV cache at the export's max_seq_len


def param_counts(cfg: ModelConfig, settings: ExportSettings, group_size: int = 32) -> Counts:
    with torch.device("meta"):
        model = MekiModel(cfg.replace(folded=cfg.has_meki))
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m.in_features % group_size == 0)
    total = sum(p.numel() for p in model.parameters())
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * settings.max_seq_len * cfg.head_dim * FP32
    return Counts(linear, total - linear, kv)


def stage_estimates(cfg: ModelConfig, targets: list[str], settings: ExportSettings,
                    eager_quant: bool) -> dict[str, int]:
    """Peak bytes expected per stage: load, and the lowering of each target (one bundle at a time).

    eager_quant: layers fused and quantised as they load (eager_quant.py), the head untied then too;
    otherwise the model loads fp32 and each export copy is fused and quantised before lowering."""
    c = param_counts(cfg, settings)
    fp32 = (c.linear + c.other) * FP32
    if eager_quant and settings.quant == "int4":  # only Core ML takes int4
        return _coreml_int4_estimates(cfg, c, targets)
    quant = settings.quant if settings.quant in HELD else "none"
    head = cfg.vocab_size * cfg.dim if cfg.tie_embeddings and settings.quant != "none" else 0  # untied to quantise
    # Megatron: the MeKi layers' FFN linears with the norm weight folded in (fused_layers.py), new
    # weights beside the dense baseline's own; otherwise both bundles share the FFN modules
    twin = 2 * cfg.num_layers * cfg.dim * cfg.ffn_dim if cfg.has_meki and cfg.variant == "megatron" else 0
    held = c.other * FP32 + ((c.linear + head + twin) * HELD[quant] if eager_quant else c.linear * FP32)
    # in flight while loading/fusing: the embedding read as bf16 and cast to fp32; a layer's gate+up weights (fp32)
    largest = max(cfg.vocab_size * cfg.dim * (FP32 + 2), 2 * cfg.dim * cfg.ffn_dim * FP32)
    out = {"load": int(held + largest + SLACK)}
    for t in targets:
        if t.startswith("executorch"):
            quantised = 0 if eager_quant or quant == "none" else (c.linear + head) * HELD[quant]
            program = c.other * FP32 + (c.linear + head) * PACKED[quant]
            # while the export copy is fused and quantised (nothing to do when it was done while loading)
            copying = 0 if eager_quant else twin * FP32 + head * FP32 + quantised
            lowering = quantised + c.kv_cache + LOWERING_COPIES[decode_program(t, settings)] * program
            out[t] = int(held + max(copying, lowering) + SLACK)
        elif t == "tflite":
            out[t] = int((LITERT_PAGE_CACHE + LITERT_ANON) * fp32 + c.kv_cache + SLACK)
        else:
            copies = CONVERTER_COPIES.get(t.split("-")[0], max(CONVERTER_COPIES.values()))
            out[t] = int(fp32 + copies * fp32 + c.kv_cache + SLACK)
        if t.startswith("tflite-qnn"):  # the parent keeps the model and the calibration feeds
            quantised = settings.quant != "none"
            feeds = (QNN_CALIBRATION_WINDOWS if quantised else 1) * c.kv_cache
            if quantised:
                out[f"{t} quantise"] = int(fp32 + feeds + QNN_QUANTISER * fp32 + SLACK)
            out[f"{t} compile"] = int(fp32 + feeds + QNN_COMPILE[quantised] * fp32 + SLACK)
    return out


def _coreml_int4_estimates(cfg: ModelConfig, c: Counts, targets: list[str]) -> dict[str, int]:
    embedding = cfg.vocab_size * cfg.dim
    quantised = c.linear + embedding  # the embedding too (tied: the head reads it)
    held = (c.other - embedding) * FP32 + quantised * COREML_INT4_HELD
    out = {"load": int(held + embedding * COREML_INT4_EMBED_IN_FLIGHT + SLACK)}
    for t in targets:
        out[t] = int(held + COREML_INT4_COPIES * quantised * COREML_INT4_CODES + c.kv_cache + SLACK)
    return out


def available_bytes() -> int:
    """What a stage can grow into: MemAvailable, or a memory cgroup's headroom where that is less (in a
    container /proc/meminfo shows the host's memory), plus this process's resident set."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) * 1024
    cg = cgroup_memory()  # read once for both
    return min(headroom_bytes(cg) + rss, memory_cap(cg))  # the file pages mapped in are counted once


def check_memory(cfg: ModelConfig, targets: list[str], settings: ExportSettings, eager_quant: bool,
                 available: int | None = None) -> dict[str, int]:
    """Raise ExportError before the first stage whose estimated peak does not fit; returns the estimates."""
    if os.environ.get("MEKI_SKIP_MEMORY_CHECK") == "1":
        return {}
    avail = available_bytes() if available is None else available
    est = stage_estimates(cfg, targets, settings, eager_quant)
    for stage, need in est.items():
        if need > avail:
            raise ExportError(
                f"{cfg.name}: stage {stage!r} needs about {need / GIB:.1f} GiB, {avail / GIB:.1f} GiB is available; "
                f"{_advice(cfg, targets, settings, eager_quant)} (MEKI_SKIP_MEMORY_CHECK=1 tries anyway)")
    return est


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def bundles_at_once(cfg: ModelConfig, targets: list[str], settings: ExportSettings, eager_quant: bool,
                    jobs: int | None, separate_baseline: bool = False, available: int | None = None) -> int:
    """2: the dense bundle is written beside the MeKi one (forked.py); 1: one after the other.

    jobs None decides: 2 when this process may use two cores and the estimated peak of both lowerings
    at once fits (the loaded weights are shared; a separate baseline checkpoint is held twice). jobs=2
    insists, and raises ExportError when the estimate does not fit."""
    if jobs == 1 or not cfg.has_meki or (jobs is None and usable_cores() < 2):
        return 1
    est = stage_estimates(cfg, targets, settings, eager_quant)
    load = est["load"]
    grow = max(need - load for key, need in est.items() if key != "load")  # a bundle's lowering over the load
    need = (2 * load if separate_baseline else load) + 2 * max(grow, 0) + SLACK
    avail = available_bytes() if available is None else available
    if need <= avail or (jobs is not None and os.environ.get("MEKI_SKIP_MEMORY_CHECK") == "1"):
        return 2
    if jobs is None:
        log.info("%s: one bundle after the other (both at once: about %.1f GiB, %.1f available)",
                 cfg.name, need / GIB, avail / GIB)
        return 1
    raise ExportError(f"{cfg.name}: writing both bundles at once needs about {need / GIB:.1f} GiB, "
                      f"{avail / GIB:.1f} GiB is available; instead: --jobs 1 (one bundle after the other)")


def _advice(cfg: ModelConfig, targets: list[str], settings: ExportSettings, eager_quant: bool) -> str:
    tips = []
    if settings.quant == "none" and any(t.startswith("executorch") for t in targets):
        tips.append("export with --quant 8da4w (weights quantised as they load, ~1.2 bytes per weight)")
    elif "tflite" in targets:
        tips.append("LiteRT's converter takes the fp32 weights (loaded whole, then about 1.1 copies while "
                    "converting): export --target executorch-xnnpack, or --target coreml --quant int4, which "
                    "quantise as they load")
    elif not eager_quant and len(targets) > 1:
        tips.append("export one --target per run (executorch-xnnpack alone, or coreml alone with --quant int4, "
                    "quantises while loading)")
    cg = cgroup_memory()
    if cg is not None and cg.limit < physical_bytes():
        tips.append(f"raise the memory limit of this job's container or cgroup ({cg.limit / GIB:.1f} GiB)")
    tips.append("close other programs or use a machine with more memory")
    return "instead: " + "; or ".join(tips)
