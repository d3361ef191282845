"""LiteRT (.tflite) export of the fake preset: bundles, graph checks, verify against eager, NPU SDK checks.

The conversion runs in .venv-litert (made by `make setup`) unless litert-torch imports here.
"""

import contextlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mobile_runtime.backends import open_runner
from contract.manifest import verify_bundle
from pipeline.checkpoint import save_checkpoint
from pipeline.export import litert, tflite_backend
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportError, ExportSettings, get_target
from pipeline.export.verify import (PROMPTS, eager_runner, greedy_trace, reference_model,
                                    verify_bundle_artifacts)
from tests.model.helpers import trained_like_model

pytestmark = pytest.mark.slow
# S = 60 is not a multiple of P = 8: a last prompt chunk near the end exercises the decode fallback
SETTINGS = dict(max_seq_len=60, prefill_len=8)


SEEN_IN_SYSTEM_TEMP: dict[str, set[str]] = {}  # per quant: what the export put in the system temp dir


@contextlib.contextmanager
def watched_system_temp(root: Path, seen: set[str]):
    """The system temp dir (tempfile's and the children's TMPDIR) pointed at an empty directory, polled
    for whatever appears in it while the block runs."""
    temp = root / "system-tmp"
    temp.mkdir()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.005):
            seen.update(os.listdir(temp))

    watcher = threading.Thread(target=poll, daemon=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(temp))
        mp.setenv("TMPDIR", str(temp))
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
    seen.update(os.listdir(temp))


@pytest.fixture(scope="module", params=["none", "int8", "int8wo"])
def bundles(request, tmp_path_factory):
    if litert.converter_missing():
        pytest.skip(litert.converter_missing())
    root = tmp_path_factory.mktemp(f"tflite-{request.param}")
    save_checkpoint(trained_like_model(), root / "ck")
    with watched_system_temp(root, SEEN_IN_SYSTEM_TEMP.setdefault(request.param, set())):
        export_bundles(root / "ck", root / "out", ["tflite"], ExportSettings(quant=request.param, **SETTINGS),
                       pack_dtype="fp16")
    return root / "out", request.param


def test_intermediates_stay_beside_the_bundle(bundles):
    """The converter's fp32 handoff and the quantiser's files go beside the output, not into the system
    temp dir (memory on tmpfs systems), and nothing of them is left in the bundle."""
    out, quant = bundles
    caches = {name for name in SEEN_IN_SYSTEM_TEMP[quant] if name.startswith("torchinductor_")}  # torch's own, kept
    assert SEEN_IN_SYSTEM_TEMP[quant] - caches == set()
    assert not [p for p in out.rglob(".meki-*")]


def traces(bundle, prompt, steps):
    """Eager and LiteRT greedy traces of one prompt (tokens, logits per step)."""
    manifest = verify_bundle(bundle)
    backbone = manifest.backbones[0]
    ref = reference_model(manifest, bundle.parent.parent / "ck")
    if manifest.memory_pack is None:
        lookup = lambda tokens: None  # noqa: E731
    else:
        from mobile_runtime.pack import MemoryPack
        pack = MemoryPack.open(bundle / manifest.memory_pack.file)
        lookup = lambda tokens: pack.lookup(tokens.reshape(-1))[None]  # noqa: E731
    eager = greedy_trace(eager_runner(ref, backbone.max_seq_len), prompt, steps, backbone.prefill_len, lookup)
    return eager, greedy_trace(open_runner(bundle, backbone).step, prompt, steps, backbone.prefill_len, lookup)


def flip_is_a_tie(bundle) -> bool:
    """A quantised greedy mismatch that the logit error explains: at the first differing step the
    reference's top-2 margin is below the largest logit error seen before it."""
    for prompt in PROMPTS:
        (ref_tok, ref_log), (got_tok, got_log) = traces(bundle, list(prompt), 32)
        i = next((i for i, (a, b) in enumerate(zip(ref_tok, got_tok)) if a != b), None)
        if i is not None:
            top2 = np.sort(ref_log[i][0])[-2:]
            err = max(float(np.abs(a - b).max()) for a, b in zip(ref_log[:i + 1], got_log[:i + 1]))
            return float(top2[1] - top2[0]) < err
    return False


def test_bundles_verify_against_eager(bundles):
    out, quant = bundles
    for kind in ("meki", "dense"):
        [row] = verify_bundle_artifacts(out / kind, out.parent / "ck", steps=32)
        if quant == "none":
            assert row.status == "pass" and row.greedy_match and row.max_abs_diff <= 1e-3, row
        else:  # the SNR floor always; greedy tokens too, unless they part at a near-tie of the fp32 reference
            assert row.snr_db >= 15.0, row
            assert row.status == "pass" or (not row.greedy_match and flip_is_a_tie(out / kind)), row


