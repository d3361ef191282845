"""Regenerate the conformance corpus (packs/, bundles/, stats/, index.json) from conformance/golden.

Run from the repository root:  .venv/bin/python conformance/make_conformance.py
Deterministic: no RNG, no clock; every file derives from the golden packs and fixed bytes, so a rerun
gives byte-identical output (tests/test_conformance.py checks this). Symlink cases are stored as git
symlinks. numpy-free on purpose: stdlib + xxhash only, so the corpus has no tie to the reader it tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import re
import struct
from pathlib import Path

import xxhash

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
FP = "0123456789abcdef00112233445566ff"      # the golden packs' fingerprint
OTHER_FP = "ffeeddccbbaa99887766554433221100"
MAX_MANIFEST_BYTES = 1 << 20                 # CHECKS.md: manifest.too_large
MAX_JSON_DEPTH = 64                          # CHECKS.md: manifest.too_deep


def closed_checks() -> list[str]:
    """The check names of CHECKS.md's tables (first column, in backticks), in order."""
    text = (HERE / "CHECKS.md").read_text()
    return re.findall(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \|", text, flags=re.M)


# ------------------------------------------------------------------ packs


def xxh(b: bytes) -> int:
    return xxhash.xxh3_64_intdigest(b)


def golden_bytes(name: str = "golden_int8_token.mekipack") -> bytearray:
    return bytearray((GOLDEN / name).read_bytes())


def put(buf: bytearray, off: int, fmt: str, value, rehash: bool = True) -> bytearray:
    """Write a little-endian field at off; recompute the header checksum unless told not to."""
    struct.pack_into("<" + fmt, buf, off, value)
    if rehash and off < 120:
        struct.pack_into("<Q", buf, 120, xxh(bytes(buf[:120])))
    return buf


def header(v: int, n_layers: int, m: int, dcode: int, lcode: int, group: int, stride: int, data_size: int,
           block: int, n_blocks: int, table_off: int, file_size: int, table_sum: int) -> bytearray:
    """A 128-byte header with exactly these fields (self-consistent or not) and a valid checksum."""
    body = struct.pack("<8sIIIII BBH II QQ II QQ 16s Q 16s", b"MEKIPACK", 1, 128, v, n_layers, m, dcode, lcode, 0,
                       group, stride, 16384, data_size, block, n_blocks, table_off, file_size,
                       bytes.fromhex(FP), table_sum, bytes(16))
    return bytearray(body + struct.pack("<Q", xxh(body)))


def overflow_packs() -> dict[str, tuple[bytes, str, str]]:
    """Headers whose fields agree with each other only when products wrap in 32 or 64 bits."""
    out = {}
    # V*L*row_bytes = 2^30 * 2^30 * 16 = 2^64: wraps to 0, so data_size = 0 and the file is just header+padding
    h = header(1 << 30, 1 << 30, 8, 1, 1, 0, 16, 0, 4096, 0, 16384, 16384, xxh(b""))
    out["overflow_total_wraps_u64"] = (bytes(h) + bytes(16384 - 128), "pack.header_fields",
                                       "V*L*row_bytes = 2^64 wraps to 0 in 64 bits; the header stores the wrapped sizes")
    # int4, g=2, m=2^31-8: row_bytes = 4*(m/2) + m/2 = 5368709100 does not fit u32 (wraps to 1073741804)
    m = (1 << 31) - 8
    rb32 = (4 * (m // 2) + m // 2) & 0xFFFFFFFF
    ds = (rb32 + 4095) // 4096 * 4096
    h = header(1, 1, m, 4, 1, 2, rb32, ds, 4096, ds // 4096, 16384 + ds, 16384 + ds + 8 * (ds // 4096), 0)
    out["overflow_row_bytes_wraps_u32"] = (bytes(h) + bytes(16384 - 128), "pack.header_fields",
                                           "int4 row_bytes 5368709100 > 2^32; stride holds its 32-bit wrap")
    # token-major stride L*row_bytes = 2^28 * 16 = 2^32 wraps to 0 in 32 bits
    ds = (1 << 32)
    h = header(1, 1 << 28, 8, 1, 0, 0, 0, ds, 1 << 24, ds >> 24, 16384 + ds, 16384 + ds + 8 * (ds >> 24), 0)
    out["overflow_stride_wraps_u32"] = (bytes(h) + bytes(16384 - 128), "pack.header_fields",
                                        "record_stride = L*row_bytes = 2^32 stored as its 32-bit wrap 0")
    # consistent 2^62-byte data section: passes every formula, refused as larger than the file
    V, L, m = (1 << 30), (1 << 28), 8      # 2^30 * 2^28 * 16 = 2^62 bytes (the limit)
    ds = V * L * 16
    nb = ds // (1 << 24)
    h = header(V, L, m, 1, 1, 0, 16, ds, 1 << 24, nb & 0xFFFFFFFF, 16384 + ds, 16384 + ds + 8 * nb, 0)
    out["overflow_num_blocks_exceeds_u32"] = (bytes(h) + bytes(16384 - 128), "pack.header_fields",
                                              "2^62-byte data in 16 MiB blocks = 2^38 blocks: num_blocks cannot hold it")
    # a consistent 4 GiB layer-major pack stored as a 16 KiB file: only the size check stops it
    V, L, m = 1 << 20, 1 << 7, 16          # 2^20 * 2^7 * 32 = 2^32 bytes
    ds = V * L * 32
    nb = ds // (1 << 24)
    h = header(V, L, m, 1, 1, 0, 32, ds, 1 << 24, nb, 16384 + ds, 16384 + ds + 8 * nb, 0)
    out["huge_consistent_truncated"] = (bytes(h) + bytes(16384 - 128), "pack.file_size",
                                        "a valid 4 GiB header on a 16 KiB file")
    return out


def pack_cases() -> list[tuple[str, bytes, str, str]]:
    """(name, bytes, check, note): every corruption the spec's checks 1-10 name, one defect each."""
    g = golden_bytes
    table_off = struct.unpack_from("<Q", g(), 64)[0]
    cases = [
        ("empty", b"", "pack.too_short", "0 bytes"),
        ("too_short_127", bytes(g()[:127]), "pack.too_short", "127 bytes of a valid pack"),
        ("bad_magic", bytes(put(g(), 0, "8s", b"MEKIPACX")), "pack.magic", "magic MEKIPACX"),
        ("zip_file", b"PK\x03\x04" + bytes(200), "pack.magic", "a zip local header"),
        ("version_2", bytes(put(g(), 8, "I", 2)), "pack.version", "version 2 (rehashed)"),
        ("version_2_stale_checksum", bytes(put(g(), 8, "I", 2, rehash=False)), "pack.version",
         "version is checked before the header checksum"),
        ("header_checksum", bytes(put(g(), 80, "B", 0xAA, rehash=False)), "pack.header_checksum",
         "one fingerprint byte changed, checksum not updated"),
        ("dtype_code_9", bytes(put(g(), 28, "B", 9)), "pack.header_fields", "unknown dtype code"),
        ("layout_code_2", bytes(put(g(), 29, "B", 2)), "pack.header_fields", "unknown layout code"),
        ("reserved16_set", bytes(put(g(), 30, "H", 1)), "pack.header_fields", "reserved u16 non-zero"),
        ("reserved_tail_set", bytes(put(g(), 110, "B", 1)), "pack.header_fields", "reserved bytes 104..120 non-zero"),
        ("header_size_64", bytes(put(g(), 12, "I", 64)), "pack.header_fields", "header_size 64"),
        ("vocab_zero", bytes(put(g(), 16, "I", 0)), "pack.header_fields", "V = 0"),
        ("vocab_2_31", bytes(put(g(), 16, "I", 1 << 31)), "pack.header_fields", "V = 2^31"),
        ("layers_zero", bytes(put(g(), 20, "I", 0)), "pack.header_fields", "L = 0"),
        ("layers_u32_max", bytes(put(g(), 20, "I", 0xFFFFFFFF)), "pack.header_fields", "L = 2^32-1"),
        ("d_mem_12", bytes(put(g(), 24, "I", 12)), "pack.header_fields", "d_mem not a multiple of 8"),
        ("d_mem_zero", bytes(put(g(), 24, "I", 0)), "pack.header_fields", "d_mem = 0"),
        ("int8_group_size_8", bytes(put(g(), 32, "I", 8)), "pack.header_fields", "int8 group_size != d_mem"),
        ("int4_group_odd", bytes(put(g("golden_int4_token.mekipack"), 32, "I", 3)), "pack.header_fields",
         "int4 group 3"),
        ("int4_group_zero", bytes(put(g("golden_int4_token.mekipack"), 32, "I", 0)), "pack.header_fields",
         "int4 group 0 (division by zero in a careless reader)"),
        ("record_stride_off", bytes(put(g(), 36, "I", 59)), "pack.header_fields", "record_stride off by one"),
        ("data_offset_8192", bytes(put(g(), 40, "Q", 8192)), "pack.header_fields", "data_offset 8 KiB"),
        ("data_size_off", bytes(put(g(), 48, "Q", 4096)), "pack.header_fields", "data_size one block short"),
        ("block_size_5000", bytes(put(g(), 56, "I", 5000)), "pack.header_fields", "block_size not a power of two"),
        ("block_size_2048", bytes(put(g(), 56, "I", 2048)), "pack.header_fields", "block_size below 4 KiB"),
        ("block_size_zero", bytes(put(g(), 56, "I", 0)), "pack.header_fields", "block_size 0 (division by zero)"),
        ("num_blocks_off", bytes(put(g(), 60, "I", 3)), "pack.header_fields", "num_blocks off by one"),
        ("table_offset_off", bytes(put(g(), 64, "Q", table_off + 8)), "pack.header_fields", "table_offset off"),
        ("file_size_off", bytes(put(g(), 72, "Q", 1 << 40)), "pack.header_fields", "file_size 1 TiB"),
        ("truncated_by_one", bytes(g()[:-1]), "pack.file_size", "last byte missing"),
        ("truncated_to_data", bytes(g()[:20000]), "pack.file_size", "cut inside the data section"),
        ("extra_byte", bytes(g() + b"\0"), "pack.file_size", "one byte appended"),
        ("padding_nonzero", bytes(put(g(), 200, "B", 1)), "pack.padding", "a byte of [128, data_offset) set"),
        ("padding_last_byte", bytes(put(g(), 16383, "B", 0x80)), "pack.padding", "byte data_offset-1 set"),
        ("table_checksum", bytes(put(g(), table_off + 3, "B", 0x5A)), "pack.table_checksum", "a table byte changed"),
        ("table_checksum_field", bytes(put(g(), 96, "Q", 12345)), "pack.table_checksum",
         "header's table_checksum changed (header rehashed)"),
        ("block_0_flipped", bytes(put(g(), 16384 + 10, "B", 0x33)), "pack.block_checksum", "a row byte in block 0"),
        ("block_1_flipped", bytes(put(g(), 16384 + 4096 + 100, "B", 0x33)), "pack.block_checksum",
         "a row byte in block 1"),
        ("block_tail_padding", bytes(put(g(), table_off - 1, "B", 1)), "pack.block_checksum",
         "zero padding after the last row changed: only a full verify sees it"),
        ("layer_major_block_flipped", bytes(put(g("golden_int8_layer.mekipack"), 16384 + 4200, "B", 0x11)),
         "pack.block_checksum", "layer-major pack, block 1"),
    ]
    cases += [(k, b, c, n) for k, (b, c, n) in overflow_packs().items()]
    return cases


# ------------------------------------------------------------------ bundles

def method(seq: int, memory: bool) -> dict:
    ins = [{"name": "tokens", "shape": [1, seq], "dtype": "int64"},
           {"name": "input_pos", "shape": [seq], "dtype": "int64"}]
    if memory:
        ins.append({"name": "meki_rows", "shape": [1, seq, 3, 16], "dtype": "float32"})
    return {"inputs": ins, "outputs": [{"name": "logits", "shape": [1, 100], "dtype": "float32"}]}


def backbone(target: str, file: str, memory: bool = True) -> dict:
    return {"target": target, "file": file, "quant": "none", "max_seq_len": 16, "prefill_len": 4,
            "kv_cache": "internal", "methods": {"prefill": method(4, memory), "decode": method(1, memory)}}


def entry(root: Path, rel: str) -> dict:
    data = (root / rel).read_bytes()
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def base_manifest(root: Path, memory: bool = True, extra_backbones: tuple = ()) -> dict:
    """Write the base bundle files into root and return its (valid) manifest dict."""
    root.mkdir(parents=True)
    (root / "model.pte").write_bytes(b"stand-in ExecuTorch program\n")
    (root / "tokenizer.json").write_text("{}\n")
    files = ["model.pte", "tokenizer.json"]
    if memory:
        shutil.copyfile(GOLDEN / "golden_int8_token.mekipack", root / "tables.mekipack")
        files.append("tables.mekipack")
    pack = {"file": "tables.mekipack", "dtype": "int8", "layout": "token-major", "vocab_size": 100,
            "num_layers": 3, "d_mem": 16, "fingerprint": FP} if memory else None
    return {"format": "meki-bundle", "version": 1, "name": "conformance", "fingerprint": FP,
            "memory": "both" if memory else "none", "config": {"vocab_size": 100},
            "tokenizer": {"file": "tokenizer.json", "eos_token_ids": [99]}, "memory_pack": pack,
            "backbones": [backbone("executorch-xnnpack", "model.pte", memory), *extra_backbones],
            "files": [entry(root, f) for f in sorted(files)], "export": {"tool": "make_conformance"}}


def write_manifest(root: Path, m: dict | str | bytes) -> None:
    data = m if isinstance(m, bytes) else (m if isinstance(m, str) else json.dumps(m, indent=2) + "\n").encode()
    (root / "manifest.json").write_bytes(data)


def mlpackage(root: Path, m: dict) -> dict:
    """Add a Core ML package folder (listed file by file, as the Python writer lists it) and its backbone."""
    pkg = root / "model.mlpackage"
    (pkg / "Data/com.apple.CoreML/weights").mkdir(parents=True)
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (pkg / "Data/com.apple.CoreML/model.mlmodel").write_bytes(b"stand-in mlmodel\n")
    (pkg / "Data/com.apple.CoreML/weights/weight.bin").write_bytes(bytes(range(64)))
    m["backbones"].append(backbone("coreml", "model.mlpackage"))
    rels = sorted(p.relative_to(root).as_posix() for p in pkg.rglob("*") if p.is_file())
    m["files"] = sorted(m["files"] + [entry(root, r) for r in rels], key=lambda f: f["path"])
    return m


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def bundle_cases(out: Path) -> list[dict]:
    """Write every bundle case under out; return their index entries."""
    cases: list[dict] = []
    (out / "_outside/weights").mkdir(parents=True)   # what symlink_dir_outside points at
    (out / "_outside/weights/w.bin").write_bytes(b"outside the bundle\n")

    def case(name: str, expect: str, check: str | None, note: str, memory: bool = True):
        root = out / name
        m = base_manifest(root, memory)
        cases.append({"id": f"bundle/{name}", "kind": "bundle", "path": f"bundles/{name}", "expect": expect,
                      **({"check": check} if check else {}), "note": note})
        return root, m

    root, m = case("ok_basic", "ok", None, "golden int8 pack, one ExecuTorch backbone")
    write_manifest(root, m)
    root, m = case("ok_dense", "ok", None, "dense baseline: no pack", memory=False)
    write_manifest(root, m)
    root, m = case("ok_mlpackage", "ok", None,
                   "executorch + coreml: the coreml backbone is a folder whose files are listed one by one")
    write_manifest(root, mlpackage(root, m))
    root, m = case("ok_extra_soc", "ok", None, "an NPU backbone's SoC and cache contract in its free-form extra")
    m["backbones"][0]["extra"] = {"soc": "SM8750", "kv_new_tensors": ["k_new_0", "v_new_0"], "io_quant": {}}
    write_manifest(root, m)
    root, m = case("ok_depth_64", "ok", None, f"export nests {MAX_JSON_DEPTH - 2} arrays: depth {MAX_JSON_DEPTH}")
    m["export"]["deep"] = json.loads(nested(MAX_JSON_DEPTH - 2))
    write_manifest(root, m)

    root, m = case("no_manifest", "refused", "manifest.missing", "a folder without manifest.json")
    root, m = case("not_json", "refused", "manifest.json", "truncated JSON text")
    write_manifest(root, json.dumps(m)[:-20])
    root, m = case("not_utf8", "refused", "manifest.json", "a Latin-1 byte in a string")
    write_manifest(root, json.dumps(m).replace('"conformance"', '"conf\u00e9rmance"').encode("latin-1"))
    root, m = case("json_bom", "refused", "manifest.json", "a UTF-8 byte-order mark before the JSON (RFC 8259: none)")
    write_manifest(root, b"\xef\xbb\xbf" + json.dumps(m, indent=2).encode())
    root, m = case("json_trailing_data", "refused", "manifest.json", "a second JSON value after the manifest")
    write_manifest(root, json.dumps(m, indent=2) + "\n{}\n")
    root, m = case("json_nan", "refused", "manifest.json", "NaN in config (not a JSON number)")
    write_manifest(root, json.dumps(m, indent=2).replace('"config": {', '"config": {"x": NaN, ', 1))
    root, m = case("json_array", "refused", "manifest.schema", "top level is an array")
    write_manifest(root, "[]\n")
    root, m = case("too_large", "refused", "manifest.too_large",
                   f"valid JSON followed by whitespace: {MAX_MANIFEST_BYTES + 1} bytes")
    text = json.dumps(m)
    write_manifest(root, text + " " * (MAX_MANIFEST_BYTES + 1 - len(text)))
    root, m = case("too_deep_65", "refused", "manifest.too_deep", f"depth {MAX_JSON_DEPTH + 1}")
    m["export"]["deep"] = json.loads(nested(MAX_JSON_DEPTH - 1))
    write_manifest(root, m)
    root, m = case("too_deep_100000", "refused", "manifest.too_deep", "100,000 nested arrays (stack overflow bait)")
    text = json.dumps(m)
    write_manifest(root, text.replace('"export": {', '"export": {"deep": ' + nested(100_000) + ", ", 1))

    for name, mutate, note in [
        ("version_2", lambda m: m.update(version=2), "manifest version 2"),
        ("missing_files", lambda m: m.pop("files"), "no files key"),
        ("fingerprint_not_hex", lambda m: m.update(fingerprint="XYZ"), "fingerprint is not 32 hex chars"),
        ("bytes_negative", lambda m: m["files"][0].update(bytes=-1), "a file with -1 bytes"),
        ("bytes_string", lambda m: m["files"][0].update(bytes="28"), "bytes is a string"),
        ("memory_enum", lambda m: m.update(memory="some"), "memory is not both/static/dynamic/none"),
        ("sha256_short", lambda m: m["files"][0].update(sha256="abc"), "sha256 is not 64 hex chars"),
        ("pack_dims_string", lambda m: m["memory_pack"].update(d_mem="16"), "memory_pack.d_mem is a string"),
        ("backbone_soc", lambda m: m["backbones"][0].update(soc="SM8750"),
         "a backbone with a top-level soc (the SoC belongs in extra.soc)"),
        ("backbone_format", lambda m: m["backbones"][0].update(format="tflite"), "a backbone with a top-level format"),
        ("bos_string", lambda m: m["tokenizer"].update(bos_token_id="1"), "tokenizer.bos_token_id is a string"),
        ("tensor_dtype", lambda m: m["backbones"][0]["methods"]["prefill"]["inputs"][0].update(dtype="int3"),
         "a tensor dtype outside the schema's list"),
        ("tensor_shape_zero", lambda m: m["backbones"][0]["methods"]["decode"]["inputs"][0].update(shape=[0, 1]),
         "a tensor dimension of 0"),
        ("outputs_not_tensors", lambda m: m["backbones"][0]["methods"]["decode"].update(outputs=[1, 2]),
         "a method's outputs are numbers, not tensor specs"),
        ("delegated_string", lambda m: m["backbones"][0].update(delegated={"xnnpack": "all"}),
         "a delegated count that is a string"),
    ]:
        root, m = case(f"schema_{name}", "refused", "manifest.schema", note)
        mutate(m)
        write_manifest(root, m)

    for name, mutate, note in [
        ("absolute_file", lambda m: m["files"].append({**m["files"][0], "path": "/etc/passwd"}),
         "a listed absolute path"),
        ("dotdot_pack", lambda m: m["memory_pack"].update(file="../outside/tables.mekipack"),
         "the pack at ../outside/"),
        ("dotdot_middle", lambda m: m["files"][0].update(path="sub/../model.pte"), "a .. component in the middle"),
        ("dotdot_backbone", lambda m: m["backbones"][0].update(file="../model.pte"), "a backbone at ../"),
        ("empty_component", lambda m: m["files"][0].update(path="sub//model.pte"), "an empty component"),
        ("dot_component", lambda m: m["files"][0].update(path="./model.pte"), "a . component"),
        ("backslash", lambda m: m["files"][0].update(path="..\\model.pte"), "a backslash (Windows ..)"),
        ("trailing_slash", lambda m: m["files"][0].update(path="model.pte/"), "a trailing slash"),
        ("nul_byte", lambda m: m["files"][0].update(path="model.pte\u0000x"), "a NUL character"),
    ]:
        root, m = case(f"path_{name}", "refused", "manifest.path", note)
        mutate(m)
        write_manifest(root, m)

    root, m = case("symlink_etc_passwd", "refused", "bundle.symlink", "tokenizer.json -> /etc/passwd")
    (root / "tokenizer.json").unlink()
    os.symlink("/etc/passwd", root / "tokenizer.json")
    write_manifest(root, m)
    root, m = case("symlink_inside", "refused", "bundle.symlink",
                   "model.pte -> real.pte inside the bundle, same bytes: only the symlink rule refuses it")
    (root / "model.pte").rename(root / "real.pte")
    os.symlink("real.pte", root / "model.pte")
    m["files"] = sorted(m["files"] + [entry(root, "real.pte")], key=lambda f: f["path"])
    write_manifest(root, m)
    root, m = case("symlink_dir_outside", "refused", "bundle.symlink",
                   "weights/ -> ../_outside/weights: a listed file under a symlinked folder")
    os.symlink("../_outside/weights", root / "weights")
    m["files"] = sorted(m["files"] + [entry(root, "weights/w.bin")], key=lambda f: f["path"])
    write_manifest(root, m)
    root, m = case("symlink_pack", "refused", "bundle.symlink", "tables.mekipack -> the golden pack outside")
    (root / "tables.mekipack").unlink()
    os.symlink("../../golden/golden_int8_token.mekipack", root / "tables.mekipack")
    write_manifest(root, m)

    root, m = case("path_listed_twice", "refused", "manifest.path",
                   "files[] names tokenizer.json twice: it would be hashed (and copied) once per entry")
    m["files"] = sorted(m["files"] + [f for f in m["files"] if f["path"] == "tokenizer.json"], key=lambda f: f["path"])
    write_manifest(root, m)
    root, m = case("manifest_symlink", "refused", "manifest.missing",
                   "manifest.json -> a valid manifest outside the bundle: a symlink is no manifest")
    write_manifest(root, m)
    (root / "manifest.json").rename(out / "_outside" / "manifest_symlink.json")
    os.symlink("../_outside/manifest_symlink.json", root / "manifest.json")

    root, m = case("file_missing", "refused", "bundle.missing", "a listed file is absent")
    (root / "tokenizer.json").unlink()
    write_manifest(root, m)
    root, m = case("file_is_dir", "refused", "bundle.missing", "a listed path is a folder")
    (root / "tokenizer.json").unlink()
    (root / "tokenizer.json").mkdir()
    (root / "tokenizer.json" / "x").write_text("x\n")
    write_manifest(root, m)
    root, m = case("size_wrong", "refused", "bundle.size", "model.pte listed 1 byte longer")
    next(f for f in m["files"] if f["path"] == "model.pte")["bytes"] += 1
    write_manifest(root, m)
    root, m = case("sha256_wrong", "refused", "bundle.sha256", "model.pte: same size, one byte differs")
    (root / "model.pte").write_bytes(b"stand-in ExecuTorch program!")
    write_manifest(root, m)
    root, m = case("backbone_unlisted", "refused", "bundle.unlisted", "the backbone file is not in files")
    m["files"] = [f for f in m["files"] if f["path"] != "model.pte"]
    write_manifest(root, m)
    root, m = case("mlpackage_empty", "refused", "bundle.unlisted",
                   "a coreml backbone folder with no listed files under it")
    m["backbones"].append(backbone("coreml", "model.mlpackage"))
    write_manifest(root, m)
    root, m = case("mlpackage_prefix_only", "refused", "bundle.unlisted",
                   "model.mlpackage2/x is listed; model.mlpackage is not a prefix folder of it")
    (root / "model.mlpackage2").mkdir()
    (root / "model.mlpackage2/x").write_text("x\n")
    m["backbones"].append(backbone("coreml", "model.mlpackage"))
    m["files"] = sorted(m["files"] + [entry(root, "model.mlpackage2/x")], key=lambda f: f["path"])
    write_manifest(root, m)
    root, m = case("pack_unlisted", "refused", "bundle.unlisted", "the pack is not in files")
    m["files"] = [f for f in m["files"] if f["path"] != "tables.mekipack"]
    write_manifest(root, m)
    root, m = case("fingerprint_mismatch", "refused", "bundle.fingerprint",
                   "memory_pack.fingerprint differs from the model's")
    m["memory_pack"]["fingerprint"] = OTHER_FP
    write_manifest(root, m)
    root, m = case("memory_none_with_pack", "refused", "bundle.memory", "memory=none but a pack is listed")
    m["memory"] = "none"
    write_manifest(root, m)
    for field, value in [("d_mem", 32), ("num_layers", 4), ("vocab_size", 1000), ("dtype", "int4"),
                         ("layout", "layer-major")]:
        root, m = case(f"pack_{field}_disagrees", "refused", "bundle.pack_mismatch",
                       f"manifest memory_pack.{field}={value}; the pack header says otherwise")
        m["memory_pack"][field] = value
        write_manifest(root, m)
    root, m = case("pack_other_model", "refused", "pack.fingerprint",
                   "manifest agrees with itself; the pack header carries another fingerprint")
    m["fingerprint"] = m["memory_pack"]["fingerprint"] = OTHER_FP
    write_manifest(root, m)
    root, m = case("pack_damaged_table", "refused", "pack.table_checksum", "the bundle's pack has a damaged table")
    buf = bytearray((root / "tables.mekipack").read_bytes())
    buf[struct.unpack_from("<Q", buf, 64)[0]] ^= 0xFF
    (root / "tables.mekipack").write_bytes(bytes(buf))
    m["files"] = [entry(root, f["path"]) for f in m["files"]]
    write_manifest(root, m)
    return cases


# ------------------------------------------------------------------ stats, index

def stats_cases(out: Path) -> list[dict]:
    good = {"runner": "python", "bundle": "conformance", "target": "executorch-xnnpack", "memory": "both",
            "prompt_tokens": 3, "generated_tokens": 2, "stop_reason": "max_tokens", "ttft_s": 0.5,
            "prefill_s": 0.5, "prefill_tok_s": 6.0, "decode_s": 0.25, "decode_tok_s": 4.0,
            "decode_step_median_s": 0.2, "exposed_lookup_s": [0.001], "exposed_lookup_total_s": 0.001,
            "exposed_lookup_fraction": 0.004, "lookup_total_s": 0.002, "rss_start_bytes": 1000,
            "rss_end_bytes": 2000, "rss_peak_bytes": 2000, "rss_anon_bytes": 1500, "rss_file_bytes": 500,
            "pack_resident_bytes": 100, "tokens": [5, 6], "text": None, "format": "meki-run-stats", "version": 1}
    variants = [("ok_python", "ok", {}, None), ("ok_native_x_field", "ok", {"runner": "native", "x_threads": 4}, None),
                ("missing_ttft", "refused", {"ttft_s": None}, "ttft_s removed"),
                ("runner_unknown", "refused", {"runner": "basic"}, "runner outside the enum"),
                ("tokens_strings", "refused", {"tokens": ["5", "6"]}, "tokens are strings"),
                ("version_2", "refused", {"version": 2}, "stats version 2"),
                ("negative_rss", "refused", {"rss_peak_bytes": -1}, "negative bytes")]
    out.mkdir(parents=True)
    cases = []
    for name, expect, change, note in variants:
        d = {**good, **change}
        if change.get("ttft_s", 0) is None:
            d.pop("ttft_s")
        (out / f"{name}.json").write_text(json.dumps(d, indent=1) + "\n")
        cases.append({"id": f"stats/{name}", "kind": "stats", "path": f"stats/{name}.json", "expect": expect,
                      **({"check": "stats.schema"} if expect == "refused" else {}),
                      "note": note or "valid", "readers": ["python"]})
    return cases


def pack_index(written: list[tuple[str, str, str]]) -> list[dict]:
    spec = json.loads((GOLDEN / "pack_golden.json").read_text())
    cases = [{"id": f"pack/{Path(p['file']).stem}", "kind": "pack", "path": f"golden/{p['file']}", "expect": "ok",
              "fingerprint": spec["fingerprint"], "tokens": spec["tokens"], "rows": "golden/pack_golden.json",
              "note": f"golden {p['dtype']} {p['layout']}"} for p in spec["packs"]]
    cases += [{"id": "pack/fingerprint_other_model", "kind": "pack", "path": "golden/golden_int8_token.mekipack",
               "expect": "refused", "check": "pack.fingerprint", "fingerprint": OTHER_FP,
               "note": "a good pack opened for another model"},
              {"id": "pack/token_equals_vocab", "kind": "pack", "path": "golden/golden_fp16_token.mekipack",
               "expect": "refused", "check": "pack.token", "tokens": [0, 100], "note": "token id V"},
              {"id": "pack/token_negative", "kind": "pack", "path": "golden/golden_int4_token.mekipack",
               "expect": "refused", "check": "pack.token", "tokens": [-1], "note": "token id -1"},
              {"id": "pack/a_directory", "kind": "pack", "path": "packs/a_directory.mekipack", "expect": "refused",
               "check": "pack.io", "note": "a folder where the pack should be"}]
    for name, check, note in written:
        cases.append({"id": f"pack/{name}", "kind": "pack", "path": f"packs/{name}.mekipack", "expect": "refused",
                      "check": check, "tokens": [0, 68, 99], "note": note})
    return cases


def main() -> None:
    for sub in ("packs", "bundles", "stats"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    (HERE / "packs/a_directory.mekipack").mkdir(parents=True)
    (HERE / "packs/a_directory.mekipack/README").write_text("a folder named like a pack: readers refuse it\n")
    written = []
    for name, data, check, note in pack_cases():
        (HERE / "packs" / f"{name}.mekipack").write_bytes(data)
        written.append((name, check, note))
    cases = pack_index(written) + bundle_cases(HERE / "bundles") + stats_cases(HERE / "stats")
    cases.append({"id": "xxh3/vectors", "kind": "xxh3", "path": "xxh3_vectors.txt", "expect": "ok",
                  "note": "xxh3_64 seed 0 of LCG byte prefixes (make_xxh3_vectors.py)"})
    checks = closed_checks()
    used = {c["check"] for c in cases if "check" in c}
    assert used == set(checks), (sorted(used - set(checks)), sorted(set(checks) - used))
    index = {"format": "meki-conformance", "version": 1, "checks": checks,
             "limits": {"max_manifest_bytes": MAX_MANIFEST_BYTES, "max_json_depth": MAX_JSON_DEPTH},
             "cases": cases}
    (HERE / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {HERE / 'index.json'}")


if __name__ == "__main__":
    main()
