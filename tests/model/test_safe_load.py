"""Checkpoints real users have, read without executing pickles: Megatron's model_optim_rng.pt (numpy
RNG state, Megatron enums in args) and our own training state.pt; anything else is refused by name."""

import argparse
import enum
import io
import os
import pickle
import random
import sys
import types

import numpy as np
import pytest
import torch

from pipeline.checkpoint import CheckpointError
from pipeline.importers.megatron import load_megatron
from pipeline.safe_load import SafeLoadError, StandInEnum, safe_torch_load
from tests.model.test_importers import V, megatron_state, write_megatron


@pytest.fixture
def megatron_enums(monkeypatch):
    """Megatron's enum modules as the training job had them (here only while torch.save runs)."""
    enums = types.ModuleType("megatron.core.transformer.enums")
    core_enums = types.ModuleType("megatron.core.enums")

    class AttnBackend(enum.Enum):  # megatron/core/transformer/enums.py
        flash, fused, unfused, local, auto = 1, 2, 3, 4, 5

    class AttnMaskType(enum.Enum):
        padding, causal, no_mask = 1, 2, 3

    class ModelType(enum.Enum):  # megatron/core/enums.py
        encoder_or_decoder, retro_encoder, retro_decoder = 1, 2, 3

    for cls, mod in ((AttnBackend, enums), (AttnMaskType, enums), (ModelType, core_enums)):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    for name in ("megatron", "megatron.core"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, enums.__name__, enums)
    monkeypatch.setitem(sys.modules, core_enums.__name__, core_enums)
    return AttnBackend, AttnMaskType, ModelType


def megatron_blob(sd, enums):
    """Shaped like megatron/training/checkpointing.py's torch-format state dict (tensor-parallel 1)."""
    attn_backend, mask_type, model_type = enums
    np.random.seed(1234)
    rng_state = [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                  "torch_rng_state": torch.get_rng_state(), "cuda_rng_state": torch.zeros(16, dtype=torch.uint8),
                  "rng_tracker_states": {"model-parallel-rng": torch.zeros(16, dtype=torch.uint8)}}]
    args = argparse.Namespace(attention_backend=attn_backend.auto, attn_mask_type=mask_type.causal,
                              params_dtype=torch.bfloat16, model_type=model_type.encoder_or_decoder,
                              lr=3e-4, train_iters=1000, tokenizer_type="HuggingFaceTokenizer")
    sd = dict(sd)
    sd["decoder.layers.0.self_attention.linear_proj._extra_state"] = io.BytesIO(b"te-fp8-meta")  # older TE
    return {"args": args, "checkpoint_version": 3.0, "iteration": 10, "model": sd, "rng_state": rng_state,
            "optimizer": {"optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95)}]}},
            "opt_param_scheduler": {"num_steps": 10}, "num_floating_point_operations_so_far": 1.5e12}


def write_official(tmp_path, enums):
    write_megatron(tmp_path, megatron_state(), untie_embeddings_and_output_weights=False)
    file = tmp_path / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt"
    blob = torch.load(file, weights_only=False)  # our own fixture, just written
    blob = {**megatron_blob(blob["model"], enums), "args": argparse.Namespace(**vars(blob["args"]),
                                                                                **vars(megatron_blob({}, enums)["args"]))}
    torch.save(blob, file)
    return file


def test_the_fixture_is_what_plain_weights_only_refuses(tmp_path, megatron_enums):
    file = write_official(tmp_path, megatron_enums)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(file, weights_only=True)
    needed = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
    assert "megatron.core.transformer.enums.AttnBackend" in needed
    assert {"numpy.dtype", "numpy.ndarray"} <= needed or any("_reconstruct" in n for n in needed)


def test_megatron_official_file_imports(tmp_path, megatron_enums):
    file = write_official(tmp_path, megatron_enums)
    for name in ("megatron.core.transformer.enums", "megatron.core.enums", "megatron.core", "megatron"):
        sys.modules.pop(name)  # the importing machine has no Megatron installed
    blob = safe_torch_load(file)
    backend = blob["args"].attention_backend
    assert isinstance(backend, StandInEnum) and backend.value == 5
    assert backend.enum_name == "megatron.core.transformer.enums.AttnBackend"
    state = blob["rng_state"][0]["np_rng_state"]
    assert state[0] == "MT19937" and state[1].dtype == np.uint32 and state[1].shape == (624,)
    np.random.seed(1234)
    assert np.array_equal(state[1], np.random.get_state()[1])
    model = load_megatron(tmp_path, vocab_size=V)
    assert model.cfg.variant == "megatron" and model.cfg.num_layers == 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("payload, name", [(_Evil(), "system"), (types.SimpleNamespace(a=1), "types.SimpleNamespace"),
                                           (np.array([object()], dtype=object), "builtins.object")])
def test_anything_else_is_refused_by_name(tmp_path, payload, name):
    write_megatron(tmp_path, megatron_state())
    file = tmp_path / "iter_0000010" / "mp_rank_00" / "model_optim_rng.pt"
    blob = torch.load(file, weights_only=False)
    blob["args"].extra = payload
    torch.save(blob, file)
    with pytest.raises(SafeLoadError, match=name):
        safe_torch_load(file)
    with pytest.raises(CheckpointError, match=name):
        load_megatron(tmp_path, vocab_size=V)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(SafeLoadError, match="not a readable torch.save checkpoint"):
        safe_torch_load(tmp_path / "x.pt")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="FIFO"):
        safe_torch_load(tmp_path / "fifo")


def test_a_file_damaged_in_the_middle_is_refused(tmp_path):
    """torch.load does not check the archive's CRC-32s: zeroed bytes inside a weight would load as other
    weights. The member that fails its check is named."""
    file = tmp_path / "w.pt"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, file)
    assert torch.equal(safe_torch_load(file)["w"], torch.arange(4096, dtype=torch.float32))
    raw = bytearray(file.read_bytes())
    at = raw.index(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[4000:4016])
    raw[at:at + 16] = bytes(16)
    file.write_bytes(bytes(raw))
    with pytest.raises(SafeLoadError, match=r"w\.pt: damaged: w/data/0 fails its CRC-32 check"):
        safe_torch_load(file)