def test_graph_and_manifest(bundles):
    out, quant = bundles
    for kind in ("meki", "dense"):
        manifest = json.loads((out / kind / "manifest.json").read_text())
        [backbone] = manifest["backbones"]
        assert backbone["kv_cache"] == "io" and backbone["extra"]["prefill_last_index"] == "last_index"
        cfg = reference_model(verify_bundle(out / kind), out.parent / "ck").cfg
        facts = litert.tflite_facts(out / kind / backbone["file"], cfg.replace(memory="both"))
        assert facts["tables"] == []  # checked with the MeKi table shapes, in the dense graph too
        for sig in ("prefill", "decode"):
            assert ("meki_rows" in facts["inputs"][sig]) == (kind == "meki")
            assert sorted(facts["inputs"][sig]) == sorted(t["name"] for t in backbone["methods"][sig]["inputs"])
        assert facts["ops"].get("DYNAMIC_UPDATE_SLICE", 0) == 2 * 2 * cfg.num_layers  # k and v, per signature
        assert not any("SCATTER" in op for op in facts["ops"])
        if quant != "none":
            assert manifest["export"]["settings"]["quant"] == quant


def test_prefill_runs_to_the_cache_end(bundles):
    """A 57-token prompt: padded chunks, and a last chunk at 56 that must not be clamped (56 + 8 > 60)."""
    out, quant = bundles
    if quant != "none":
        pytest.skip("fp32 only")
    prompt = [int(t) for t in np.random.default_rng(0).integers(1, 128, 57)]
    (ref_tok, ref_log), (got_tok, got_log) = traces(out / "meki", prompt, 3)
    assert ref_tok == got_tok
    assert max(float(np.abs(a - b).max()) for a, b in zip(ref_log, got_log)) <= 1e-3


def test_table_detector_sees_a_table_shaped_tensor(bundles):
    out, _ = bundles
    cfg = reference_model(verify_bundle(out / "meki"), out.parent / "ck").cfg
    # pretend d_mem == dim: the tied embedding [V, dim] now has a table's shape and must be reported
    found = litert.tflite_facts(out / "meki" / "model_litert.tflite", cfg.replace(d_mem=cfg.dim))["tables"]
    assert found and all(f"({cfg.vocab_size}, {cfg.dim})" in f for f in found)


@pytest.mark.parametrize("target,libs,package", [  # tflite-qnn: tests/test_export_qnn.py
    ("tflite-mediatek", "libneuron_adapter.so, libneuron_sys_util.mtk.so cannot be loaded",
     "ai-edge-litert-sdk-mediatek")])
def test_npu_targets_name_the_missing_sdk(target, libs, package, tmp_path):
    if tflite_backend.npu_sdk_missing(target) is None:
        pytest.skip(f"{target}: the vendor SDK is installed here")
    with pytest.raises(ExportError) as err:
        get_target(target).ensure_available(ExportSettings(**SETTINGS))
    assert libs in str(err.value) and package in str(err.value)
    # export stops before any conversion starts
    save_checkpoint(trained_like_model(), tmp_path / "ck")
    with pytest.raises(ExportError, match=f"target {target}: .*{libs}"):
        export_bundles(tmp_path / "ck", tmp_path / "out", [target], ExportSettings(**SETTINGS))
    assert not (tmp_path / "out").exists()


def test_missing_converter_names_the_venv_and_extra(monkeypatch):
    monkeypatch.setattr(litert, "litert_python", lambda: "/nonexistent/.venv-litert/bin/python")
    with pytest.raises(ExportError, match=r"target tflite: LiteRT converter not installed.*make setup.*\.\[litert\]"):
        get_target("tflite").ensure_available(ExportSettings())


def test_registry_lists_litert_targets():
    with pytest.raises(ExportError, match="unknown target 'tfl'.*tflite, tflite-google-tensor, tflite-mediatek, tflite-qnn, tflite-samsung"):
        get_target("tfl")
    with pytest.raises(ExportError, match="quant 'int4' not supported.*none, int8, int8wo"):
        get_target("tflite").ensure_available(ExportSettings(quant="int4"))


def test_weights_mapped_from_the_converter_file_keep_their_values(tmp_path):
    """After the parent saves the model for the converter child it reads the weights from that file's
    mapping (litert.map_weights): same values, the anonymous copy gone, and a later write stays private."""
    model = trained_like_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in model.state_dict().items()}
    src = tmp_path / "model.pt"
    torch.save({"config": model.cfg.to_dict(), "state": model.state_dict()}, src)
    litert.map_weights(model, src)
    src.unlink()  # the converter's temporary folder goes; the mapping stays valid
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(after[k].data_ptr() != pointers[k] for k in before)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    assert torch.equal(model.embed.weight, before["embed.weight"] + 1.0)


