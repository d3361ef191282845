"""tflite-qnn: LiteRT AOT compile for Qualcomm HTP, run on the HTP simulator (onnxruntime-qnn), vs eager.

The slow test compiles the fake preset for SM8750 (MeKi and dense) and runs both on the simulator;
the others check the refusals without compiling anything.
"""

import json

import numpy as np
import pytest

from mobile_runtime.backends import open_runner
from contract.manifest import verify_bundle
from pipeline.checkpoint import save_checkpoint
from pipeline.export import qnn_backend
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportError, ExportSettings, get_target
from pipeline.export.verify import eager_runner, greedy_trace, reference_model, verify_bundle_artifacts
from tests.model.helpers import trained_like_model

SETTINGS = dict(max_seq_len=60, prefill_len=8)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    if qnn_backend.qnn_sdk_missing():
        pytest.skip(qnn_backend.qnn_sdk_missing())
    root = tmp_path_factory.mktemp("qnn")
    save_checkpoint(trained_like_model(), root / "ck")
    export_bundles(root / "ck", root / "out", ["tflite-qnn"], ExportSettings(socs=("SM8750",), **SETTINGS),
                   pack_dtype="fp16")
    return root / "out"


@pytest.mark.slow
def test_simulator_matches_eager(bundles):
    for kind in ("meki", "dense"):
        [row] = verify_bundle_artifacts(bundles / kind, bundles.parent / "ck", steps=32)
        assert row.status == "pass" and row.greedy_match and row.snr_db >= 30.0, row


@pytest.mark.slow
def test_compiled_model_and_manifest(bundles):
    for kind in ("meki", "dense"):
        manifest = json.loads((bundles / kind / "manifest.json").read_text())
        [b] = manifest["backbones"]
        assert b["target"] == "tflite-qnn" and b["file"] == "model_litert_qnn_sm8750.tflite"
        extra, delegated = b["extra"], b["delegated"]
        assert extra["soc"] == "SM8750" and extra["qairt"].startswith("v2.51")
        for sig in ("prefill", "decode"):  # every op on the NPU, one partition per signature
            assert delegated[f"{sig}.npu_ops"] == delegated[f"{sig}.total_ops"] > 0
            assert delegated[f"{sig}.partitions"] == 1 and len(extra["dispatch"][sig]) == 1
            names = [t["name"] for t in b["methods"][sig]["inputs"]]
            assert ("meki_rows" in names) == (kind == "meki")
        [ctx] = extra["context_binaries"]
        assert ctx["bytes"] > 0 and sorted(ctx["graphs"]) == sorted(extra["dispatch"]["prefill"] + extra["dispatch"]["decode"])
        facts = qnn_backend.compiled_facts(bundles / kind / b["file"])
        assert all(f["cpu_ops"] == {} for f in facts.values())


@pytest.mark.slow
def test_prefill_runs_to_the_cache_end(bundles):
    """57 tokens: padded chunks, the last at 56 whose padding would run past S = 60 (clipped, never written)."""
    manifest = verify_bundle(bundles / "dense")
    [backbone] = manifest.backbones
    prompt = [int(t) for t in np.random.default_rng(0).integers(1, 128, 57)]
    ref = greedy_trace(eager_runner(reference_model(manifest, bundles.parent / "ck"), 60), prompt, 3, 8, lambda t: None)
    got = greedy_trace(open_runner(bundles / "dense", backbone).step, prompt, 3, 8, lambda t: None)
    assert ref[0] == got[0]
    assert min(10 * np.log10((a ** 2).sum() / ((a - b) ** 2).sum()) for a, b in zip(ref[1], got[1])) > 30


@pytest.mark.slow
def test_w8a16_passes_its_floor_on_the_simulator(tmp_path):
    """int8 weights, int16 activations (ranges widened past the calibration text): within 20 dB of
    eager and the same greedy tokens (near-tie rule); every op still on the NPU."""
    if qnn_backend.qnn_sdk_missing():
        pytest.skip(qnn_backend.qnn_sdk_missing())
    save_checkpoint(trained_like_model(), tmp_path / "ck")
    export_bundles(tmp_path / "ck", tmp_path / "out", ["tflite-qnn"],
                   ExportSettings(socs=("SM8750",), quant="w8a16", **SETTINGS), pack_dtype="fp16")
    [row] = verify_bundle_artifacts(tmp_path / "out" / "meki", tmp_path / "ck", steps=16)
    assert row.status == "pass" and row.quant == "w8a16" and row.snr_db >= 20.0, row
    [b] = json.loads((tmp_path / "out" / "meki" / "manifest.json").read_text())["backbones"]
    assert all(b["delegated"][f"{s}.npu_ops"] == b["delegated"][f"{s}.total_ops"] for s in ("prefill", "decode"))
    assert b["extra"]["layer_snr_db"]["logits"] >= 20.0


def test_unknown_soc_lists_the_valid_ones(tmp_path):
    if not qnn_backend.known_socs():
        pytest.skip("ai-edge-litert not installed")
    with pytest.raises(ExportError, match=r"target tflite-qnn: unknown SoC SM9999 \(valid: .*SM8650.*SM8750"):
        get_target("tflite-qnn").ensure_available(ExportSettings(socs=("SM9999",)))
    save_checkpoint(trained_like_model(), tmp_path / "ck")
    with pytest.raises(ExportError, match="unknown SoC SM9999"):
        export_bundles(tmp_path / "ck", tmp_path / "out", ["tflite-qnn"], ExportSettings(socs=("SM9999",)))
    assert not (tmp_path / "out").exists()


