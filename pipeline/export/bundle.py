"""`meki export`: a checkpoint -> bundles (MeKi and its dense baseline), one folder each with manifest.json.

out/meki/   manifest.json, config.json, tables.mekipack, tokenizer.json, one backbone file per target
out/dense/  the same backbone without the MeKi branch and input: the speed baseline
"""

from __future__ import annotations

import datetime
import importlib.metadata
import shutil
from pathlib import Path

import torch

from tqdm import tqdm

from contract.manifest import Manifest, PackRef, TokenizerRef, load_manifest, write_manifest
from pipeline.checkpoint import CheckpointError, load_checkpoint, materialize_buffers, read_config
from pipeline.config import ModelConfig
from pipeline.export.registry import ExportSettings, get_target
from pipeline.fold import fold_checkpoint
from contract.atomic import atomic_dir, check_free
from pipeline.model import MekiModel
from pipeline.export.forked import forked
from pipeline.export.memory import bundles_at_once, check_memory
from pipeline.export.coreml_quant import CoreMLQuantizer
from pipeline.export.eager_quant import LayerFuser
from pipeline.export.fused_layers import FusedDecoderLayer, is_fused
from pipeline.export.quantize import EAGER_QUANT_TARGETS, quantized_as
from pipeline.profile import release, stage

EOS_CANDIDATES = ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>")
TOOLS = ("torch", "executorch", "torchao", "coremltools", "ai-edge-litert", "litert-torch")


def tokenizer_ref(path: Path | None, bundle: Path) -> TokenizerRef | None:
    if path is None:
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    eos = [i for i in (tok.token_to_id(t) for t in EOS_CANDIDATES) if i is not None]
    shutil.copyfile(path, bundle / "tokenizer.json")
    return TokenizerRef("tokenizer.json", eos)


def dense_baseline(model: MekiModel, fused: list[FusedDecoderLayer] | None = None) -> MekiModel:
    """The same backbone without the MeKi branch: the graph whose speed MeKi must match.

    It shares the backbone's modules (and so its weights, quantised or not) with `model`: no copy.
    fused: a model fused as it loaded has no plain layers to share; these are its dense layers
    (LayerFuser.dense_layers)."""
    if is_fused(model) != (fused is not None):
        raise ValueError("dense layers (LayerFuser.dense_layers) go with a model fused as it loaded, and only with one")
    cfg = model.cfg.replace(memory="none", folded=False, name=f"{model.cfg.name}-dense")
    with torch.device("meta"):
        dense = MekiModel(cfg)
    dense.embed, dense.norm, dense.lm_head = model.embed, model.norm, model.lm_head
    if fused is not None:
        dense.layers = torch.nn.ModuleList(fused)
    for mine, theirs in zip(dense.layers if fused is None else [], model.layers):
        mine.attn_norm, mine.attn, mine.ffn_norm, mine.ffn = theirs.attn_norm, theirs.attn, theirs.ffn_norm, theirs.ffn
    dense.meki_quant = quantized_as(model)
    return materialize_buffers(dense).eval()


