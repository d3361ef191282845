"""The bundle's manifest.json: read, validate against the JSON schema, verify files, write.

The manifest is the only contract between exporter, runtime, harness and apps: nothing parses
file names. Schema: bundle_manifest.schema.json beside this file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from contract import bundle_rules as rules
from contract.atomic import atomic_write_text
from contract.hashing import sha256_file

MANIFEST = "manifest.json"
SCHEMA_PATH = Path(__file__).with_name("bundle_manifest.schema.json")


class BundleError(ValueError):
    """A bundle whose manifest or files cannot be trusted; the message names the problem and
    `check` its conformance/CHECKS.md name."""

    check = "manifest.schema"

    def __init__(self, message: str, check: str | None = None):
        super().__init__(message)
        if check is not None:
            self.check = check


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


# JSON Schema's "integer" admits 28.0 (a number with a zero fraction); the C++, Java and Swift readers do
# not, and neither do we: an integer field holds an integer.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool)))


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """Check the path fields, validate against the schema, then build the dataclasses."""
    try:
        rules.check_manifest_paths(data)
    except rules.RuleError as e:
        raise BundleError(str(e), e.check) from None
    errors = sorted(_Validator(schema()).iter_errors(data), key=lambda e: list(e.path))
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
    """Read and parse bundle/manifest.json: size and depth caps before parsing, then UTF-8, JSON, paths, schema."""
    path = Path(bundle) / MANIFEST
    try:  # a symlink is no manifest (it could point anywhere); a FIFO must not hang the open
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise OSError
            data = fh.read(rules.MAX_MANIFEST_BYTES + 1)
    except OSError:
        raise BundleError(f"{bundle}: no {MANIFEST} (not a bundle folder)", "manifest.missing") from None
    try:
        text = rules.check_manifest_bytes(data, str(path))
    except rules.RuleError as e:
        raise BundleError(str(e), e.check) from None
    try:  # ValueError: NaN, Infinity, or a number past the double range (RFC 8259 has none)
        data = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except ValueError as exc:  # JSONDecodeError is one
        raise BundleError(f"{path}: not valid JSON ({exc})", "manifest.json") from None
    return parse_manifest(data)


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is outside the range of a double")
    return value


def verify_bundle(bundle: Path, check_hashes: bool = True) -> Manifest:
    """Load the manifest and check every listed file is a regular file inside the bundle (no
    symlink anywhere on its path) with its size (and sha256), that every referenced file is listed
    (the folder rule of conformance/CHECKS.md), and that the pack's fingerprint is the model's.
    The one bundle check of files and references; consumers that open the pack add its header
    (mobile_runtime.bundle_pack). Raises BundleError whose check names the first problem."""
    bundle = Path(bundle)
    m = load_manifest(bundle)
    problems: list[tuple[str, str]] = []   # (check, message), in CHECKS.md order
    for f in m.files:
        try:
            st = rules.lstat_inside(bundle, f.path)
        except rules.RuleError as e:
            problems.append((e.check, str(e)))
            continue
        if st.st_size != f.bytes:
            problems.append(("bundle.size", f"{f.path}: {st.st_size} bytes, manifest says {f.bytes}"))
        elif check_hashes and sha256_file(bundle / f.path) != f.sha256:
            problems.append(("bundle.sha256", f"{f.path}: sha256 does not match the manifest"))
    listed = {f.path for f in m.files}
    referenced = [b.file for b in m.backbones] + [r.file for r in (m.tokenizer, m.memory_pack) if r is not None]
    problems += [("bundle.unlisted", f"{p}: referenced but not listed in files")
                 for p in referenced if not rules.is_listed(p, listed)]
    if m.memory_pack and m.memory_pack.fingerprint != m.fingerprint:
        problems.append(("bundle.fingerprint",
                         f"memory pack fingerprint {m.memory_pack.fingerprint} != model {m.fingerprint}"))
    if (m.memory == "none") != (m.memory_pack is None):
        problems.append(("bundle.memory", f"memory={m.memory} but memory_pack is "
                                          f"{'absent' if m.memory_pack is None else 'present'}"))
    if problems:
        raise BundleError(f"{bundle}: " + "; ".join(msg for _, msg in problems), problems[0][0])
    return m


def check_pack_header(m: Manifest, dtype: str, layout: str, vocab_size: int, num_layers: int,
                      d_mem: int) -> None:
    """Every consumer that opens the pack calls this: the header must say what the manifest says."""
    ref = m.memory_pack
    got, want = (dtype, layout, vocab_size, num_layers, d_mem), \
        (ref.dtype, ref.layout, ref.vocab_size, ref.num_layers, ref.d_mem)
    if got != want:
        raise BundleError(f"memory pack {ref.file}: header (dtype, layout, V, L, m) = {got} but the manifest "
                          f"says {want}", "bundle.pack_mismatch")


def write_manifest(bundle: Path, manifest: Manifest) -> Manifest:
    """List every file under the bundle (sha256, size), validate, and write manifest.json atomically."""
    bundle = Path(bundle)
    entries = [p for p in bundle.rglob("*") if p.name != MANIFEST and not p.name.startswith(".")]
    links = [p.relative_to(bundle).as_posix() for p in entries if p.is_symlink()]
    if links:   # rglob does not descend into linked folders; a listed link would leave the bundle
        raise BundleError(f"{bundle}: symbolic links are not allowed in a bundle: {', '.join(links[:5])}",
                          "bundle.symlink")
    files = sorted(p for p in entries if p.is_file())
    manifest.files = [FileEntry(p.relative_to(bundle).as_posix(), sha256_file(p), p.stat().st_size) for p in files]
    data = manifest.to_dict()
    parse_manifest(data)  # never write a manifest that the readers would refuse
    atomic_write_text(bundle / MANIFEST, json.dumps(data, indent=2) + "\n")
    return manifest
