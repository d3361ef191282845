"""Silence third-party chatter we understand, so `meki` prints its stages, tables and errors only.

Each entry says why it is safe to drop. Our own warnings are fixed at their source, never filtered.
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger, why): messages these loggers emit on every export and that change nothing for the user
LOGGERS = (
    ("torchao", "optional CUDA kernels (mxfp8, cutlass) absent on CPU builds: 'Failed to load ...'"),
    ("torch.utils._pytree", "torchao registers an Enum as a pytree constant (a deprecation inside torchao)"),
    ("torch._export", "torch.export's notes on non-strict tracing of our step modules"),
    ("executorch", "per-partition INFO lines from the XNNPACK/Core ML partitioners"),
    ("coremltools", "converter progress and 'Torch version 2.13 has not been tested' notices"),
)
# (category, message regex, why)
WARNINGS = (
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\).*", "torch's own pytree deprecation, hit when programs are copied"),
    (FutureWarning, r"_check_is_size will be removed", "ExecuTorch's llama custom ops call the deprecated check"),
    (UserWarning, r"Raw SymInt value", "torch.fx note while ExecuTorch re-traces dynamic-T programs"),
    (UserWarning, r"Mutation on a buffer in the model is detected",
     "the KV cache: shared caches get InitializedMutableBufferPass; a delegate that owns it zero-fills it"),
    (UserWarning, r"Input, '.*', of the source model, has been renamed",
     "coremltools renames the cache states (dots to underscores); the spec check reads the new names"),
    (DeprecationWarning, r".*", "deprecations inside third-party packages; ours are kept (module filter below)"),
)


def quiet_third_party() -> None:
    """Apply the filters above (idempotent). Set MEKI_VERBOSE=1 to see everything."""
    if os.environ.get("MEKI_VERBOSE"):
        return
    for name, _why in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, message, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # our own packages' deprecations stay visible
    for ours in ("contract", "pipeline", "training", "meki", "mobile_runtime", "device_tests"):
        warnings.filterwarnings("default", category=DeprecationWarning, module=ours)
