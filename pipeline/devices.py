"""`--device` strings checked before any work: an unknown or absent device is one clear error."""

from __future__ import annotations

import torch

from pipeline.config import ConfigError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """torch.device for `name` (cpu, cuda, cuda:N, mps); ConfigError if it is malformed or not here."""
    if isinstance(name, torch.device):
        name = str(name)
    try:
        dev = torch.device(name or "cpu")
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}); use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {name!r}: there {'is' if count == 1 else 'are'} only {count} CUDA "
                              f"device(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available here; use cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev
