"""Every verb, walked through bad inputs: each ends with one `meki VERB: error: ...` line, the
documented exit code (meki/errors.py, README), no traceback, no hang (FIFOs) and nothing half-written.

The cases run through tests/support/cli_walk.py: one `python` process that imports once and forks a
child per command line, so ~90 command lines cost seconds, not minutes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from contract.manifest import load_manifest, write_manifest
from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from pipeline.bundle_apps import bundle_ios
from pipeline.fold import fold_checkpoint
from tests.model.helpers import random_model

ROOT = Path(__file__).resolve().parents[2]
INPUT, OUTPUT, IO = 2, 3, 4


def _variant(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    edit(dst)
    return dst


def _json_edit(name, fn):
    def edit(folder):
        data = json.loads((folder / name).read_text())
        fn(data)
        (folder / name).write_text(json.dumps(data))
    return edit


def _replace(name, writer):
    def edit(folder):
        (folder / name).unlink()
        writer(folder / name)
    return edit


def _int8_norm(path):
    state = {k: v.detach().contiguous() for k, v in random_model().state_dict().items()}
    state["norm.weight"] = state["norm.weight"].to(torch.int8)
    save_file(state, str(path))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Paths the cases refer to: good inputs and bad ones of every kind."""
    t = tmp_path_factory.mktemp("walk")
    p = {"t": t, "new": t / "new"}
    save_checkpoint(random_model(), t / "ck")
    other = random_model()
    with torch.no_grad():
        other.norm.weight.add_(1)
    save_checkpoint(other, t / "other")
    ck = t / "ck"
    p["ck"] = ck
    p["nofp"] = _variant(ck, t / "nofp", _json_edit("checkpoint.json", lambda d: d.pop("fingerprint")))
    p["cfgtype"] = _variant(ck, t / "cfgtype", _json_edit("config.json", lambda d: d.update(dim="64")))
    p["pickle"] = _variant(ck, t / "pickle", _replace("model.safetensors", lambda f: torch.save({"a": torch.zeros(1)}, f)))
    p["fifock"] = _variant(ck, t / "fifock", _replace("model.safetensors", os.mkfifo))
    p["swapped"] = _variant(ck, t / "swapped", _replace("model.safetensors",
                                                        lambda f: f.write_bytes((t / "other/model.safetensors").read_bytes())))
    p["int8"] = _variant(ck, t / "int8", _replace("model.safetensors", _int8_norm))
    fold_checkpoint(ck, t / "folded", progress=False)
    p["tables"] = t / "folded" / "tables.safetensors"
    p["fifo"] = t / "fifo"
    os.mkfifo(p["fifo"])
    p["dir"] = t / "adir"
    p["dir"].mkdir()
    p["file"] = t / "afile"
    p["file"].write_text("not what you think\n")
    p["pt"] = t / "model.pt"
    torch.save({"a": torch.zeros(2)}, p["pt"])
    p["evil"] = t / "evil.pt"
    torch.save({"model": {}, "args": _Evil()}, p["evil"])
    p["fifobundle"] = t / "fifobundle"
    p["fifobundle"].mkdir()
    os.mkfifo(p["fifobundle"] / "manifest.json")
    hf = t / "hf_badtype"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 128, "num_hidden_layers": 2,
                                                "hidden_size": 64, "intermediate_size": 128,
                                                "num_attention_heads": "4", "num_key_value_heads": 2}))
    p["hf_badtype"] = hf
    (t / "hf_nokey").mkdir()
    (t / "hf_nokey" / "config.json").write_text('{"model_type": "qwen3"}')
    p["hf_nokey"] = t / "hf_nokey"
    (t / "badmeta").mkdir()
    (t / "badmeta" / "meta.json").write_text('{"format": 3}')
    p["badmeta"] = t / "badmeta"
    (t / "tc_type.json").write_text('{"lr": "fast"}')
    p["tc_type"] = t / "tc_type.json"
    save_checkpoint(random_model(vocab_size=101, memory="none"), t / "dense101")
    p["dense101"] = t / "dense101"
    p["dangling"] = t / "dangling"
    p["dangling"].symlink_to(t / "nowhere")
    p["anybundle"] = t / "anybundle"  # argument errors are found before the bundle is read
    p["anybundle"].mkdir()
    (p["anybundle"] / "manifest.json").write_text("{}")
    return p


@pytest.fixture(scope="module")
def wb(w):
    """`w` plus a real exported bundle, for the cases that get as far as reading it (slow: export)."""
    t = w["t"]
    export_bundles(w["ck"], t / "out", ["executorch-xnnpack"], ExportSettings(max_seq_len=32, prefill_len=4))
    bundle_ios(t / "out" / "meki", t / "ios_done")
    damaged = {}
    for name, damage in (("garbage_pte", lambda b: bytes(range(256)) * 64), ("truncated_pte", lambda b: b[:1000])):
        bundle = shutil.copytree(t / "out" / "meki", t / name)  # the manifest re-hashed: only the bytes are bad
        pte = next(bundle.glob("*.pte"))
        pte.write_bytes(damage(pte.read_bytes()))
        write_manifest(bundle, load_manifest(bundle))
        damaged[name] = bundle
    return {**w, "bundle": t / "out" / "meki", "ios_done": t / "ios_done", **damaged}


# id: (argv template, exit code, text the last line must contain, fault)
CASES = {
    "init bad preset": ("init {new} --preset nope", INPUT, "unknown preset 'nope'", None),
    "init bad memory": ("init {new} --preset fake --memory bogus", INPUT, "memory='bogus'", None),
    "init negative seed": ("init {new} --seed -1", INPUT, "must be 0 or more", None),
    "init output exists": ("init {ck} --preset fake", OUTPUT, "already exists; pass --overwrite", None),
    "init parent is a file": ("init {file}/sub --preset fake", INPUT, "is not a directory", None),
    "import hf missing": ("import hf {t}/nope {new}", INPUT, "no such Hugging Face model folder", None),
    "import hf is a file": ("import hf {file} {new}", INPUT, "expected a Hugging Face model folder", None),
    "import hf wrong type": ("import hf {hf_badtype} {new}", INPUT, "num_attention_heads='4'", None),
    "import hf missing key": ("import hf {hf_nokey} {new}", INPUT, "lacks 'num_attention_heads'", None),
    "import megatron no vocab": ("import megatron {dir} {new}", INPUT, "--vocab-size", None),
    "import megatron fifo": ("import megatron {fifo} {new} --vocab-size 10", INPUT, "is a FIFO", None),
    "import megatron evil pickle": ("import megatron {evil} {new} --vocab-size 10", INPUT, "refusing to unpickle", None),
    "import megatron not torch": ("import megatron {file} {new} --vocab-size 10", INPUT, "not a readable torch.save", None),
    "import megatron empty dir": ("import megatron {dir} {new} --vocab-size 10", INPUT, "no mp_rank_00", None),
    "import mekify zero": ("import hf {dir} {new} --mekify 0", INPUT, "must be a positive integer", None),
    "fold missing": ("fold {t}/nope {new}", INPUT, "not a checkpoint folder", None),
    "fold file": ("fold {file} {new}", INPUT, "not a checkpoint folder", None),
    "fold no fingerprint": ("fold {nofp} {new}", INPUT, "missing or malformed 'fingerprint'", None),
    "fold config wrong type": ("fold {cfgtype} {new}", INPUT, "dim='64' (expected int)", None),
    "fold pickle weights": ("fold {pickle} {new}", INPUT, "torch.save", None),
    "fold fifo weights": ("fold {fifock} {new}", INPUT, "is a FIFO", None),
    "fold swapped weights": ("fold {swapped} {new}", INPUT, "claims fingerprint", None),
    "fold int8 norm": ("fold {int8} {new}", INPUT, "wrong dtypes", None),
    "fold chunk 0": ("fold {ck} {new} --chunk-size 0", INPUT, "must be a positive integer", None),
    "fold chunk negative": ("fold {ck} {new} --chunk-size -5", INPUT, "must be a positive integer", None),
    "fold chunk text": ("fold {ck} {new} --chunk-size lots", INPUT, "is not an integer", None),
    "fold unknown cuda": ("fold {ck} {new} --device cuda:7", INPUT, "cuda:7", None),
    "fold garbage device": ("fold {ck} {new} --device banana", INPUT, "unknown device 'banana'", None),
    "fold pack dtype": ("fold {ck} {new} --pack int3", INPUT, "unknown pack dtype 'int3'", None),
    "fold output exists": ("fold {ck} {ck}", OUTPUT, "already exists", None),
    "fold full disk": ("fold {ck} {new}", IO, "No space left on device (ENOSPC)", "enospc"),
    "pack missing": ("pack {t}/nope.safetensors {new}.mekipack", INPUT, "no such tables.safetensors", None),
    "pack dir": ("pack {dir} {new}.mekipack", INPUT, "is a directory", None),
    "pack fifo": ("pack {fifo} {new}.mekipack", INPUT, "is a FIFO", None),
    "pack pickle": ("pack {pt} {new}.mekipack", INPUT, "torch.save", None),
    "pack dtype": ("pack {tables} {new}.mekipack --dtype int3", INPUT, "int3", None),
    "pack group 0": ("pack {tables} {new}.mekipack --group-size 0", INPUT, "must be a positive integer", None),
    "pack output exists": ("pack {tables} {file}", OUTPUT, "exists", None),
    "pack full disk": ("pack {tables} {new}.mekipack", IO, "ENOSPC", "enospc"),
    "verify-pack dir": ("verify-pack {dir}", INPUT, "is a directory", None),
    "verify-pack fifo": ("verify-pack {fifo}", INPUT, "is a FIFO", None),
    "verify-pack garbage": ("verify-pack {file}", 1, "too small for a 128-byte pack header", None),
    "verify-pack bad fingerprint": ("verify-pack {file} --fingerprint xyz", INPUT, "is not a model fingerprint", None),
    "verify-pack missing": ("verify-pack {t}/nope.mekipack", INPUT, "no such memory pack", None),
    "export missing": ("export {t}/nope --target executorch-xnnpack --out {new}", INPUT, "not a checkpoint folder", None),
    "export bad target": ("export {ck} --target bogus --out {new}", INPUT, "bogus", None),
    "export max-seq-len 0": ("export {ck} --target executorch-xnnpack --out {new} --max-seq-len 0", INPUT,
                             "must be a positive integer", None),
    "export tokenizer dir": ("export {ck} --target executorch-xnnpack --out {new} --tokenizer {dir}", INPUT,
                             "is a directory", None),
    "export output exists": ("export {ck} --target executorch-xnnpack --out {dir}", OUTPUT, "already exists", None),
    "export output dangling link": ("export {ck} --target executorch-xnnpack --out {dangling}", OUTPUT,
                                    "already exists", None),
    "export baseline other vocabulary": ("export {ck} --target executorch-xnnpack --out {new} --baseline {dense101}",
                                         INPUT, "a MeKi/dense pair must share its tokenizer", None),
    "export prefill 1": ("export {ck} --target executorch-xnnpack --out {new} --prefill-len 1", INPUT,
                         "prefill_len must be at least 2", None),
    "export prefill past cache": ("export {ck} --target executorch-xnnpack --out {new} --max-seq-len 40 "
                                  "--prefill-len 64", INPUT, "larger than the KV cache", None),
    "export pickle weights": ("export {pickle} --target executorch-xnnpack --out {new}", INPUT, "torch.save", None),
    "export decode program elsewhere": ("export {ck} --target coreml --out {new} --decode-program own", INPUT,
                                        "--decode-program applies to targets with prefill and decode methods", None),
    "export decode program bogus": ("export {ck} --target executorch-xnnpack --out {new} --decode-program both",
                                    INPUT, "invalid choice: 'both'", None),
    "targets extra argument": ("targets extra", INPUT, "unrecognized arguments", None),
    "verify missing": ("verify {t}/nope --checkpoint {ck}", INPUT, "no such bundle folder", None),
    "verify file": ("verify {file} --checkpoint {ck}", INPUT, "expected a bundle folder", None),
    "verify fifo manifest": ("verify {fifobundle} --checkpoint {ck}", INPUT, "is a FIFO", None),
    "verify steps 0": ("verify {anybundle} --checkpoint {ck} --steps 0", INPUT, "must be a positive integer", None),
    "verify no checkpoint": ("verify {anybundle}", INPUT, "--checkpoint", None),
    "run missing": ("run {t}/nope --prompt hi", INPUT, "no such bundle folder", None),
    "run fifo manifest": ("run {fifobundle} --prompt hi", INPUT, "is a FIFO", None),
    "run non-utf8 prompt": ("run {anybundle} --prompt \udcff\udcfe", INPUT, "not valid UTF-8", None),
    "run empty prompt": ("run {anybundle} --prompt=", INPUT, "--prompt is empty", None),
    "run ids out of range": ("run {bundle} --prompt-ids 1,99999", INPUT, "outside the vocabulary [0, 128)", None),
    "run ids negative": ("run {bundle} --prompt-ids=-1", INPUT, "outside the vocabulary", None),
    "run ids text": ("run {bundle} --prompt-ids 1,x", INPUT, "comma-separated integers", None),
    "run ids empty item": ("run {bundle} --prompt-ids 1,,2", INPUT, "comma-separated integers", None),
    "run program not executorch": ("run {garbage_pte} --prompt-ids 1", INPUT, "not an ExecuTorch program", None),
    "run program truncated": ("run {truncated_pte} --prompt-ids 1", INPUT, "ExecuTorch cannot load this program",
                              None),
    "run prompt too long": ("run {bundle} --prompt-ids 1 --max-new-tokens 1000", INPUT, "exceeds the bundle's KV cache", None),
    "run bad backend": ("run {bundle} --prompt-ids 1 --backend bogus", INPUT, "bogus", None),
    "run stats is a dir": ("run {anybundle} --prompt-ids 1 --stats {dir}", INPUT, "is a directory", None),
    "run stats is a fifo": ("run {anybundle} --prompt-ids 1 --stats {fifo}", INPUT, "is a FIFO", None),
    "run seed negative": ("run {anybundle} --prompt-ids 1 --seed -1", INPUT, "--seed", None),
    "run max-new-tokens 0": ("run {anybundle} --prompt-ids 1 --max-new-tokens 0", INPUT, "must be a positive integer", None),
    "run top-p 2": ("run {anybundle} --prompt-ids 1 --top-p 2", INPUT, "must be in (0, 1]", None),
    "run temperature nan": ("run {anybundle} --prompt-ids 1 --temperature nan", INPUT, "not a finite number", None),
    "bench missing": ("bench {t}/nope --device local --out {new}", INPUT, "no such bundle or export folder", None),
    "bench reps 0": ("bench {anybundle} --reps 0", INPUT, "must be a positive integer", None),
    "bench timeout negative": ("bench {anybundle} --timeout -1", INPUT, "must be positive", None),
    "bundle missing": ("bundle {t}/nope --ios {new}", INPUT, "no such bundle folder", None),
    "bundle fifo manifest": ("bundle {fifobundle} --ios {new}", INPUT, "is a FIFO", None),
    "bundle android is a file": ("bundle {bundle} --android {file}", INPUT, "not the android_app Gradle project", None),
    "bundle ios exists": ("bundle {bundle} --ios {ios_done}", OUTPUT, "exists", None),
    "data vocab 0": ("data {new} --vocab-size 0", INPUT, "must be a positive integer", None),
    "data val fraction": ("data {new} --val-fraction 1.5", INPUT, "between 0 and 1", None),
    "data parent is a file": ("data {file}/sub --source {dir}", INPUT, "is not a directory", None),
    "data source missing": ("data {new} --source {t}/nope", INPUT, "no .html/.pod files under", None),
    "data source is a file": ("data {new} --source {file}", INPUT, "no .html/.pod files under", None),
    "train data missing": ("train {new} --data {t}/nope", INPUT, "nope", None),
    "train config dir": ("train {new} --data {dir} --train-config {dir}", INPUT, "is a directory", None),
    "train config wrong type": ("train {new} --data {dir} --train-config {tc_type}", INPUT, "lr='fast' (expected float)", None),
    "train set without =": ("train {new} --data {dir} --set lr", INPUT, "expected KEY=VALUE", None),
    "train set unknown key": ("train {new} --data {dir} --set speed=11", INPUT, "unknown train config key(s): speed", None),
    "train set negative": ("train {new} --data {dir} --set max_steps=-1", INPUT, "max_steps=-1 must be positive", None),
    "train set bad device": ("train {new} --data {dir} --set device=cuda:9", INPUT, "cuda:9", None),
    "train model config fifo": ("train {new} --data {dir} --model-config {fifo}", INPUT, "is a FIFO", None),
    "train bad preset": ("train {new} --data {dir} --preset nope", INPUT, "unknown preset 'nope'", None),
    "train data has no meta": ("train {new} --data {dir}", INPUT, "no such meta.json", None),
    "train meta incomplete": ("train {new} --data {badmeta}", INPUT, "missing keys", None),
    "train meta not JSON": ("train {new} --data {file}", INPUT, "not valid JSON", None),
    "train d-mem 0": ("train {new} --data {dir} --d-mem 0", INPUT, "must be a positive integer", None),
    "demo new-tokens 0": ("demo --new-tokens 0", INPUT, "must be a positive integer", None),
    "demo output exists": ("demo --out {dir}", OUTPUT, "already exists", None),
}


