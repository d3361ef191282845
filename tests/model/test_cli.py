"""The `meki` command end to end on the fake preset: init -> fold, and clear errors."""

import pytest

from meki.cli import main


def test_init_fold_and_refusals(tmp_path, capsys):
    assert main(["init", str(tmp_path / "ck"), "--preset", "fake"]) == 0
    assert main(["fold", str(tmp_path / "ck"), str(tmp_path / "folded")]) == 0
    assert (tmp_path / "folded" / "tables.safetensors").exists()
    assert main(["fold", str(tmp_path / "ck"), str(tmp_path / "folded")]) == 3  # exists, not overwritten (exit 3)
    assert main(["init", str(tmp_path / "x"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "unknown preset 'nope'" in err


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--reps", "1", "--new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "MeKi / dense" in out and "held-out perplexity" in out and "The function returns" in out
    assert (tmp_path / "demo" / "bench" / "bench.md").exists()
    assert (tmp_path / "demo" / "bundles" / "meki" / "manifest.json").exists()
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 3  # no silent overwrite (exit 3)
