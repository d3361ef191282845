"""Both bundles at once (export_bundles(jobs=2): the dense one in a forked process): the same files as one
after the other; a failure on either side is one clear error and leaves no output and no process behind."""

import os
import signal

import pytest

from pipeline.checkpoint import save_checkpoint
from pipeline.export import bundle
from pipeline.export.bundle import export_bundles
from pipeline.export.memory import bundles_at_once
from pipeline.export.registry import ExportError, ExportSettings
from pipeline.profile import StageProfiler
from tests.model.helpers import random_model

pytest.importorskip("executorch")
SETTINGS = ExportSettings(quant="8da4w", max_seq_len=32, prefill_len=4)
TARGETS = ["executorch-xnnpack"]
FILES = ("meki/model_xnnpack.pte", "meki/tables.mekipack", "dense/model_xnnpack.pte")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    model = random_model()
    save_checkpoint(model, root / "ck")
    save_checkpoint(random_model(memory="none"), root / "dense")  # a baseline checkpoint of its own
    return root


def no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize("baseline, quant", [(False, "8da4w"), (True, "none")],
                         ids=["derived-8da4w", "baseline-checkpoint-fp32"])
def test_two_jobs_write_the_same_files_as_one(ckpt, tmp_path, baseline, quant):
    """The derived baseline shares the loaded (quantised) weights with the MeKi model across the fork; a
    baseline checkpoint is loaded by the helper itself."""
    dense = ckpt / "dense" if baseline else None
    settings = ExportSettings(quant=quant, max_seq_len=32, prefill_len=4)
    made = {}
    for jobs in (1, 2):
        with StageProfiler(interval=0.05) as prof:
            manifests = export_bundles(ckpt / "ck", tmp_path / f"j{jobs}", TARGETS, settings, baseline=dense, jobs=jobs)
        made[jobs] = {f: (tmp_path / f"j{jobs}" / f).read_bytes() for f in FILES}
        assert sorted(manifests) == ["dense", "meki"]
        assert manifests["dense"].backbones[0].target == "executorch-xnnpack"
        names = [r.name for r in prof.records]
        assert "bundle meki" in names and "bundle dense" in names  # the helper's stages come back
        assert any(n.startswith("bundle dense/executorch-xnnpack/") for n in names)
        assert leftovers(tmp_path) == []
    assert made[1] == made[2]
    assert no_children_left()


def raise_(exc: BaseException):
    def how():
        raise exc
    return how


FAILURES = {  # which side fails, how, and the one error the export ends in
    "helper raises": ("dense", raise_(ValueError("no room for the dense bundle")),
                      "the dense bundle failed: ValueError: no room for the dense bundle"),
    "helper killed": ("dense", lambda: os.kill(os.getpid(), signal.SIGKILL),
                      r"the dense bundle was killed by the system \(SIGKILL: out of memory"),
    "parent raises": ("meki", raise_(ExportError("the MeKi bundle could not be lowered")),
                      "the MeKi bundle could not be lowered"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failure_on_either_side_is_one_error_and_leaves_nothing(ckpt, tmp_path, monkeypatch, case):
    """The helper failing stops the parent at once (not after its own bundle); the parent failing kills the
    helper; either way no output, no partial folder, no process."""
    side, how, message = FAILURES[case]
    real = bundle.write_bundle

    def write_bundle(model, out, *args, **kwargs):
        if out.name == side:
            how()
        return real(model, out, *args, **kwargs)

    monkeypatch.setattr(bundle, "write_bundle", write_bundle)
    with pytest.raises(ExportError, match=message):
        export_bundles(ckpt / "ck", tmp_path / "out", TARGETS, SETTINGS, jobs=2)
    assert no_children_left()
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_how_many_at_once():
    from pipeline.config import preset

    cfg = preset("qwen3-0.6b")
    assert bundles_at_once(cfg, TARGETS, SETTINGS, True, jobs=1) == 1
    assert bundles_at_once(cfg.replace(memory="none"), TARGETS, SETTINGS, True, jobs=2) == 1  # no MeKi: one bundle
    assert bundles_at_once(cfg, TARGETS, SETTINGS, True, jobs=None, available=64 << 30) in (1, 2)  # by the cores
    assert bundles_at_once(cfg, TARGETS, SETTINGS, True, jobs=2, available=64 << 30) == 2
    assert bundles_at_once(cfg, TARGETS, SETTINGS, True, jobs=None, available=4 << 30) == 1
    with pytest.raises(ExportError, match=r"both bundles at once needs about .* GiB, 4.0 GiB is available; "
                                          r"instead: --jobs 1"):
        bundles_at_once(cfg, TARGETS, SETTINGS, True, jobs=2, available=4 << 30)


def test_pss_counts_a_forked_childs_shared_pages_once():
    import time

    from pipeline.profile import tree_pss_kib, tree_rss_kib

    buf = bytearray(256 << 20)
    buf[::4096] = b"\x01" * len(range(0, len(buf), 4096))  # every page touched: 256 MiB resident
    pid = os.fork()
    if pid == 0:  # shares buf copy-on-write, never writes it
        time.sleep(30)
        os._exit(0)
    try:
        time.sleep(0.2)
        rss, pss = tree_rss_kib(), tree_pss_kib([os.getpid(), pid])
        assert rss - pss > 200 << 10  # RSS counts the 256 MiB in both processes, Pss once
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    del buf
