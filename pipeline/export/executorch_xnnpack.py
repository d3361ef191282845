"""ExecuTorch + XNNPACK (CPU; runs here): one .pte with `prefill` and `decode` methods sharing the KV cache.

The cache stays inside the program as mutable buffers (share_mutable_buffers makes both methods
see the same memory); prefill takes 1..prefill_len tokens (dynamic), decode exactly one: by default decode
is a second entry point to the program lowered for prefill (one lowering; --decode-program own lowers a
static T = 1 decode of its own). Attention
goes through ExecuTorch's llama::update_cache / custom_sdpa kernels (in-place cache, GQA without
head expansion) and the layers are rewritten so XNNPACK takes them whole (custom_attention.py,
fused_layers.py); the manifest names the kernels the runtime must register.
"""

from __future__ import annotations

from pathlib import Path

from contract.manifest import Backbone
from pipeline.export.common import lower_shared_cache
from pipeline.export.quantize import EXECUTORCH_QUANTS
from pipeline.export.registry import ExportSettings, register_target
from pipeline.model import MekiModel


@register_target("executorch-xnnpack", "ExecuTorch, XNNPACK CPU delegate (runs here)", "executorch",
                 ("executorch", "torchao"), EXECUTORCH_QUANTS, decode_program="prefill")
def export_xnnpack(model: MekiModel, out_dir: Path, settings: ExportSettings) -> Backbone:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return lower_shared_cache(model, out_dir / "model_xnnpack.pte", settings, [XnnpackPartitioner()],
                              "executorch-xnnpack", llama_ops=True)
