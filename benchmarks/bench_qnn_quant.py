"""Benchmark: tflite-qnn w8a16 / w4a16 on the HTP simulator vs eager, per output, by calibration range margin.

    python benchmarks/bench_qnn_quant.py CHECKPOINT --workdir DIR [--layers 1] [--quant w8a16] [--margin 1 4]

The checkpoint (e.g. models/demo/dense; dense only: no pack here) optionally cut to its first
--layers layers, converted once (npu_graph), calibrated on the repo's docs as `meki export` does, then
for each margin: quantised (ai-edge-quantizer, calibrated int16 ranges times the margin), compiled
for SM8750 and run on the simulator. Prints each output's worst SNR (dB) over a held-out window,
the simulator's and the LiteRT CPU interpreter's logits SNR (the same quantised model), and op coverage.
This is the reproducer of the w8a16 loss: margin 1 (no headroom) clips held-out values on both.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobile_runtime.qnn_sim import dequantize_output, plain_output_name, quantize_input  # noqa: E402
from pipeline.checkpoint import load_checkpoint  # noqa: E402
from pipeline.export.litert import convert  # noqa: E402
from pipeline.export.qnn_backend import compile_for_soc, quantize, simulator_snr  # noqa: E402
from pipeline.export.qnn_quant import CalibConfig, calibration_tokens, layer_snr, step_feeds  # noqa: E402
from pipeline.export.registry import ExportSettings  # noqa: E402


def cpu_logits_snr(path: Path, held: tuple) -> float:
    """The quantised (uncompiled) .tflite on LiteRT's CPU interpreter: logits only."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def run(sig: str, feed: dict) -> dict:
        r = it.get_signature_runner(sig)
        ins, outs = r.get_input_details(), r.get_output_details()
        # the interpreter reports (0.0, 0) for a float tensor: no quantisation
        q = {k: d["quantization"] if d["dtype"] != np.float32 else None for k, d in ins.items()}
        out_q = {k: d["quantization"] if d["dtype"] != np.float32 else None for k, d in outs.items()}
        enc = {k: quantize_input(v, q[k], ins[k]["dtype"]) for k, v in feed.items()}
        return {plain_output_name(sig, k): dequantize_output(v, out_q[k]) for k, v in r(**enc).items()}

    only_logits = {sig: [{"logits": o["logits"]} for o in items] for sig, items in held[1].items()}
    return layer_snr(only_logits, run, held[0])["logits"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--quant", default="w8a16", choices=("w8a16", "w4a16"))
    ap.add_argument("--margin", type=float, nargs="+", default=[1.0, 4.0])
    a = ap.parse_args()
    model = load_checkpoint(a.checkpoint)[0].eval()
    if model.cfg.has_meki:
        raise SystemExit("bench_qnn_quant: a dense checkpoint please (MeKi rows come from a bundle's pack)")
    if a.layers and a.layers < model.cfg.num_layers:
        model.layers, model.cfg = model.layers[:a.layers], replace(model.cfg, num_layers=a.layers)
    settings, calib = ExportSettings(max_seq_len=512, prefill_len=32), CalibConfig()
    ids = calibration_tokens(None, a.checkpoint / "tokenizer.json", model.cfg.vocab_size)
    none = lambda t: None  # noqa: E731
    cal, _ = step_feeds(model, 512, 32, ids, none, calib)
    held = step_feeds(model, 512, 32, ids, none, replace(calib, windows=1, skip_tokens=calib.windows * (2 * 32 + 6)))
    a.workdir.mkdir(parents=True, exist_ok=True)
    src = a.workdir / "float.tflite"
    convert(model, src, settings, graph="npu")
    for margin in a.margin:
        q, out = a.workdir / f"{a.quant}_m{margin:g}.tflite", a.workdir / f"{a.quant}_m{margin:g}_sm8750.tflite"
        quantize(src, q, a.quant, cal, a.workdir, margin)
        report = compile_for_soc(q, out, "SM8750")
        row = {"quant": a.quant, "margin": margin, "layers": model.cfg.num_layers, "ops": report["partitions"],
               "cpu_logits": cpu_logits_snr(q, held), "simulator": simulator_snr(out, held)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
