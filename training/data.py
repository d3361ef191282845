"""Corpus, tokenizer and token files for training small MeKi models (torch-free).

Chain: `collect_corpus` (Debian documentation HTML -> corpus.txt) -> `train_tokenizer`
(byte-level BPE -> tokenizer.json) -> `prepare` (fixed split -> train.bin / val.bin / meta.json).
`prepare_data` runs all three; `TokenBatches` samples training windows from a .bin file.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from contract.atomic import atomic_file, atomic_write_text, output_lock
from contract.inputs import read_text, require_parent_dir
from contract.hashing import sha256_file
from training.doc_text import clean_paragraph, html_to_paragraphs, pod_to_paragraphs

EOT = "<|endoftext|>"
DOC_SEP = "\x1e"  # record separator: a corpus line "\x1e<doc id>" starts a document
TOKEN_DTYPE = np.uint16
META_FORMAT = "meki-tokens/1"

# Debian packages whose documentation is the corpus; training/get_corpus.sh installs them.
DEFAULT_SOURCES: dict[str, str] = {
    "/usr/share/doc/python3.11/html": "python3.11-doc",
    "/usr/share/doc/linux-doc-6.1/html": "linux-doc-6.1",
    "/usr/share/doc/python-django-doc/html": "python-django-doc",
    "/usr/share/doc/postgresql-doc-15/html": "postgresql-doc-15",
    "/usr/share/perl/5.36.0/pod": "perl-doc",
    "/usr/share/debian-reference": "debian-reference-en",
    # added for issue 14 (a corpus large enough that MeKi's tables do not just memorise it)
    "/usr/share/doc/debian-handbook/html/en-US": "debian-handbook",
    "/usr/share/doc/apache2-doc/manual/en": "apache2-doc",
    "/usr/share/doc/git-doc": "git-doc",
    "/usr/share/doc/nodejs/api": "nodejs-doc",
    "/usr/share/doc/sqlite3": "sqlite3-doc",
    "/usr/share/doc/sphinx-doc/html": "sphinx-doc",
    "/usr/share/doc/cmake-data/html": "cmake-doc",
    "/usr/share/doc/octave/octave.html": "octave-doc",
    "/usr/share/doc/python-sklearn-doc/html": "python-sklearn-doc",
    "/usr/share/doc/python-flask-doc/html": "python-flask-doc",
}

# ---------------------------------------------------------------------------------------------
# Corpus

# Sphinx build folders, indexes, and the kernel's translated (non-English) pages
_SKIP_FILES = re.compile(r"(^|/)(_[^/]*/|translations/|genindex|search\.html$|py-modindex|"
                         r"modindex|bookindex)")
MIN_DOC_CHARS = 200  # pages shorter than this are index stubs
MIN_DEDUP_CHARS = 40  # shorter paragraphs ("Note", "Parameters") may repeat freely
MIN_PROSE_FRACTION = 0.4  # drops tables of contents, maintainer lists, bare API listings
MAX_NON_ASCII = 0.05  # fraction of characters; keeps the corpus English
_SENTENCE_END = re.compile(r"[.!?:)]\s*$")


def prose_fraction(paragraphs: list[str]) -> float:
    """Share of characters in sentence-like paragraphs (>= 8 words, one line, ends like a sentence)."""
    total = sum(len(p) for p in paragraphs)
    prose = sum(len(p) for p in paragraphs
                if "\n" not in p and len(p.split()) >= 8 and _SENTENCE_END.search(p))
    return prose / total if total else 0.0


def _doc_problem(paragraphs: list[str]) -> str | None:
    """Why a cleaned document should be left out, or None to keep it."""
    text = "\n\n".join(paragraphs)
    if len(text) < MIN_DOC_CHARS:
        return "short"
    if sum(ord(c) > 127 for c in text) > MAX_NON_ASCII * len(text):
        return "non_english"
    if prose_fraction(paragraphs) < MIN_PROSE_FRACTION:
        return "low_prose"
    return None


@dataclass
class CorpusStats:
    """What `collect_corpus` wrote; also saved as the corpus's sidecar `<name>.json`."""

    path: str  # corpus text file
    n_docs: int  # documents written (one per HTML page / POD file)
    n_bytes: int  # UTF-8 size of the corpus file
    n_paragraphs: int  # paragraphs kept
    n_duplicates: int  # repeated paragraphs dropped
    skipped_docs: dict[str, int]  # documents left out, by reason (short, non_english, low_prose)
    sha256: str  # of the corpus file
    sources: list[dict] = field(default_factory=list)  # {path, package, version, docs, bytes}

    @classmethod
    def load(cls, path: Path) -> "CorpusStats":
        return _from_dict(cls, json.loads(read_text(Path(path), "corpus stats file")))


