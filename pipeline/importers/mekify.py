"""MeKi-fy: give a dense model MeKi branches without changing a single logit at initialisation."""

from __future__ import annotations

import torch

from pipeline.model import MekiModel, init_weights


def mekify(dense: MekiModel, d_mem: int, memory: str = "both", variant: str = "paper", seed: int = 0,
           std: float = 0.02) -> MekiModel:
    """The new branches start random except the post-norm weight, which starts at zero: y = 0 exactly,
    while dL/d(post_norm.weight) = dL/dy * RMSNorm(W_out v) is non-zero, so training moves it off zero."""
    if dense.cfg.has_meki:
        raise ValueError(f"model already has MeKi branches (memory={dense.cfg.memory})")
    cfg = dense.cfg.replace(d_mem=d_mem, memory=memory, variant=variant, name=f"{dense.cfg.name}+meki")
    model = init_weights(MekiModel(cfg), seed=seed, std=std).to(dense.embed.weight.dtype)
    missing, unexpected = model.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(".memory." in k or ".fusion." in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        for layer in model.layers:
            layer.fusion.post_norm.weight.zero_()
    return model