NEEDS_BUNDLE = [c for c, (argv, *_) in CASES.items() if any(f"{{{k}}}" in argv for k in ("bundle", "garbage_pte",
                                                                                        "truncated_pte"))]


def walk(paths: dict, names: list[str], work: Path) -> dict:
    cases = [{"argv": CASES[c][0].format(**{k: str(v) for k, v in paths.items()}).split(" "), "fault": CASES[c][3]}
             for c in names]
    (work / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "tests.support.cli_walk", str(work / "cases.json"), str(work / "results.json"),
                    "120"], check=True, env=env, cwd=ROOT, timeout=1800)
    return dict(zip(names, json.loads((work / "results.json").read_text())))


@pytest.fixture(scope="module")
def walked(w, tmp_path_factory):
    return walk(w, [c for c in CASES if c not in NEEDS_BUNDLE], tmp_path_factory.mktemp("walk-run"))


@pytest.fixture(scope="module")
def walked_bundle(wb, tmp_path_factory):
    return walk(wb, NEEDS_BUNDLE, tmp_path_factory.mktemp("walk-bundle"))


def check(r: dict, case: str, w: dict) -> None:
    _, code, text, _ = CASES[case]
    verb = r["argv"][0]
    assert not r["hung"], f"{case}: hung ({r['argv']})"
    assert "Traceback" not in r["output"], r["output"]
    last = [ln for ln in r["output"].splitlines() if ln.strip()][-1]
    # argparse reports an unknown extra argument at the top level (`meki: error:`)
    assert last.startswith((f"meki {verb}: error: ", "meki: error: ")), r["output"]
    assert text in last, r["output"]
    assert r["code"] == code, r["output"]
    assert not w["new"].exists() and not list(w["t"].glob(".*partial*")) and not list(w["t"].glob(".*lock"))


@pytest.mark.parametrize("case", [c for c in CASES if c not in NEEDS_BUNDLE])
def test_bad_input_ends_in_one_line(walked, w, case):
    check(walked[case], case, w)


@pytest.mark.slow
@pytest.mark.parametrize("case", NEEDS_BUNDLE)
def test_bad_input_to_a_real_bundle_ends_in_one_line(walked_bundle, wb, case):
    check(walked_bundle[case], case, wb)


def test_real_entry_point(w):
    """The same through `python -m meki.cli` itself: non-UTF-8 argv bytes and a FIFO that must not hang."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv, text in (([b"run", str(w["anybundle"]).encode(), b"--prompt", b"\xff\xfe"], "not valid UTF-8"),
                       ([b"fold", str(w["fifock"]).encode(), str(w["new"]).encode()], "is a FIFO")):
        r = subprocess.run([sys.executable.encode(), b"-m", b"meki.cli", *argv], env=env, cwd=ROOT,
                           capture_output=True, timeout=300)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == INPUT and "Traceback" not in err and text in err.strip().splitlines()[-1], err
