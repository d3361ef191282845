import pytest
import torch

from pipeline.checkpoint import save_checkpoint
from pipeline.export.bundle import export_bundles
from pipeline.export.registry import ExportSettings
from tests.model.helpers import trained_like_model

torch.set_num_threads(2)


@pytest.fixture(scope="session", params=["none", "8da4w", "int8wo"])
def bundles(request, tmp_path_factory):
    """executorch-xnnpack meki/ + dense/ bundles of the fake preset, exported once per session."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    save_checkpoint(trained_like_model(), root / "ck")
    settings = ExportSettings(quant=request.param, max_seq_len=64, prefill_len=8)
    export_bundles(root / "ck", root / "out", ["executorch-xnnpack"], settings, pack_dtype="fp16")
    return root / "out", request.param
