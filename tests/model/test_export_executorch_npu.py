"""ExecuTorch NPU/GPU partitioner targets on the fake preset: Core ML and Vulkan lower here and are
spec-checked (no runtime for their delegates on Linux); QNN and MediaTek name the missing SDK."""

import json

import pytest

from contract.manifest import Manifest
from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.executorch_npu import qnn_sdk_missing
from pipeline.export.registry import ExportError, ExportSettings, get_target
from pipeline.export.spec_checks import check_pte, check_spec
from pipeline.export.verify import verify_bundle_artifacts
from pipeline.fold import fold_model
from tests.model.helpers import trained_like_model

pytestmark = pytest.mark.slow
SETTINGS = ExportSettings(max_seq_len=64, prefill_len=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("npu")
    save_checkpoint(trained_like_model(), root / "ck")
    return root / "ck"


@pytest.fixture(scope="module")
def coreml_bundles(checkpoint):
    out = checkpoint.parent / "out"
    export_bundles(checkpoint, out, ["executorch-coreml"], SETTINGS, pack_dtype="fp16")
    return out


def test_coreml_delegate_lowers_everything_into_one_method(coreml_bundles):
    for kind, inputs in (("meki", ["tokens", "input_pos", "meki_rows"]), ("dense", ["tokens", "input_pos"])):
        rows = verify_bundle_artifacts(coreml_bundles / kind, coreml_bundles.parent / "ck", steps=1)
        assert [(r.target, r.status) for r in rows] == [("executorch-coreml", "spec-ok")], rows
        backbone = json.loads((coreml_bundles / kind / "manifest.json").read_text())["backbones"][0]
        # the delegate owns the KV cache as Core ML state: both steps share it only through one method
        assert {m["entry"] for m in backbone["methods"].values()} == {"forward"}
        assert [t["name"] for t in backbone["methods"]["decode"]["inputs"]] == inputs
        assert backbone["delegated"] == {"forward.delegate_calls": 1, "forward.portable_ops": 0}


def test_vulkan_lowers_with_cache_write_on_cpu(tmp_path):
    folded, _ = fold_model(trained_like_model())
    backbone = get_target("executorch-vulkan").export(folded.eval(), tmp_path, SETTINGS)
    manifest = Manifest(name="t", fingerprint="0" * 32, memory="both", config=folded.cfg.to_dict(), tokenizer=None,
                        memory_pack=None, backbones=[backbone])
    assert check_spec(tmp_path, manifest, backbone) == []
    assert backbone.delegated["decode.delegate_calls"] > 0 and backbone.delegated["prefill.delegate_calls"] > 0
    assert backbone.takes_meki_rows
    problems = check_pte(tmp_path / backbone.file, backbone, "QnnBackend")
    assert problems and "no QnnBackend delegate in 'prefill'" in problems[0]


QNN_MISSING = ("target executorch-qnn: needs the Qualcomm QNN SDK (QAIRT 2.37.0.250724, Qualcomm Software Center): "
               "QNN_SDK_ROOT is not set; LD_LIBRARY_PATH does not contain $QNN_SDK_ROOT/lib/x86_64-linux-clang; "
               "LLVM 14 libc++ not on LD_LIBRARY_PATH (libc++.so.1.0, libc++abi.so.1.0, libunwind.so.1). "
               "Set QNN_SDK_ROOT=<sdk> and LD_LIBRARY_PATH=$QNN_SDK_ROOT/lib/x86_64-linux-clang:"
               "<dir with LLVM 14 libc++>:$LD_LIBRARY_PATH. Offline, no PyPI wheel carries QAIRT 2.37: onnxruntime-qnn "
               "2.3.0-2.7.0 carry 2.47-2.51, and with those libraries ExecuTorch 1.5.1's lowering fails in "
               "libQnnHtp.so (`Failed to set scatter gather parameters: unknown custom config socModel 0`, device "
               "creation error 14001); target tflite-qnn compiles for the HTP offline instead")
MEDIATEK_MISSING = ("target executorch-mediatek: needs MediaTek's NeuroPilot Express SDK Python wheels, not on PyPI: "
                    "mtk_converter, mtk_neuron not importable (install the mtk_converter and mtk_neuron wheels for "
                    "cp311 from MediaTek's NeuroPilot portal)")


@pytest.mark.parametrize("target,message", [("executorch-qnn", QNN_MISSING),
                                            ("executorch-mediatek", MEDIATEK_MISSING)])
def test_vendor_sdk_targets_name_what_is_missing_before_work(checkpoint, tmp_path, monkeypatch, target, message):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    with pytest.raises(ExportError) as err:
        export_bundles(checkpoint, tmp_path / "out", [target], SETTINGS)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()  # refused before any work


def test_qnn_check_accepts_a_complete_sdk_layout(tmp_path, monkeypatch):
    lib = tmp_path / "qnn" / "lib" / "x86_64-linux-clang"
    libcxx = tmp_path / "llvm14"
    libs = [libcxx / name for name in ("libc++.so.1.0", "libc++abi.so.1.0", "libunwind.so.1")]
    for path in (lib / "libQnnHtp.so", *libs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    monkeypatch.setenv("QNN_SDK_ROOT", str(tmp_path / "qnn"))
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{lib}:{libcxx}")
    assert qnn_sdk_missing() is None
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libcxx))
    missing = qnn_sdk_missing()
    assert "LD_LIBRARY_PATH does not contain $QNN_SDK_ROOT/lib/x86_64-linux-clang" in missing
    assert "QNN_SDK_ROOT is not set" not in missing and "libc++" not in missing.split(". Set")[0]
