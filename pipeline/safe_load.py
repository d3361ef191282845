"""torch.load without executing arbitrary pickles: weights_only=True plus a short, named allow-list.

Real training checkpoints hold more than tensors: Megatron's `model_optim_rng.pt` has numpy's RNG
state (numpy arrays and dtypes) and `args`, an argparse.Namespace holding Megatron enums
(`AttnBackend.auto`, ...). Numpy arrays are rebuilt by numpy's own pickle support (data, shape and
dtype only); Megatron enums, whose module is not installed here, become inert `StandInEnum`s that
only record their class name and value. Any other global is refused before anything is unpickled,
with its name in the error.
"""

from __future__ import annotations

import argparse
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from contract.inputs import require_file

# Megatron enums that appear in saved `args` (megatron.core.enums / megatron.core.transformer.enums)
MEGATRON_ENUMS = ("AttnBackend", "AttnMaskType", "AttnType", "ModelType", "Fp8Recipe", "CudaGraphScope",
                  "LayerType")


class SafeLoadError(pickle.UnpicklingError):
    """A checkpoint that needs code we do not allow to run at load time."""


class StandInEnum:
    """Stands in for an enum member of a package that is not installed: keeps the name and value."""

    enum_name = "?"

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<{self.enum_name} {self.value!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StandInEnum) and (other.enum_name, other.value) == (self.enum_name, self.value)

    def __hash__(self) -> int:
        return hash((self.enum_name, self.value))


def _stand_in(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[1], (StandInEnum,), {"enum_name": qualified})


def _numpy_global(name: str) -> Any | None:
    """numpy's array/dtype/scalar rebuilders (numpy 1.x writes numpy.core, 2.x numpy._core)."""
    module, _, attr = name.rpartition(".")
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and attr in ("_reconstruct", "scalar"):
        return getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, attr)
    if name in ("numpy.ndarray", "numpy.dtype"):
        return getattr(np, attr)
    if module == "numpy.dtypes" and attr.endswith("DType"):
        cls = getattr(np.dtypes, attr, None)
        # numeric dtypes only: no object/void dtypes, whose rebuild could reach arbitrary classes
        if cls is not None and np.dtype(cls.type).kind in "biufc":
            return cls
    return None


def _numeric_dtype_classes() -> list[type]:
    return [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]


def _megatron_global(name: str) -> type | None:
    module, _, attr = name.rpartition(".")
    if module.startswith("megatron.") and module.endswith(".enums") and attr in MEGATRON_ENUMS:
        return _stand_in(name)
    return None


def _bytes_global(name: str) -> Any | None:
    # Transformer Engine's `_extra_state` is an io.BytesIO in older releases: a plain byte buffer
    return io.BytesIO if name == "_io.BytesIO" else None


ALLOW: tuple[Callable[[str], Any | None], ...] = (_numpy_global, _megatron_global, _bytes_global)


def allowed_globals(file: Path, extra: dict[str, Any] | None = None) -> list[Any]:
    """The (object, name) pairs `file` needs beyond torch's defaults; SafeLoadError naming any other."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
    except Exception as exc:  # not a torch zip archive, or a damaged one
        why = " ".join(str(exc).split())[:200]
        raise SafeLoadError(f"{file}: not a readable torch.save checkpoint ({why})") from None
    pairs, refused = [], []
    for name in needed:
        if extra and name in extra:
            pairs.append((extra[name], name))
            continue
        obj = next((o for o in (rule(name) for rule in ALLOW) if o is not None), None)
        if obj is None:
            refused.append(name)
        else:
            pairs.append((obj, name))
    if "numpy.dtype" in needed:  # a dtype is rebuilt by BUILD on its class (numpy.dtypes.UInt32DType, ...)
        pairs += [(cls, f"numpy.dtypes.{cls.__name__}") for cls in _numeric_dtype_classes()]
    if refused:
        raise SafeLoadError(f"{file}: refusing to unpickle {', '.join(sorted(refused))} (only tensors, plain data, "
                            "numpy arrays, argparse.Namespace and Megatron enums are allowed; a pickle can run "
                            "code): re-save it with plain types")
    return pairs


def check_crcs(file: Path) -> None:
    """torch.load does not check the zip archive's CRC-32s: a file damaged in the middle (a bad copy, a
    disk error) would load as different weights. Every member is read and checked first."""
    if not zipfile.is_zipfile(file):
        return  # not an archive at all: allowed_globals says so in its own words
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise SafeLoadError(f"{file}: damaged archive ({' '.join(str(exc).split())[:200]})") from None
    if bad is not None:
        raise SafeLoadError(f"{file}: damaged: {bad} fails its CRC-32 check (a corrupted or partly copied file); "
                            "copy the checkpoint again")


def _why(exc: Exception) -> str:
    """torch's refusal names the offending global after a paragraph of advice: keep the useful line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if any(w in ln for w in ("GLOBAL", "Unsupported", "not an allowed", "Can only"))]
    return " ".join((useful or lines[-1:])[:2])[:300]


def safe_torch_load(file: Path, map_location: Any = "cpu", extra: dict[str, Any] | None = None) -> Any:
    """torch.load(weights_only=True) with the allow-list above (plus `extra`: name -> object)."""
    file = require_file(Path(file), "checkpoint file")
    check_crcs(file)
    pairs = allowed_globals(file, {"argparse.Namespace": argparse.Namespace, **(extra or {})})
    with torch.serialization.safe_globals(pairs):
        try:
            return torch.load(file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise SafeLoadError(f"{file}: {_why(exc)}") from None
        except RuntimeError as exc:
            raise SafeLoadError(f"{file}: cannot be read ({' '.join(str(exc).split())[:200]})") from None