def _from_dict(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(d))
    if missing:
        raise ValueError(f"{cls.__name__}: missing keys {missing}; rebuild the folder with `meki data`")
    return cls(**d)


def _source_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file()
             and (p.name.endswith((".html", ".pod", ".pod.gz")))
             and not _SKIP_FILES.search(p.relative_to(root).as_posix())]
    if root.name == "debian-reference":  # one language only; the package ships .en.html
        files = [p for p in files if p.name.endswith(".en.html")]
    return sorted(files)


def _file_paragraphs(path: Path) -> list[str]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    paras = html_to_paragraphs(text) if ".html" in path.suffixes else pod_to_paragraphs(text)
    return [c for c in (clean_paragraph(p) for p in paras) if c]


def debian_package(path: Path) -> tuple[str, str]:
    """(package, version) owning `path` per dpkg; ("unknown", "") where dpkg does not know it."""
    try:
        owner = subprocess.run(["dpkg-query", "-S", str(path)], check=True, capture_output=True,
                               text=True).stdout.split(":")[0].strip()
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", owner], check=True,
                                 capture_output=True, text=True).stdout.strip()
        return owner, version
    except (OSError, subprocess.CalledProcessError):
        return "unknown", ""


def collect_corpus(sources: list[Path], out_txt: Path, overwrite: bool = False) -> CorpusStats:
    """Extract English text from documentation trees into one corpus file.

    Each source is a directory of HTML pages or POD files; each file becomes one document,
    written as a line "\\x1e<doc id>" followed by its paragraphs separated by blank lines.
    Doc ids are "<package>:<path relative to the source>", stable across machines. Repeated
    paragraphs (>= MIN_DEDUP_CHARS) are kept only at their first occurrence.
    """
    out_txt = Path(out_txt)
    _refuse_existing([out_txt, out_txt.with_suffix(".json")], overwrite)
    seen: set[bytes] = set()
    stats = CorpusStats(str(out_txt), 0, 0, 0, 0, {}, "")
    with atomic_file(out_txt) as f:
        for root in map(Path, sources):
            files = _source_files(root) if root.is_dir() else []
            if not files:
                raise FileNotFoundError(f"no .html/.pod files under {root}; "
                                        "run training/get_corpus.sh to install the packages")
            package, version = debian_package(files[0])
            src = {"path": str(root), "package": package, "version": version, "docs": 0,
                   "bytes": 0}
            for path in files:
                kept, keys = [], set()
                for para in _file_paragraphs(path):
                    key = hashlib.blake2b(para.encode(), digest_size=16).digest()
                    if len(para) >= MIN_DEDUP_CHARS and (key in seen or key in keys):
                        stats.n_duplicates += 1
                        continue
                    keys.add(key)
                    kept.append(para)
                problem = _doc_problem(kept)
                if problem:
                    stats.skipped_docs[problem] = stats.skipped_docs.get(problem, 0) + 1
                    continue
                seen |= keys  # only kept documents claim their paragraphs
                text = "\n\n".join(kept)
                doc_id = f"{package}:{path.relative_to(root).as_posix()}"
                data = f"{DOC_SEP}{doc_id}\n{text}\n".encode()
                f.write(data)
                stats.n_docs += 1
                stats.n_paragraphs += len(kept)
                src["docs"] += 1
                src["bytes"] += len(data)
            stats.sources.append(src)
    stats.n_bytes = out_txt.stat().st_size
    stats.sha256 = sha256_file(out_txt)
    atomic_write_text(out_txt.with_suffix(".json"), json.dumps(dataclasses.asdict(stats), indent=2))
    return stats


def iter_documents(corpus_txt: Path) -> Iterator[tuple[str, str]]:
    """(doc id, text) for each document of a corpus written by `collect_corpus`."""
    doc_id, lines = None, []
    with open(corpus_txt, encoding="utf-8") as f:
        for line in f:
            if line.startswith(DOC_SEP):
                if doc_id is not None:
                    yield doc_id, "".join(lines).rstrip("\n")
                doc_id, lines = line[1:].rstrip("\n"), []
            elif doc_id is not None:
                lines.append(line)
    if doc_id is not None:
        yield doc_id, "".join(lines).rstrip("\n")


