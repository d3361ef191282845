import pytest
import torch
from filelock import FileLock

from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from tests.model.helpers import trained_like_model

torch.set_num_threads(2)


@pytest.fixture(scope="session", params=["none", "8da4w", "int8wo"])
def bundles(request, tmp_path_factory):
    """executorch-xnnpack meki/ + dense/ bundles of the fake preset, exported once per test run: under
    pytest-xdist the workers share one copy (the first to need it exports it, the others wait on a lock)."""
    shared = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: its basetemp is <run>/popen-gwN
        shared = shared.parent
    root = shared / f"export-{request.param}"
    with FileLock(str(root) + ".lock"):
        if not (root / "out").is_dir():  # export_bundles renames OUT into place whole, or not at all
            save_checkpoint(trained_like_model(), root / "ck", overwrite=True)
            settings = ExportSettings(quant=request.param, max_seq_len=64, prefill_len=8)
            export_bundles(root / "ck", root / "out", ["executorch-xnnpack"], settings, pack_dtype="fp16")
    return root / "out", request.param