# Runs in LiteRT's Python: our conversion (float .tflite written, then quantised file to file:
# litert.quantise_file) and litert-torch's own (its converter applies the same recipe to the float bytes it
# holds, in memory) must give one file. ai-edge-quantizer serialises a model whose weights pack to < 256 KB
# in one piece, a larger one with its buffers after the flatbuffer (through a mapping of the output file
# for us): the fake model takes the first way, a wider one the second.
SAME_AS_LITERT_TORCH = """
import sys, tempfile
from pathlib import Path
import torch, litert_torch
from pipeline.export import litert
from pipeline.export.common import share_weights_copy
from pipeline.export.registry import ExportSettings
from pipeline.fold import fold_model
from pipeline.model import MekiModel, init_weights
from pipeline.config import fake
from tests.model.helpers import trained_like_model

wide = init_weights(MekiModel(fake().replace(vocab_size=1024, dim=256, ffn_dim=512)), seed=1)
out = Path(tempfile.mkdtemp())
for name, quant, model in (("int8", "int8", trained_like_model()), ("int8wo", "int8wo", trained_like_model()),
                           ("int8-wide", "int8", wide)):
    model = fold_model(model)[0].eval()
    settings = ExportSettings(quant, 60, 8)
    litert.convert_in_process(model, out / f"ours-{name}.tflite", settings)
    step = litert.LiteRTStep(share_weights_copy(model), settings.max_seq_len).eval()
    feeds = {s: litert.sample_kwargs(model.cfg, settings, s) for s in ("prefill", "decode")}
    with torch.no_grad():
        edge = (litert_torch.signature("prefill", step, sample_kwargs=feeds["prefill"])
                .signature("decode", step, sample_kwargs=feeds["decode"])
                .convert(quant_config=litert.quant_config(quant), lightweight_conversion=True))
    edge.export(str(out / f"theirs-{name}.tflite"))
    ours, theirs = (out / f"ours-{name}.tflite").read_bytes(), (out / f"theirs-{name}.tflite").read_bytes()
    print("RESULT", name, "same" if ours == theirs else "DIFFERENT", len(ours))
"""


def test_quantised_after_writing_equals_litert_torchs_own_quantisation():
    import subprocess

    if litert.converter_missing():
        pytest.skip(litert.converter_missing())
    py = litert.litert_python() or sys.executable
    done = subprocess.run([py, "-c", SAME_AS_LITERT_TORCH], cwd=litert.REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    want = [["int8", "same"], ["int8wo", "same"], ["int8-wide", "same"]]
    assert [r[:2] for r in results] == want, done.stdout[-2000:]
    assert int(results[0][2]) < 256 * 1024 < int(results[2][2])  # the two ways of serialising, both compared


MAPPED_WEIGHTS_UNWRITTEN = """
import sys, tempfile, torch
from pathlib import Path
from pipeline.checkpoint import build_model
from pipeline.export import litert
from pipeline.export.registry import ExportSettings
from pipeline.fold import fold_model
from tests.model.helpers import trained_like_model

def anonymous_kib(path):
    # pages of the file's private mapping that this process has written (copied on write), kB
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Anonymous:"):
            total += int(line.split()[1])
    return total

work = Path(tempfile.mkdtemp())
model = fold_model(trained_like_model())[0]
torch.save({"config": model.cfg.to_dict(), "state": model.state_dict()}, work / "model.pt")
for swap in (True, False):
    saved = torch.load(work / "model.pt", weights_only=True, mmap=True)  # as the converter child loads it
    mapped = build_model(model.cfg, saved["state"], "test").eval()
    size = sum(t.numel() * t.element_size() for t in saved["state"].values()) // 1024
    if not swap:
        litert.weights_left_unwritten = lambda: __import__("contextlib").nullcontext()
    litert.convert_float(mapped, work / f"out-{swap}.tflite", ExportSettings("none", 60, 8))
    print("RESULT", swap, anonymous_kib(work / "model.pt"), size)
    del mapped, saved
"""


def test_the_converter_leaves_mapped_weights_unwritten():
    """litert-torch clamps each constant in place; in the converter child that wrote every page of the
    weights mapped from the handoff file (each page then the process's own copy). With the swap the
    mapping stays clean (its pages reclaimable): checked in /proc/self/smaps, against litert-torch's own."""
    import subprocess

    if litert.converter_missing():
        pytest.skip(litert.converter_missing())
    py = litert.litert_python() or sys.executable
    done = subprocess.run([py, "-c", MAPPED_WEIGHTS_UNWRITTEN], cwd=litert.REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {line.split()[1]: [int(v) for v in line.split()[2:]] for line in done.stdout.splitlines()
               if line.startswith("RESULT ")}
    (ours, size), (theirs, _) = results["True"], results["False"]
    assert ours == 0 and theirs >= size // 2, results  # unswapped: the weights' pages copied


def test_clamp_without_writing_gives_litert_torchs_values():
    from pipeline.export.litert import clamp_without_writing

    finite = torch.randn(64, 32)
    assert clamp_without_writing(finite) is finite  # nothing to clamp: the same tensor, unwritten
    odd = torch.tensor([1.0, float("inf"), -float("inf"), float("nan"), -2.0])
    want = odd.clone().clamp_(min=torch.finfo(torch.float32).min, max=torch.finfo(torch.float32).max)
    got = clamp_without_writing(odd)
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0)) and torch.isinf(odd).sum() == 2
    assert clamp_without_writing(torch.arange(4)).dtype == torch.int64
