"""The `meki` command end to end on the fake preset: init -> fold, and clear errors."""

from pipeline.cli import main


def test_init_fold_and_refusals(tmp_path, capsys):
    assert main(["init", str(tmp_path / "ck"), "--preset", "fake"]) == 0
    assert main(["fold", str(tmp_path / "ck"), str(tmp_path / "folded")]) == 0
    assert (tmp_path / "folded" / "tables.safetensors").exists()
    assert main(["fold", str(tmp_path / "ck"), str(tmp_path / "folded")]) == 2  # exists, not overwritten
    assert main(["init", str(tmp_path / "x"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "unknown preset 'nope'" in err


def test_demo_runs(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--preset", "fake"]) == 0
