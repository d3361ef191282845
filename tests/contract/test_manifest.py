"""manifest.json: written, validated against the schema, verified file by file."""

import json

import numpy as np
import pytest

from contract.manifest import (Backbone, BundleError, Manifest, MethodSpec, PackRef, TensorSpec, TokenizerRef,
                                     load_manifest, verify_bundle, write_manifest)
from pipeline.pack_writer import write_pack

FP = "0123456789abcdef0123456789abcdef"


def make_bundle(root, memory="both"):
    root.mkdir()
    (root / "tokenizer.json").write_text("{}")
    (root / "model.pte").write_bytes(b"\x00" * 100)
    rows = [TensorSpec("meki_rows", [1, 1, 2, 16], "float32")] if memory != "none" else []
    method = MethodSpec([TensorSpec("tokens", [1, 1], "int64"), TensorSpec("input_pos", [1], "int64"), *rows],
                        [TensorSpec("logits", [1, 1, 128], "float32")])
    pack = None
    if memory != "none":
        write_pack(root / "tables.mekipack", np.zeros((128, 2, 16), np.float32), fingerprint=FP)
        pack = PackRef("tables.mekipack", "int8", "token-major", 128, 2, 16, FP)
    m = Manifest(name="t", fingerprint=FP, memory=memory, config={}, tokenizer=TokenizerRef("tokenizer.json", [0]),
                 memory_pack=pack, backbones=[Backbone("executorch-xnnpack", "model.pte", "none", 64, 8, "internal",
                                                       {"prefill": method, "decode": method})])
    return write_manifest(root, m)


def test_round_trip_and_verify(tmp_path):
    m = make_bundle(tmp_path / "b")
    assert {f.path for f in m.files} == {"tokenizer.json", "model.pte", "tables.mekipack"}
    loaded = verify_bundle(tmp_path / "b")
    assert loaded == load_manifest(tmp_path / "b")
    assert loaded.backbone("executorch-xnnpack").takes_meki_rows
    with pytest.raises(BundleError, match="no backbone for target 'coreml'.*executorch-xnnpack"):
        loaded.backbone("coreml")
    dense = make_bundle(tmp_path / "d", memory="none")
    assert not dense.backbones[0].takes_meki_rows and dense.memory_pack is None


def test_tampering_is_named(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.pte").write_bytes(b"\x01" * 100)
    (tmp_path / "b" / "tables.mekipack").unlink()
    with pytest.raises(BundleError) as err:
        verify_bundle(tmp_path / "b")
    assert "model.pte: sha256" in str(err.value) and "tables.mekipack: missing" in str(err.value)


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["files"][0].update(path="../../etc/passwd"), "files/0/path"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(surprise=1), "surprise"),
    (lambda d: d["memory_pack"].update(fingerprint="xyz"), "memory_pack"),
])
def test_schema_refusals(tmp_path, edit, msg):
    make_bundle(tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=msg):
        load_manifest(tmp_path / "b")


def test_backbone_may_be_a_folder(tmp_path):
    """A Core ML .mlpackage is a folder: it counts as listed when its files are, and each is hashed."""
    root = tmp_path / "b"
    make_bundle(root)
    pkg = root / "model.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (root / "model.mlpackage" / "Manifest.json").write_text("{}")
    (pkg / "model.mlmodel").write_bytes(b"spec")
    m = load_manifest(root)
    m.backbones[0].file = "model.mlpackage"
    write_manifest(root, m)
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/model.mlmodel"} <= {f.path for f in m.files}
    verify_bundle(root)
    (pkg / "model.mlmodel").write_bytes(b"SPEC")
    with pytest.raises(BundleError, match="model.mlpackage/Data/model.mlmodel: sha256"):
        verify_bundle(root)
    m.backbones[0].file = "model.mlpack"  # a prefix of the folder's name is not the folder
    (pkg / "model.mlmodel").write_bytes(b"spec")
    write_manifest(root, m)
    with pytest.raises(BundleError, match="model.mlpack: referenced but not listed"):
        verify_bundle(root)


@pytest.mark.parametrize("edit,check", [
    (lambda t: t.replace('"version": 1', '"version": 1.0', 1), "manifest.schema"),   # JSON Schema's integer
    (lambda t: t.replace('"bytes": 100', '"bytes": 100.0', 1), "manifest.schema"),   # admits these: we do not
    (lambda t: t.replace('"config": {', '"config": {"x": 1e999, ', 1), "manifest.json"),   # past a double
    (lambda t: t.replace('"config": {', '"config": {"x": -Infinity, ', 1), "manifest.json"),
])
def test_numbers_as_the_other_readers_read_them(tmp_path, edit, check):
    """What the C++ and Java readers refuse, Python refuses too (the conformance corpus holds the cases the
    Swift reader, not built here, is known to share)."""
    make_bundle(tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    text = edit(json.dumps(json.loads(path.read_text())))
    assert text != json.dumps(json.loads(path.read_text()))
    path.write_text(text)
    with pytest.raises(BundleError) as err:
        load_manifest(tmp_path / "b")
    assert err.value.check == check
