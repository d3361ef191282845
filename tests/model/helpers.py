"""Small models shared by the tests (fake preset: 2 layers, vocab 128; nothing downloaded)."""

import torch

from pipeline.config import fake
from pipeline.model import MekiModel, init_weights

TOKENS = torch.tensor([[3, 17, 99, 5, 64, 127, 0, 42, 8, 8]])


def random_model(**changes) -> MekiModel:
    """Large random weights (std 0.2), non-trivial scalars and norms: folding is really tested."""
    torch.manual_seed(0)
    model = init_weights(MekiModel(fake().replace(**changes)), seed=1, std=0.2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.fill_(0.7 if name.endswith("alpha") else 1.3)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def trained_like_model() -> MekiModel:
    """Weights at the scale training leaves them (std 0.02): int4 weights on a std-0.2 random net
    give 6 dB SNR and meaningless greedy tokens, which would test nothing."""
    model = init_weights(MekiModel(fake()), seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model