def eager_quantizer(targets: list[str], settings: ExportSettings) -> LayerFuser | CoreMLQuantizer | None:
    """Quantise each layer while loading when every target quantises the same way: with
    quantize_weights (fused first, eager_quant.py) or with Core ML's int4 (coreml_quant.py). The fp32
    model never exists whole and both bundles, both methods, share one set of quantised weights."""
    if settings.quant == "none":
        return None
    if all(t in EAGER_QUANT_TARGETS for t in targets):
        return LayerFuser(settings.quant)
    if set(targets) == {"coreml"} and settings.quant == "int4":
        return CoreMLQuantizer()
    return None


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def write_bundle(model: MekiModel, out: Path, targets: list[str], settings: ExportSettings, fingerprint: str,
                 tokenizer: Path | None, pack: Path | None, overwrite: bool, source: str) -> Manifest:
    # source: the checkpoint folder's name only; no host path goes into a manifest (the fingerprint identifies it)
    """Export `model` for every target into one bundle folder (atomic) and write its manifest."""
    cfg: ModelConfig = model.cfg
    with atomic_dir(out, overwrite) as tmp:
        cfg.save(tmp / "config.json")
        tok = tokenizer_ref(tokenizer, tmp)
        pack_ref = None
        if pack is not None:
            from mobile_runtime.pack import MemoryPack

            shutil.copyfile(pack, tmp / "tables.mekipack")
            with MemoryPack.open(tmp / "tables.mekipack", expected_fingerprint=fingerprint) as p:
                pack_ref = PackRef("tables.mekipack", p.dtype, p.layout, p.vocab_size, p.num_layers, p.d_mem, p.fingerprint)
        backbones = []
        for t in tqdm(targets, desc=f"export {out.name}", unit="target"):
            with stage(t):
                made = get_target(t).export(model, tmp, settings)
            backbones += made if isinstance(made, list) else [made]  # NPU targets: one per SoC
            release()  # the programs of this target are garbage now; the next one starts low
        manifest = Manifest(name=cfg.name, fingerprint=fingerprint, memory=cfg.memory, config=cfg.to_dict(),
                            tokenizer=tok, memory_pack=pack_ref, backbones=backbones,
                            export={"settings": settings.__dict__, "targets": targets, "source": {"name": source},
                                    "tools": tool_versions(),
                                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        write_manifest(tmp, manifest)
    return manifest


def export_bundles(src: Path, out: Path, targets: list[str], settings: ExportSettings, pack_dtype: str = "int8",
                   tokenizer: Path | None = None, baseline: Path | None = None,
                   overwrite: bool = False, jobs: int | None = None) -> dict[str, Manifest]:
    """Fold (if needed), pack and lower `src`; also the dense baseline (from `baseline` or derived).

    `out/meki` and `out/dense` are built in one temporary sibling of `out` (the fold too) and renamed
    into place once: after a crash or kill there is either the whole old `out` or the whole new one.
    jobs: 2 writes the dense bundle in a forked process beside the MeKi one, 1 after it; None picks 2
    when there are two cores and memory for both (memory.bundles_at_once)."""
    for t in targets:
        get_target(t).ensure_available(settings)
    out, src = Path(out), Path(src)
    check_free(out, overwrite)
    tokenizer = tokenizer or (src / "tokenizer.json" if (src / "tokenizer.json").exists() else None)
    results = {}
    if baseline is not None:  # before anything is built: a pair over two vocabularies compares nothing
        cfg, _ = read_config(src)
        base_cfg, _ = read_config(baseline)
        if base_cfg.vocab_size != cfg.vocab_size:
            raise CheckpointError(f"--baseline {baseline} has a vocabulary of {base_cfg.vocab_size} tokens and {src} "
                                  f"{cfg.vocab_size}: a MeKi/dense pair must share its tokenizer")
    with atomic_dir(out, overwrite) as tmp:
        cfg, info = read_config(src)
        folded_dir = src
        if cfg.has_meki and not cfg.folded:
            folded_dir = tmp / ".folded"
            with stage("fold"):
                fold_checkpoint(src, folded_dir, pack_dtype=pack_dtype)
        elif cfg.has_meki and str(info.tables).endswith(".safetensors"):
            raise CheckpointError(f"{src}: folded with safetensors tables; export from the train-form checkpoint "
                                  "or fold with --pack")
        prepare = eager_quantizer(targets, settings)
        check_memory(cfg, targets, settings, eager_quant=prepare is not None)  # before a stage runs out of it
        at_once = bundles_at_once(cfg, targets, settings, prepare is not None, jobs, baseline is not None)

        def write_dense(dense: MekiModel, fingerprint: str) -> Manifest:
            with stage("bundle dense"):
                return write_bundle(dense.eval(), tmp / "dense", targets, settings, fingerprint, tokenizer,
                                    None, False, Path(baseline or src).name)

        def load_baseline() -> tuple[MekiModel, str]:
            dense, dense_info = load_checkpoint(baseline, prepare=eager_quantizer(targets, settings))
            return dense, dense_info.fingerprint

        def write_meki(model: MekiModel) -> None:  # info: the loaded checkpoint's
            with stage("bundle meki"):
                results["meki"] = write_bundle(model.eval(), tmp / "meki", targets, settings, info.fingerprint,
                                               tokenizer, folded_dir / info.tables, False, src.name)

        if at_once == 2 and baseline is not None:  # the helper loads the baseline itself, from the start
            with forked(lambda: write_dense(*load_baseline()), "the dense bundle", tmp / ".dense-report.json"):
                with stage("load"):
                    model, info = load_checkpoint(folded_dir, prepare=prepare)
                write_meki(model)
        else:
            with stage("load"):
                model, info = load_checkpoint(folded_dir, prepare=prepare)
            if at_once == 2:  # derived from the loaded model and forked: both bundles share its weights
                with stage("dense baseline"):
                    dense = dense_baseline(model, None if prepare is None else prepare.dense_layers)
                with forked(lambda: write_dense(dense, info.fingerprint), "the dense bundle",
                            tmp / ".dense-report.json"):
                    write_meki(model)
            else:
                if model.cfg.has_meki:
                    write_meki(model)
                if baseline is None:
                    with stage("dense baseline"):
                        fused = None if prepare is None else prepare.dense_layers  # made while loading
                        dense, dense_fp = dense_baseline(model, fused), info.fingerprint
                del model, prepare
                release()
                if baseline is not None:  # loaded only once the MeKi model is gone
                    dense, dense_fp = load_baseline()
                results["dense"] = write_dense(dense, dense_fp)
        if "dense" not in results:
            results["dense"] = load_manifest(tmp / "dense")
        if folded_dir != src:
            shutil.rmtree(folded_dir)
    return results
