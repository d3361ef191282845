"""Write a tiny bundle for the Java tests: the golden int8 pack, a stand-in program, a manifest.

The manifest is written by contract.manifest.write_manifest, so the Java reader is tested
against what the Python side really writes.  Usage:  python make_test_bundle.py OUT_DIR
"""
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from contract.manifest import (Backbone, Manifest, MethodSpec, PackRef, TensorSpec,  # noqa: E402
                                     TokenizerRef, write_manifest)

GOLDEN = ROOT / "conformance/golden"
FP = "0123456789abcdef00112233445566ff"   # the golden packs' fingerprint
V, L, M, PREFILL = 100, 3, 16, 4


def method(seq: int, entry: str) -> MethodSpec:
    inputs = [TensorSpec("tokens", [1, seq], "int64"), TensorSpec("input_pos", [seq], "int64"),
              TensorSpec("meki_rows", [1, seq, L, M], "float32")]
    return MethodSpec(inputs, [TensorSpec("logits", [1, V], "float32")], entry)


def make(out: Path) -> Path:
    out.mkdir(parents=True)
    shutil.copyfile(GOLDEN / "golden_int8_token.mekipack", out / "tables.mekipack")
    (out / "model.pte").write_bytes(b"stand-in program")
    (out / "tokenizer.json").write_text("{}")
    bb = Backbone("executorch-xnnpack", "model.pte", "none", 16, PREFILL, "internal",
                  {"prefill": method(PREFILL, "prefill"), "decode": method(1, "decode")})
    m = Manifest(name="golden-test", fingerprint=FP, memory="both", config={"vocab_size": V},
                 tokenizer=TokenizerRef("tokenizer.json", [99]),
                 memory_pack=PackRef("tables.mekipack", "int8", "token-major", V, L, M, FP),
                 backbones=[bb], export={"tool": "make_test_bundle"})
    write_manifest(out, m)
    return out


if __name__ == "__main__":
    print(make(Path(sys.argv[1])))