def test_soc_on_a_cpu_target_is_refused():
    with pytest.raises(ExportError, match="target tflite: --soc applies to NPU targets only"):
        get_target("tflite").ensure_available(ExportSettings(socs=("SM8750",)))


def test_missing_libraries_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(qnn_backend, "qnn_lib_dir", lambda: None)
    monkeypatch.setenv(qnn_backend.STUB_DIR_ENV, str(tmp_path))
    missing = qnn_backend.qnn_sdk_missing()
    assert "libQnnHtp.so" in missing and "onnxruntime-qnn" in missing and ".[qnn]" in missing
    assert f"{tmp_path}/libQnnLpai.so missing" in missing and "make setup" in missing
    with pytest.raises(ExportError, match=r"target tflite-qnn: .*\.\[qnn\]"):  # the module or the library check
        get_target("tflite-qnn").ensure_available(ExportSettings())


def test_ops_left_on_the_cpu_are_named():
    report = {"partitions": [{"subgraph": 0, "npu_ops": 351, "total_ops": 359, "partitions": 5}],
              "unsupported": {"DynamicUpdateSlice": 8}}
    facts = {"prefill": {"subgraph": 0, "dispatch_ops": [], "cpu_ops": {"DYNAMIC_UPDATE_SLICE": 8}}}
    with pytest.raises(ExportError, match=r"SM8750: not every op runs on the NPU; left on the CPU: "
                                          r"prefill: \{'DYNAMIC_UPDATE_SLICE': 8\}.*DynamicUpdateSlice"):
        qnn_backend._coverage({}, report, facts, "SM8750")


def test_calibration_tokens_sources(tmp_path):
    from pipeline.export.qnn_quant import calibration_tokens

    np.arange(300, dtype=np.uint16).tofile(tmp_path / "val.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint16"}))
    assert calibration_tokens(tmp_path, None, 512).tolist() == list(range(300))
    with pytest.raises(ValueError, match="do not fit vocab 128"):
        calibration_tokens(tmp_path, None, 128)
    (tmp_path / "t.txt").write_text("real text")
    assert calibration_tokens(tmp_path / "t.txt", None, 128).tolist() == [b % 128 for b in b"real text"]


def test_calibration_feeds_carry_the_cache_and_round_trip(tmp_path):
    from pipeline.export.qnn_quant import CalibConfig, load_feeds, save_feeds, step_feeds

    cfg = CalibConfig(windows=2, prefill_chunks=2, decode_steps=3)
    feeds, outs = step_feeds(trained_like_model(), 32, 4, np.arange(1, 200) % 128, lambda t: None, cfg)
    assert len(feeds["prefill"]) == 4 and len(feeds["decode"]) == 6
    first_decode = feeds["decode"][0]  # position 8: the cache holds both prefill chunks' k, v
    assert first_decode["input_pos"].tolist() == [8]
    np.testing.assert_array_equal(first_decode["kv_k_0"][:, :, 4:8], outs["prefill"][1]["k_new_0"])
    assert not first_decode["kv_k_0"][:, :, 8:].any()
    np.testing.assert_array_equal(feeds["decode"][1]["kv_v_1"][:, :, 8:9], outs["decode"][0]["v_new_1"])
    assert not feeds["prefill"][2]["kv_k_1"].any()  # the second window starts from an empty cache
    save_feeds(feeds, tmp_path / "f.npz")
    again = load_feeds(tmp_path / "f.npz")
    for sig in ("prefill", "decode"):
        assert len(again[sig]) == len(feeds[sig])
        for mine, theirs in zip(again[sig], feeds[sig]):
            assert mine.keys() == theirs.keys()
            for name in mine:
                np.testing.assert_array_equal(mine[name], theirs[name])


@pytest.mark.parametrize("target,why", [
    ("tflite-samsung", r"Samsung Exynos NPU: .*in no PyPI package .*ai-edge-litert-sdk-samsung-nightly"),
    ("tflite-google-tensor", r"Google Tensor TPU: .*liblitert_plugin_compiler.so cannot be loaded .*ai-edge-litert-sdk-google-tensor")])
def test_other_vendors_are_refused_naming_what_is_missing(target, why, tmp_path):
    with pytest.raises(ExportError, match=f"target {target}: {why}"):
        get_target(target).ensure_available(ExportSettings())
    save_checkpoint(trained_like_model(), tmp_path / "ck")
    with pytest.raises(ExportError, match=f"target {target}"):
        export_bundles(tmp_path / "ck", tmp_path / "out", [target], ExportSettings())
    assert not (tmp_path / "out").exists()



def test_dequantized_outputs_keep_their_signature_names():
    """ai-edge-quantizer renames a float output behind a DEQUANTIZE `<sig>_<name>_output_dequant`."""
    from mobile_runtime.qnn_sim import plain_output_name

    assert plain_output_name("decode", "decode_k_new_0_output_dequant") == "k_new_0"
    assert plain_output_name("prefill", "logits") == "logits"


def test_calibrated_ranges_get_headroom():
    """int16 scales come from min/max widened by RANGE_MARGIN: held-out text ran past the calibrated
    ranges and was clipped (the w8a16 loss on the simulator and the CPU alike)."""
    from pipeline.export.qnn_quant import RANGE_MARGIN, widen_ranges

    calib = {"t": {"min": np.array([-1.5]), "max": np.array([2.0]), "other": 7}}
    wide = widen_ranges(calib, RANGE_MARGIN)
    assert wide["t"]["min"].tolist() == [-1.5 * RANGE_MARGIN] and wide["t"]["max"].tolist() == [2.0 * RANGE_MARGIN]
    assert wide["t"]["other"] == 7 and calib["t"]["max"].tolist() == [2.0]