# ---------------------------------------------------------------------------------------------
# Files


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; pass overwrite=True")


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(corpus_txt: Path, vocab_size: int = 8192, out_path: Path | None = None,
                    overwrite: bool = False) -> Path:
    """Train a byte-level BPE on the corpus documents; writes `tokenizer.json` atomically.

    `<|endoftext|>` is token 0. Every byte has a token, so any text round-trips. The result is
    deterministic for a given corpus (checked by the tests).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not 256 < vocab_size <= np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"vocab_size {vocab_size} must be in (256, 65536] to fit uint16 files")
    out_path = Path(out_path) if out_path else Path(corpus_txt).with_name("tokenizer.json")
    _refuse_existing([out_path], overwrite)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((text for _, text in iter_documents(corpus_txt)), trainer=trainer)
    atomic_write_text(out_path, tok.to_str())
    return out_path


def load_tokenizer(tokenizer_json: Path):
    """The `tokenizers.Tokenizer` saved by `train_tokenizer`."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json))


# ---------------------------------------------------------------------------------------------
# Split and token files


SPLIT_RULE = ("validation iff int(sha256(f'{seed}:{doc_id}').hexdigest()[:16], 16) / 2**64 "
              "< val_fraction")


def is_validation(doc_id: str, val_fraction: float, seed: int = 0) -> bool:
    """The fixed split: a document's side depends only on its id, the seed and the fraction."""
    h = int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:16], 16)
    return h / 2**64 < val_fraction


@dataclass
class DatasetMeta:
    """Contents of `meta.json`, the contract between `prepare` and the trainer."""

    format: str  # META_FORMAT
    dtype: str  # token dtype of the .bin files ("uint16")
    vocab_size: int  # tokenizer vocabulary size (embedding rows needed)
    eot_id: int  # id of <|endoftext|>, written after every document
    files: dict[str, dict]  # name -> {file, tokens, docs, bytes, sha256} for train / val / tokenizer
    split: dict  # {rule, val_fraction, seed}
    corpus: dict  # CorpusStats of the corpus the files were made from
    bytes_per_token: float  # corpus UTF-8 bytes per token (train + val, excluding eot)
    max_train_tokens: int | None = None  # cap applied to train.bin, if any

    @classmethod
    def load(cls, path: Path) -> "DatasetMeta":
        """Reads `meta.json` (a file or the folder holding it); unknown keys are an error."""
        path = Path(path)
        file = path / "meta.json" if path.is_dir() else path
        try:
            data = json.loads(read_text(file, "meta.json"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc}); rebuild it with `meki data`") from None
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected a JSON object; rebuild it with `meki data`")
        return _from_dict(cls, data)


def _tokenize_split(corpus_txt: Path, tok, val_fraction: float, seed: int,
                    batch_docs: int = 256) -> dict[str, tuple[list[np.ndarray], int, int]]:
    """Per split: (token chunks, docs, text bytes); each doc is followed by the eot id."""
    eot = np.array([tok.token_to_id(EOT)], dtype=TOKEN_DTYPE)
    out = {"train": ([], 0, 0), "val": ([], 0, 0)}
    docs = list(iter_documents(corpus_txt))
    for i in range(0, len(docs), batch_docs):
        batch = docs[i:i + batch_docs]
        for (doc_id, text), enc in zip(batch, tok.encode_batch([t for _, t in batch])):
            name = "val" if is_validation(doc_id, val_fraction, seed) else "train"
            chunks, n_docs, n_bytes = out[name]
            chunks += [np.asarray(enc.ids, dtype=TOKEN_DTYPE), eot]
            out[name] = (chunks, n_docs + 1, n_bytes + len(text.encode()))
    return out


