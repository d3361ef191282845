"""Unit tests for training.data on a small synthetic corpus (no downloads, no packages)."""
import json

import numpy as np
import pytest

from training import data

_WORDS = ("the model reads a token and looks up its memory row from flash storage while the "
          "backbone computes attention over earlier tokens in the sequence").split()


def _page(i: int) -> str:
    rng = np.random.default_rng(i)
    paras = "".join(f"<p>{' '.join(rng.choice(_WORDS, 14))}.</p>" for _ in range(6))
    return (f"<html><head><title>t</title><script>var x = 1;</script></head><body>"
            f'<div class="related" role="navigation"><a href="#">next</a> | previous</div>'
            f'<div role="main"><h1>Page {i}<a class="headerlink" href="#">¶</a></h1>{paras}'
            f"<p>This licence paragraph is repeated on every single page of the docs.</p>"
            f"<pre>x = {i}\nprint(x)</pre></div>"
            f'<div class="footer">Copyright footer text</div></body></html>')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "html"
    (root / "sub").mkdir(parents=True)
    for i in range(40):
        (root / ("sub" if i % 2 else "") / f"page{i:02d}.html").write_text(_page(i))
    (root / "genindex.html").write_text(_page(99))  # index pages are skipped
    out = tmp_path_factory.mktemp("out")
    stats = data.collect_corpus([root], out / "corpus.txt")
    tok = data.train_tokenizer(out / "corpus.txt", vocab_size=300, out_path=out / "tokenizer.json")
    return root, out, stats, tok


def test_html_extraction_drops_boilerplate():
    paras = data.html_to_paragraphs(_page(3))
    text = "\n".join(paras)
    assert paras[0] == "Page 3" and "x = 3\nprint(x)" in paras
    for junk in ("var x", "next", "Copyright", "¶"):
        assert junk not in text


def test_collect_corpus_stats_and_dedup(corpus):
    root, out, stats, _ = corpus
    docs = list(data.iter_documents(out / "corpus.txt"))
    assert stats.n_docs == len(docs) == 40
    assert stats.n_duplicates == 39  # the licence paragraph survives once
    assert sum("licence paragraph" in t for _, t in docs) == 1
    assert docs[0][0].endswith(":page00.html") and not any("genindex" in d for d, _ in docs)
    assert data.CorpusStats.load(out / "corpus.json") == stats
    with pytest.raises(FileExistsError):
        data.collect_corpus([root], out / "corpus.txt")


def test_tokenizer_round_trip_and_determinism(corpus, tmp_path):
    _, out, _, tok_path = corpus
    tok = data.load_tokenizer(tok_path)
    assert tok.get_vocab_size() == 300 and tok.token_to_id(data.EOT) == 0
    for text in ("the model reads a token", "Ünïcode ✓ and   spaces\n\ttabs", "zzz 123"):
        assert tok.decode(tok.encode(text).ids) == text
    again = data.train_tokenizer(out / "corpus.txt", 300, tmp_path / "tokenizer.json")
    assert again.read_text() == tok_path.read_text()
    with pytest.raises(FileExistsError):
        data.train_tokenizer(out / "corpus.txt", 300, tok_path)


def test_split_is_fixed_by_doc_id():
    ids = [f"pkg:page{i}.html" for i in range(2000)]
    val = [d for d in ids if data.is_validation(d, 0.1, seed=0)]
    assert val == [d for d in ids if data.is_validation(d, 0.1, seed=0)]
    assert 150 < len(val) < 250
    assert val != [d for d in ids if data.is_validation(d, 0.1, seed=1)]
    assert set(d for d in ids if data.is_validation(d, 0.05)) <= set(val)  # nested fractions


def test_prepare_meta_and_files(corpus, tmp_path):
    _, out, stats, tok_path = corpus
    meta = data.prepare(out / "corpus.txt", tok_path, tmp_path, val_fraction=0.2, seed=0)
    tok = data.load_tokenizer(tok_path)
    docs = list(data.iter_documents(out / "corpus.txt"))
    val_docs = [t for d, t in docs if data.is_validation(d, 0.2, 0)]
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    want = np.concatenate([tok.encode(t).ids + [0] for t in val_docs])
    np.testing.assert_array_equal(val, want)
    assert meta == data.DatasetMeta.load(tmp_path)
    assert meta.vocab_size == 300 and meta.eot_id == 0 and meta.dtype == "uint16"
    assert meta.files["val"]["docs"] == len(val_docs) == len(docs) - meta.files["train"]["docs"]
    for name in ("train", "val", "tokenizer"):
        f = meta.files[name]
        assert f["sha256"] == data.sha256_file((tmp_path if name != "tokenizer" else out) / f["file"])
    assert meta.files["train"]["tokens"] * 2 == (tmp_path / "train.bin").stat().st_size
    assert meta.corpus["sha256"] == stats.sha256 and meta.bytes_per_token > 1
    assert json.loads((tmp_path / "meta.json").read_text())["split"]["seed"] == 0
    with pytest.raises(FileExistsError):
        data.prepare(out / "corpus.txt", tok_path, tmp_path)
    capped = data.prepare(out / "corpus.txt", tok_path, tmp_path, val_fraction=0.2,
                          max_train_tokens=100, overwrite=True)
    assert capped.files["train"]["tokens"] == 100 and capped.files["val"] == meta.files["val"]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_loader_shapes_and_determinism(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    a, b = data.TokenBatches(path, 4, 16, seed=3), data.TokenBatches(path, 4, 16, seed=3)
    x = next(a)
    assert x.shape == (4, 17) and x.dtype == np.int64
    assert (np.diff(x, axis=1) == 1).all()  # contiguous windows
    np.testing.assert_array_equal(x, next(b))
    state = a.state_dict()
    y = next(a)
    a.load_state_dict(state)
    np.testing.assert_array_equal(next(a), y)
    assert not np.array_equal(next(data.TokenBatches(path, 4, 16, seed=4)), x)
    ev = list(data.eval_batches(path, 8, 16))
    assert sum(len(w) for w in ev) == 999 // 16 and ev[0][0, 0] == 0 and ev[0][1, 0] == 16
    with pytest.raises(ValueError):
        data.TokenBatches(path, 1, 1000)
