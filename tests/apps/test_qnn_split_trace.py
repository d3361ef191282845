"""The tflite-qnn split-cache contract as mobile_runtime/qnn_sim.py's QnnSimRunner.step feeds it, recorded
with a numpy fake graph; android_app's IoCacheProgramTest replays the same steps through IoCacheProgram
and must feed exactly this trace (android_app/meki-runtime/src/test/resources/qnn_split_trace.json).
Regenerate: PYTHONPATH=. python tests/apps/test_qnn_split_trace.py"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mobile_runtime.qnn_sim import QnnSimRunner

TRACE = Path(__file__).resolve().parents[2] / "android_app/meki-runtime/src/test/resources/qnn_split_trace.json"
H, S, D, P, POISON = 2, 14, 4, 4, 77.0
# (method, tokens, start): a 13-token prompt in prefill chunks of 4 (the last one padded, its positions
# clipped to S - 1), then one decode step
STEPS = [("prefill", [1, 2, 3, 4], 0), ("prefill", [5, 6, 7, 8], 4), ("prefill", [9, 10, 11, 12], 8),
         ("prefill", [13], 12), ("decode", [14], 13)]


def cell(tokens: np.ndarray, kind: str) -> np.ndarray:
    """New rows [1, H, T, D]: token + 1 + h + d/4 (+0.5 for v): exact in float32 and on a 0.25 int16 grid."""
    h, d = np.arange(H)[:, None, None], np.arange(D)[None, None, :]
    return (tokens[None, :, None] + 1 + h + d / 4 + (0.5 if kind == "v" else 0.0))[None].astype(np.float32)


def trace() -> list[dict]:
    calls: list[dict] = []

    def graph(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        tokens, n = feeds["tokens"][0], int(feeds.get("last_index", [0])[0]) + 1
        calls.append({"tokens": tokens.tolist(), "input_pos": np.asarray(feeds["input_pos"]).tolist(),
                      "last_index": None if "last_index" not in feeds else int(feeds["last_index"][0]),
                      "kv_k_0": feeds["kv_k_0"].reshape(-1).tolist(), "kv_v_0": feeds["kv_v_0"].reshape(-1).tolist()})
        out = {"logits": np.zeros((1, 8), np.float32)}
        for kind in ("k", "v"):
            rows = cell(tokens, kind)
            rows[:, :, n:] = POISON  # padded rows: must never reach the cache
            out[f"{kind}_new_0"] = rows
        return out

    runner = object.__new__(QnnSimRunner)  # step() verbatim, the compiled model replaced by `graph`
    runner.backbone = SimpleNamespace(prefill_len=P, max_seq_len=S)
    runner._sigs = {"prefill": graph, "decode": graph}
    runner.cache = {name: np.zeros((1, H, S, D), np.float32) for name in ("kv_k_0", "kv_v_0")}
    for method, tokens, start in STEPS:
        runner.step(method, np.array([tokens]), np.arange(start, start + len(tokens)), None)
    return calls


def test_java_replays_the_simulator_runner_trace() -> None:
    want = json.loads(TRACE.read_text())
    assert want["steps"] == [list(s) for s in STEPS] and want["calls"] == trace()
    assert want["calls"][3]["input_pos"] == [12, 13, 13, 13]  # padding clipped to the cache
    assert POISON not in want["calls"][4]["kv_k_0"]


if __name__ == "__main__":
    TRACE.write_text(json.dumps({"H": H, "S": S, "D": D, "P": P, "poison": POISON, "steps": [list(s) for s in STEPS],
                                 "calls": trace()}) + "\n")
    sys.exit(0)
