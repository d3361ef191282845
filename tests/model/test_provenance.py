"""Provenance: safetensors headers refused exactly where the official loader refuses them; folding and
loading recompute the fingerprint they claim; a tensor of the wrong dtype for its role is refused."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.fold import fold_checkpoint
from pipeline.safetensors_header import SafetensorsFormatError
from pipeline.tensor_io import SafetensorsReader
from tests.model.helpers import random_model


def good_file(path):
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)},
              str(path), metadata={"fingerprint": "f" * 32})
    return path


def split(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header, data, raw_header=None):
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def corruptions(h, data):
    """name -> file bytes; each is a header the safetensors Rust loader refuses."""
    a, b = h["a"]["data_offsets"], h["b"]["data_offsets"]  # a: [0, 24], b: [24, 32]

    def with_(name, **entry):
        return join({**h, name: {**h[name], **entry}}, data)

    return {
        "overlapping offsets": with_("b", data_offsets=[a[1] - 4, b[1] - 4]),
        "gap between tensors": join({**h, "b": {**h["b"], "data_offsets": [a[1] + 2, b[1] + 2]}}, data + b"\0\0"),
        "offsets short of the shape": with_("a", shape=[2, 4]),
        "offsets beyond the shape": with_("a", shape=[2, 2]),
        "data past the end of file": join(h, data[:-2]),
        "trailing bytes": join(h, data + b"\0" * 8),
        "unknown dtype name": with_("a", dtype="F31"),
        "lowercase dtype name": with_("a", dtype="f32"),
        "negative shape": with_("a", shape=[-2, -3]),
        "end before begin": with_("b", data_offsets=[b[1], b[0]]),
        "first tensor not at 0": with_("a", data_offsets=[1, 25]),
        "header length past the end": struct.pack("<Q", 10 ** 6) + b"{}",
        "header length over 100 MB": struct.pack("<Q", 100_000_001) + b"{}" + b" " * 16,
        "header not JSON": join(None, data, b"{not json"),
        "header not UTF-8": join(None, data, b'{"\xff": 1}'),
        "file shorter than 8 bytes": b"\x01\x00",
        "header not an object": join(None, b"", b"[1, 2]"),
    }


def test_good_file_is_read_by_both(tmp_path):
    path = good_file(tmp_path / "g.safetensors")
    with safe_open(str(path), framework="pt") as f:
        official = {k: f.get_tensor(k) for k in f.keys()}
    with SafetensorsReader(path) as r:
        assert r.metadata == {"fingerprint": "f" * 32}
        assert all(torch.equal(r.get(k), v) for k, v in official.items())


CASES = ["overlapping offsets", "gap between tensors", "offsets short of the shape", "offsets beyond the shape",
         "data past the end of file", "trailing bytes", "unknown dtype name", "lowercase dtype name",
         "negative shape", "end before begin", "first tensor not at 0", "header length past the end",
         "header length over 100 MB", "header not JSON", "header not UTF-8", "file shorter than 8 bytes",
         "header not an object"]


@pytest.mark.parametrize("case", CASES)
def test_header_refused_like_the_official_loader(tmp_path, case):
    h, data = split(good_file(tmp_path / "g.safetensors"))
    cases = corruptions(h, data)
    assert sorted(cases) == sorted(CASES)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(cases[case])
    with pytest.raises(Exception):  # the reference: safetensors' own loader refuses it
        with safe_open(str(bad), framework="pt") as f:
            [f.get_tensor(k) for k in f.keys()]
    with pytest.raises(SafetensorsFormatError, match=str(bad)):
        SafetensorsReader(bad)


def test_pickle_where_safetensors_expected(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(SafetensorsFormatError, match="torch.save"):
        SafetensorsReader(tmp_path / "model.safetensors")


@pytest.fixture
def two_checkpoints(tmp_path):
    save_checkpoint(random_model(), tmp_path / "a")
    other = random_model()
    with torch.no_grad():
        other.layers[0].memory.table.weight.add_(1.0)
    save_checkpoint(other, tmp_path / "b")
    return tmp_path / "a", tmp_path / "b"


def test_fold_refuses_weights_that_are_not_the_fingerprinted_ones(tmp_path, two_checkpoints):
    a, b = two_checkpoints
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())  # weights swapped in
    with pytest.raises(CheckpointError, match="claims fingerprint"):
        fold_checkpoint(a, tmp_path / "folded", progress=False)
    assert not (tmp_path / "folded").exists()
    with pytest.raises(CheckpointError, match="claims fingerprint"):
        load_checkpoint(a)


def test_fold_carries_the_recomputed_fingerprint(tmp_path, two_checkpoints):
    a, _ = two_checkpoints
    claimed = json.loads((a / "checkpoint.json").read_text())["fingerprint"]
    info = fold_checkpoint(a, tmp_path / "folded", progress=False)
    assert info.fingerprint == claimed
    with SafetensorsReader(tmp_path / "folded" / "tables.safetensors") as r:
        assert r.metadata["fingerprint"] == claimed


def test_wrong_dtype_for_its_role_is_refused_by_name(tmp_path):
    model = random_model()
    save_checkpoint(model, tmp_path / "ck")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state["layers.0.attn_norm.weight"] = state["layers.0.attn_norm.weight"].to(torch.int8)
    save_file(state, str(tmp_path / "ck" / "model.safetensors"), metadata={"fingerprint": "0" * 32})
    for call in (lambda: load_checkpoint(tmp_path / "ck"), lambda: fold_checkpoint(tmp_path / "ck", tmp_path / "f")):
        with pytest.raises(CheckpointError, match=r"wrong dtypes .*layers\.0\.attn_norm\.weight int8"):
            call()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("fingerprint"), "missing or malformed 'fingerprint'"),
    (lambda d: d.update(fingerprint=7), "missing or malformed 'fingerprint'"),
    (lambda d: d.update(tables="../../etc/passwd"), "'tables' must be a file name"),
])
def test_checkpoint_json_problems_are_named(tmp_path, edit, message):
    save_checkpoint(random_model(), tmp_path / "ck")
    info = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    edit(info)
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "ck")