def prepare(corpus_txt: Path, tokenizer_json: Path, out_dir: Path, val_fraction: float = 0.02,
            seed: int = 0, max_train_tokens: int | None = None,
            overwrite: bool = False) -> DatasetMeta:
    """Tokenise the corpus into `train.bin` / `val.bin` (flat uint16 ids) and `meta.json`.

    Documents go to validation by `is_validation` (hash of doc id), in corpus order, each
    followed by `<|endoftext|>`. `max_train_tokens` truncates train.bin (to fit a transfer
    limit); validation is never cut. Refuses to overwrite unless `overwrite=True`.
    """
    out_dir = Path(out_dir)
    targets = [out_dir / n for n in ("train.bin", "val.bin", "meta.json")]
    _refuse_existing(targets, overwrite)
    tok = load_tokenizer(tokenizer_json)
    if tok.get_vocab_size() > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"vocab {tok.get_vocab_size()} does not fit {np.dtype(TOKEN_DTYPE)}")
    splits = _tokenize_split(Path(corpus_txt), tok, val_fraction, seed)
    files, n_text, n_tok = {}, 0, 0
    for name, (chunks, n_docs, n_bytes) in splits.items():
        if not n_docs:
            raise ValueError(f"the {name} split is empty; change val_fraction ({val_fraction})")
        ids = np.concatenate(chunks)
        n_text, n_tok = n_text + n_bytes, n_tok + len(ids) - n_docs
        if name == "train" and max_train_tokens is not None:
            ids = ids[:max_train_tokens]
        path = out_dir / f"{name}.bin"
        with atomic_file(path) as f:
            f.write(ids.tobytes())
        files[name] = {"file": path.name, "tokens": int(len(ids)), "docs": n_docs,
                       "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    tj = Path(tokenizer_json)
    files["tokenizer"] = {"file": tj.name, "bytes": tj.stat().st_size, "sha256": sha256_file(tj)}
    sidecar = Path(corpus_txt).with_suffix(".json")
    corpus = json.loads(sidecar.read_text()) if sidecar.exists() else {
        "path": str(corpus_txt), "sha256": sha256_file(Path(corpus_txt)), "sources": []}
    meta = DatasetMeta(META_FORMAT, np.dtype(TOKEN_DTYPE).name, tok.get_vocab_size(),
                       tok.token_to_id(EOT), files,
                       {"rule": SPLIT_RULE, "val_fraction": val_fraction, "seed": seed},
                       corpus, round(n_text / max(n_tok, 1), 4), max_train_tokens)
    atomic_write_text(out_dir / "meta.json", json.dumps(dataclasses.asdict(meta), indent=2))
    return meta


# ---------------------------------------------------------------------------------------------
# Loader


class TokenBatches:
    """Random training windows from a token file: `next()` gives int64 [B, T + 1].

    Inputs are `w[:, :-1]`, targets `w[:, 1:]`. The generator is seeded, so the stream of
    batches is fixed by (file, batch_size, seq_len, seed); under DDP give each rank seed + rank.
    `state_dict` / `load_state_dict` let a resumed run continue the same stream.
    """

    def __init__(self, path: Path, batch_size: int, seq_len: int, seed: int = 0) -> None:
        self.tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
        if len(self.tokens) < seq_len + 1:
            raise ValueError(f"{path} has {len(self.tokens)} tokens, need >= seq_len + 1")
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> "TokenBatches":
        return self

    def __next__(self) -> np.ndarray:
        # starts: [B]; windows: [B, T + 1]
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[idx].astype(np.int64)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def eval_batches(path: Path, batch_size: int, seq_len: int,
                 max_batches: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive non-overlapping windows int64 [b <= B, T + 1] covering the file once, in order:
    the fixed set over which validation loss is measured."""
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
    n_win = (len(tokens) - 1) // seq_len
    starts = np.arange(n_win) * seq_len
    for i, b in enumerate(range(0, n_win, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        idx = starts[b:b + batch_size, None] + np.arange(seq_len + 1)[None, :]
        yield tokens[idx].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Whole chain


def default_sources() -> list[Path]:
    return [Path(p) for p in DEFAULT_SOURCES]


def prepare_data(out_dir: Path, sources: list[Path] | None = None, vocab_size: int = 8192,
                 val_fraction: float = 0.02, seed: int = 0, max_train_tokens: int | None = None,
                 overwrite: bool = False) -> DatasetMeta:
    """corpus.txt -> tokenizer.json -> train.bin / val.bin / meta.json, all in `out_dir`.

    `sources` defaults to DEFAULT_SOURCES (install them with training/get_corpus.sh).
    """
    out_dir = Path(out_dir)
    corpus = out_dir / "corpus.txt"
    _refuse_existing([corpus, out_dir / "tokenizer.json", out_dir / "meta.json"], overwrite)
    require_parent_dir(out_dir)
    for root in map(Path, sources or default_sources()):  # before anything is created
        if not (root.is_dir() and _source_files(root)):
            raise FileNotFoundError(f"no .html/.pod files under {root}; "
                                    "run training/get_corpus.sh to install the packages")
    with output_lock(out_dir):  # a second `meki data` to the same folder fails instead of interleaving
        _refuse_existing([corpus, out_dir / "tokenizer.json", out_dir / "meta.json"], overwrite)
        collect_corpus(sources or default_sources(), corpus, overwrite=overwrite)
        tok = train_tokenizer(corpus, vocab_size, out_dir / "tokenizer.json", overwrite=overwrite)
        return prepare(corpus, tok, out_dir, val_fraction, seed, max_train_tokens, overwrite)
