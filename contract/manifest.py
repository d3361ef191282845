"""The bundle's manifest.json: read, validate against the JSON schema, verify files, write.

The manifest is the only contract between exporter, runtime, harness and apps: nothing parses
file names. Schema: bundle_manifest.schema.json beside this file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from contract import pack_format as pf
from contract.atomic import atomic_write_text
from contract.hashing import sha256_file

MANIFEST = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("bundle_manifest.schema.json")


class BundleError(ValueError):
    """A bundle whose manifest or files cannot be trusted; the message names the problem."""


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class MethodSpec:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    entry: str = ""  # the program's own name for this step (method, signature or function)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


@dataclass
class Backbone:
    target: str  # export target (registry name), e.g. executorch-xnnpack
    file: str  # program file, relative to the bundle
    quant: str  # weight quantisation (none, 8da4w, int8wo, ...)
    max_seq_len: int  # KV cache positions
    prefill_len: int  # tokens per prefill call (shorter chunks are padded)
    kv_cache: str  # internal (mutable state) | io (passed in and out)
    methods: dict[str, MethodSpec]
    delegated: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def takes_meki_rows(self) -> bool:
        return self.methods["decode"].input("meki_rows") is not None


@dataclass
class PackRef:
    file: str
    dtype: str
    layout: str
    vocab_size: int
    num_layers: int
    d_mem: int
    fingerprint: str


@dataclass
class TokenizerRef:
    file: str
    eos_token_ids: list[int]
    bos_token_id: int | None = None


@dataclass
class FileEntry:
    path: str
    sha256: str
    bytes: int


@dataclass
class Manifest:
    name: str
    fingerprint: str
    memory: str
    config: dict[str, Any]
    tokenizer: TokenizerRef | None
    memory_pack: PackRef | None
    backbones: list[Backbone]
    files: list[FileEntry] = field(default_factory=list)
    export: dict[str, Any] = field(default_factory=dict)
    format: str = "meki-bundle"
    version: int = 1

    def backbone(self, target: str) -> Backbone:
        for b in self.backbones:
            if b.target == target:
                return b
        raise BundleError(f"bundle {self.name!r} has no backbone for target {target!r} "
                          f"(has: {', '.join(b.target for b in self.backbones)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """Validate against the schema, then build the dataclasses."""
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        where = lambda e: "/".join(map(str, e.path)) or "(top)"  # noqa: E731
        raise BundleError("manifest does not match the schema: " + "; ".join(f"{where(e)}: {e.message}" for e in errors[:8]))
    d = dict(data)
    backbones = [Backbone(**{**b, "methods": {k: _method(m) for k, m in b["methods"].items()}})
                 for b in d.pop("backbones")]
    pack, tok = d.pop("memory_pack"), d.pop("tokenizer")
    return Manifest(tokenizer=TokenizerRef(**tok) if tok else None, memory_pack=PackRef(**pack) if pack else None,
                    backbones=backbones, files=[FileEntry(**f) for f in d.pop("files")], **d)


def _method(m: dict[str, Any]) -> MethodSpec:
    return MethodSpec([TensorSpec(**t) for t in m["inputs"]], [TensorSpec(**t) for t in m["outputs"]], m.get("entry", ""))


def load_manifest(bundle: Path) -> Manifest:
    path = Path(bundle) / MANIFEST
    if not path.exists():
        raise BundleError(f"{bundle}: no {MANIFEST} (not a bundle folder)")
    try:
        return parse_manifest(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc


def verify_bundle(bundle: Path, check_hashes: bool = True) -> Manifest:
    """The one bundle check (runtime, bench engine, `meki bundle`, verify): the manifest against its
    schema; every listed file exists with its size (and sha256); every referenced file is listed; the
    pack's header agrees with the manifest and carries the model's fingerprint. Raises BundleError."""
    bundle = Path(bundle)
    m = load_manifest(bundle)
    listed = {f.path: f for f in m.files}
    referenced = [b.file for b in m.backbones] + [r.file for r in (m.tokenizer, m.memory_pack) if r is not None]
    # a referenced folder (a Core ML .mlpackage) counts as listed when files under it are
    problems = [f"{p}: referenced but not listed in files" for p in referenced
                if p not in listed and not any(f.startswith(p.rstrip("/") + "/") for f in listed)]
    for f in m.files:
        path = bundle / f.path
        if not path.is_file():
            problems.append(f"{f.path}: missing")
        elif path.stat().st_size != f.bytes:
            problems.append(f"{f.path}: {path.stat().st_size} bytes, manifest says {f.bytes}")
        elif check_hashes and sha256_file(path) != f.sha256:
            problems.append(f"{f.path}: sha256 does not match the manifest")
    if m.memory_pack and m.memory_pack.fingerprint != m.fingerprint:
        problems.append(f"memory pack fingerprint {m.memory_pack.fingerprint} != model {m.fingerprint}")
    if m.memory_pack and (bundle / m.memory_pack.file).is_file():
        problems += pack_header_problems(bundle / m.memory_pack.file, m.memory_pack)
    if (m.memory == "none") != (m.memory_pack is None):
        problems.append(f"memory={m.memory} but memory_pack is {'absent' if m.memory_pack is None else 'present'}")
    if problems:
        raise BundleError(f"{bundle}: " + "; ".join(problems))
    return m


def pack_header_problems(path: Path, ref: PackRef) -> list[str]:
    """The pack's own header (magic, version, checksum, shape, dtype, layout, fingerprint) against the
    manifest's description of it; the pack reader checks the rest when it opens the file."""
    with open(path, "rb") as fh:
        buf = fh.read(pf.HEADER_SIZE)
    if len(buf) < pf.HEADER_SIZE or buf[:8] != pf.MAGIC:
        return [f"{ref.file}: not a MeKi memory pack (bad magic or shorter than its header)"]
    fields, stored = pf.unpack_header(buf)
    if pf.checksum(buf[:pf.HEADER_CHECKSUM_OFFSET]) != stored:
        return [f"{ref.file}: pack header checksum mismatch (damaged header)"]
    (_, version, _, v, n_layers, d_mem, dcode, lcode, *_rest) = fields
    fp_raw = fields[17]
    got = (version, pf.DTYPE_NAMES.get(dcode), pf.LAYOUT_NAMES.get(lcode), v, n_layers, d_mem, fp_raw.hex())
    want = (pf.VERSION, ref.dtype, ref.layout, ref.vocab_size, ref.num_layers, ref.d_mem, ref.fingerprint)
    names = ("version", "dtype", "layout", "vocab_size", "num_layers", "d_mem", "fingerprint")
    return [f"{ref.file}: pack header {n}={g!r}, manifest says {w!r}" for n, g, w in zip(names, got, want) if g != w]


def write_manifest(bundle: Path, manifest: Manifest) -> Manifest:
    """List every file under the bundle (sha256, size), validate, and write manifest.json atomically."""
    bundle = Path(bundle)
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    manifest.files = [FileEntry(p.relative_to(bundle).as_posix(), sha256_file(p), p.stat().st_size) for p in files]
    data = manifest.to_dict()
    parse_manifest(data)  # never write a manifest that the readers would refuse
    atomic_write_text(bundle / MANIFEST, json.dumps(data, indent=2) + "\n")
    return manifest
