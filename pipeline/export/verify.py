"""`meki verify BUNDLE`: every artifact that runs here against eager PyTorch on fixed prompts.

The eager reference is the folded model from the checkpoint given (its fingerprint must be the bundle's), fed
the same pack rows, with the same torchao quantisation as the artifact: so a failure is the
lowering's fault. Checks: logits (fp32: max |diff| <= 1e-3; quantised: SNR >= floor) and the same
greedy tokens for `steps` decode steps. Targets without a runtime here get their specs checked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mobile_runtime.backends import RUNNERS, open_runner
from contract.manifest import Backbone, BundleError, Manifest, verify_bundle
from pipeline.checkpoint import load_checkpoint
from pipeline.export.bundle import dense_baseline
from pipeline.export.quantize import quantize_weights
from pipeline.fold import fold_model
from pipeline.model import MekiModel

FP32_MAX_ABS = 1e-3
SNR_FLOOR_DB = {"8da4w": 15.0, "8da4w-h8": 15.0, "int8wo": 25.0, "int8": 15.0, "int4": 10.0, "palettize4": 10.0, "fp16": 30.0,
                "w8a16": 20.0, "w4a16": 10.0}
PROMPTS = ([1, 2, 3, 4, 5, 6, 7, 8], [42, 7, 7, 99, 3])
FP16_TARGETS = ("tflite-qnn",)  # fp32 graphs the NPU computes in fp16: the fp16 SNR floor, not 1e-3


def snr_floor(backbone: Backbone) -> float | None:
    """The artifact's SNR floor in dB, or None where fp32 parity (max |diff| <= 1e-3) is required."""
    if backbone.quant != "none":
        return SNR_FLOOR_DB[backbone.quant]
    return SNR_FLOOR_DB["fp16"] if backbone.target in FP16_TARGETS else None


@dataclass
class VerifyRow:
    bundle: str
    target: str
    quant: str
    status: str  # pass | fail | spec-ok
    max_abs_diff: float = math.nan
    snr_db: float = math.nan
    greedy_match: bool | None = None
    note: str = ""


def reference_model(manifest: Manifest, checkpoint: Path) -> MekiModel:
    """The eager folded model (or its dense baseline) the bundle was exported from; a checkpoint whose
    fingerprint is not the bundle's is refused (it is another model)."""
    model, info = load_checkpoint(Path(checkpoint))
    if info.fingerprint != manifest.fingerprint:
        raise BundleError(f"{checkpoint}: fingerprint {info.fingerprint} is not the bundle's {manifest.fingerprint} "
                          f"(exported from {manifest.export.get('source', {}).get('name', '?')!r}): another model")
    if model.cfg.has_meki and not model.cfg.folded:
        model, _ = fold_model(model)
    if manifest.memory == "none" and model.cfg.has_meki:
        model = dense_baseline(model)
    return model.eval()


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((ref - got) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref ** 2).sum()) / noise)


def eager_runner(model: MekiModel, max_seq_len: int):
    model = copy.deepcopy(model)
    model.setup_cache(max_seq_len)

    def step(_method: str, tokens: np.ndarray, pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        with torch.no_grad():
            r = None if rows is None else torch.from_numpy(rows)
            return model(torch.from_numpy(tokens), torch.from_numpy(pos), r, last_only=True)[:, 0].numpy()
    return step


def greedy_trace(step, prompt: list[int], steps: int, prefill_len: int, lookup) -> tuple[list[int], list[np.ndarray]]:
    """Prefill (in chunks of prefill_len) then `steps` greedy decode steps; returns tokens and logits."""
    logits_seen = []
    for start in range(0, len(prompt), prefill_len):
        chunk = np.array([prompt[start:start + prefill_len]], dtype=np.int64)
        logits = step("prefill", chunk, np.arange(start, start + chunk.shape[1]), lookup(chunk))
    logits_seen.append(logits)
    tokens = [int(logits.argmax())]
    for i in range(steps - 1):
        tok = np.array([[tokens[-1]]], dtype=np.int64)
        logits = step("decode", tok, np.array([len(prompt) + i]), lookup(tok))
        logits_seen.append(logits)
        tokens.append(int(logits.argmax()))
    return tokens, logits_seen


def verify_backbone(bundle: Path, manifest: Manifest, backbone: Backbone, reference: MekiModel,
                    steps: int) -> VerifyRow:
    row = VerifyRow(bundle.name, backbone.target, backbone.quant, "fail")
    if backbone.target not in RUNNERS:
        from pipeline.export.spec_checks import check_spec
        problems = check_spec(bundle, manifest, backbone)
        row.status, row.note = ("fail", "; ".join(problems)) if problems else ("spec-ok", "no runtime here: spec checked")
        return row
    ref = copy.deepcopy(reference)
    if backbone.target.startswith("executorch"):  # the same torchao weights the program was lowered with
        quantize_weights(ref, backbone.quant)
    lookup = _row_lookup(bundle, manifest)
    runner = open_runner(bundle, backbone)
    diffs, snrs, match, notes = [], [], True, []
    for prompt in PROMPTS:
        ref_tokens, ref_logits = greedy_trace(eager_runner(ref, backbone.max_seq_len), list(prompt), steps,
                                              backbone.prefill_len, lookup)
        got_tokens, got_logits = greedy_trace(runner.step, list(prompt), steps, backbone.prefill_len, lookup)
        split = next((i for i, (a, b) in enumerate(zip(ref_tokens, got_tokens)) if a != b), None)
        agree = len(ref_tokens) if split is None else split + 1
        diffs += [float(np.abs(a - b).max()) for a, b in zip(ref_logits[:agree], got_logits[:agree])]
        snrs += [snr_db(a, b) for a, b in zip(ref_logits[:agree], got_logits[:agree])]
        if split is not None:
            tie = snr_floor(backbone) is not None and _near_tie(ref_logits[split], got_logits[split])
            match &= tie
            notes.append(f"greedy split at step {split}" + (" on a near-tie" if tie else ""))
    row.max_abs_diff, row.snr_db, row.greedy_match = max(diffs), min(snrs), match
    floor = snr_floor(backbone)
    close = row.max_abs_diff <= FP32_MAX_ABS if floor is None else row.snr_db >= floor
    row.status = "pass" if close and match else "fail"
    notes += [] if floor is None else [f"SNR floor {floor} dB"]
    if "soc" in backbone.extra:
        notes.append(f"{backbone.extra['soc']} on the HTP simulator")
    row.note = "; ".join(notes)
    return row


def _near_tie(ref: np.ndarray, got: np.ndarray) -> bool:
    """A quantised artifact may pick the other token only where the reference's top-2 margin is
    smaller than the logit error seen at that very step: there the choice is noise, not a bug."""
    top2 = np.sort(ref.reshape(-1))[-2:]
    return float(top2[1] - top2[0]) < float(np.abs(ref - got).max())


def _row_lookup(bundle: Path, manifest: Manifest):
    if manifest.memory_pack is None:
        return lambda tokens: None
    from mobile_runtime.pack import MemoryPack

    pack = MemoryPack.open(bundle / manifest.memory_pack.file, expected_fingerprint=manifest.fingerprint)
    return lambda tokens: pack.lookup(tokens.reshape(-1))[None]


def verify_bundle_artifacts(bundle: Path, checkpoint: Path, steps: int = 32) -> list[VerifyRow]:
    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    reference = reference_model(manifest, checkpoint)
    return [verify_backbone(bundle, manifest, b, reference, steps) for b in manifest.backbones]
