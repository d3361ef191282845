"""The `meki` command: one verb per stage; each verb parses its flags and calls one typed function."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console

from contract.inputs import fraction, nonneg_int, positive_int
from meki.quiet import quiet_third_party

console = Console(stderr=True)

Verb = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="checkpoint folder to create")
    p.add_argument("--preset", default="tiny", help="model shape (fake, tiny, qwen3-0.6b, qwen3-1.7b, qwen3-4b)")
    p.add_argument("--memory", default=None, help="both | static | dynamic | none (dense)")
    p.add_argument("--variant", default=None, help="paper | megatron")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--overwrite", action="store_true")


def _run_init(a: argparse.Namespace) -> int:
    from pipeline.checkpoint import save_checkpoint
    from pipeline.config import preset
    from pipeline.model import MekiModel, init_weights

    cfg = preset(a.preset)
    changes = {k: v for k, v in (("memory", a.memory), ("variant", a.variant)) if v is not None}
    info = save_checkpoint(init_weights(MekiModel(cfg.replace(**changes)), seed=a.seed), a.out, "random",
                           overwrite=a.overwrite)
    console.print(f"wrote {a.out} (fingerprint {info.fingerprint})")
    return 0


def _add_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["hf", "megatron"], help="source format")
    p.add_argument("src", type=Path, help="HF folder, or Megatron checkpoint dir / model_optim_rng.pt")
    p.add_argument("out", type=Path, help="checkpoint folder to create")
    p.add_argument("--vocab-size", type=positive_int, help="tokenizer vocabulary (Megatron pads its own)")
    p.add_argument("--mekify", type=positive_int, metavar="D_MEM", help="add MeKi branches of this width to a dense model")
    p.add_argument("--overwrite", action="store_true")


def _run_import(a: argparse.Namespace) -> int:
    from pipeline.checkpoint import save_checkpoint

    if a.kind == "hf":
        from pipeline.importers.hf_qwen3 import load_hf_qwen3
        model = load_hf_qwen3(a.src)
    else:
        from pipeline.importers.megatron import load_megatron
        if a.vocab_size is None:
            from pipeline.config import ConfigError

            raise ConfigError("--vocab-size (the tokenizer's, unpadded) is required for megatron imports")
        model = load_megatron(a.src, a.vocab_size)
    if a.mekify:
        from pipeline.importers.mekify import mekify
        model = mekify(model, a.mekify)
    info = save_checkpoint(model, a.out, a.kind + ("+mekify" if a.mekify else ""), overwrite=a.overwrite)
    console.print(f"wrote {a.out} ({model.cfg.num_layers} layers, memory={model.cfg.memory}, "
                  f"fingerprint {info.fingerprint})")
    return 0


def _add_fold(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="train-form checkpoint folder")
    p.add_argument("out", type=Path, help="folded checkpoint folder to create")
    p.add_argument("--chunk-size", type=positive_int, default=4096, help="vocabulary rows per streamed chunk")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pack", metavar="DTYPE", help="write a memory pack (fp16|bf16|int8|int4) instead of fp32 safetensors")
    p.add_argument("--overwrite", action="store_true")


def _run_fold(a: argparse.Namespace) -> int:
    from pipeline.fold import fold_checkpoint

    info = fold_checkpoint(a.src, a.out, a.chunk_size, a.device, overwrite=a.overwrite, pack_dtype=a.pack)
    console.print(f"wrote {a.out}: backbone + {info.tables} (fingerprint {info.fingerprint})")
    return 0


def _add_pack(p: argparse.ArgumentParser) -> None:
    p.add_argument("tables", type=Path, help="tables.safetensors of a folded checkpoint")
    p.add_argument("out", type=Path, help="memory pack to write (.mekipack)")
    p.add_argument("--dtype", default="int8", help="fp16 | bf16 | int8 | int4")
    p.add_argument("--group-size", type=positive_int, default=32, help="int4 group size along d_mem")
    p.add_argument("--overwrite", action="store_true")


def _run_pack(a: argparse.Namespace) -> int:
    from pipeline.pack_writer import pack_tables_file

    pack_tables_file(a.tables, a.out, dtype=a.dtype, group_size=a.group_size, overwrite=a.overwrite)
    console.print(f"wrote {a.out}")
    return 0


def _add_verify_pack(p: argparse.ArgumentParser) -> None:
    p.add_argument("pack", type=Path)
    p.add_argument("--fingerprint", type=_fingerprint, help="refuse a pack folded from another model (32 hex digits)")


def _fingerprint(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a model fingerprint (32 lowercase hex digits)")
    return text


def _run_verify_pack(a: argparse.Namespace) -> int:
    from contract.inputs import require_file
    from mobile_runtime.pack import verify_pack

    require_file(a.pack, "memory pack")
    report = verify_pack(a.pack, a.fingerprint)
    console.print(report)
    if not report.ok:  # the check ran and failed: exit 1, and the reason as the last line
        print(f"meki verify-pack: error: {a.pack}: {' '.join(str(report.error).split())}", file=sys.stderr)
    return 0 if report.ok else 1


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("ckpt", type=Path, help="checkpoint folder (train form is folded on the way)")
    p.add_argument("--target", action="append", required=True, help="repeatable; see `meki targets`")
    p.add_argument("--quant", default="none", help="weight quantisation (per target: none, 8da4w, int8wo, ...)")
    p.add_argument("--out", type=Path, required=True, help="folder for the meki/ and dense/ bundles")
    p.add_argument("--pack-dtype", default="int8", help="memory pack values: fp16 | bf16 | int8 | int4")
    p.add_argument("--max-seq-len", type=positive_int, default=512, help="KV cache length")
    p.add_argument("--prefill-len", type=positive_int, default=32, help="tokens per prefill call")
    p.add_argument("--calibration", help="tflite-qnn w8a16/w4a16: a `meki data` folder (val.bin) or a text "
                   "file to calibrate activations on (default: the repo's docs)")
    p.add_argument("--soc", action="append", default=[], help="NPU targets: SoC to compile for (repeatable; "
                   "see `meki targets`)")
    p.add_argument("--decode-program", choices=("own", "prefill"), help="targets with prefill and decode methods: "
                   "prefill (XNNPACK's default): decode runs on the program lowered for prefill, one lowering; own: "
                   "decode lowered for one token on its own (NPU delegates' default)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the checkpoint's, if any)")
    p.add_argument("--baseline", type=Path, help="dense checkpoint for the baseline bundle (default: strip MeKi)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--jobs", type=int, choices=(1, 2), help="2: write the dense bundle in a second process beside "
                   "the MeKi one (about twice the lowering memory); 1: one after the other; default: 2 when two "
                   "cores and the memory for both are free")
    p.add_argument("--profile", action="store_true", help="print wall time and peak RSS per export stage")


def _run_export(a: argparse.Namespace) -> int:
    import contextlib

    from pipeline.export.bundle import export_bundles
    from pipeline.export.registry import ExportSettings
    from pipeline.profile import StageProfiler

    if a.tokenizer is not None:
        from contract.inputs import require_file

        require_file(a.tokenizer, "tokenizer.json")
    settings = ExportSettings(quant=a.quant, max_seq_len=a.max_seq_len, prefill_len=a.prefill_len,
                              socs=tuple(a.soc), calibration=a.calibration, decode_program=a.decode_program)
    prof = StageProfiler() if a.profile else None
    with prof or contextlib.nullcontext():
        bundles = export_bundles(a.ckpt, a.out, a.target, settings, a.pack_dtype, a.tokenizer, a.baseline,
                                 a.overwrite, a.jobs)
    if prof is not None:
        console.print(prof.table(), markup=False, highlight=False)
    for kind, m in bundles.items():
        delegated = {b.target: b.delegated for b in m.backbones}
        console.print(f"wrote {a.out / kind}: {', '.join(b.target for b in m.backbones)}; delegated {delegated}")
    return 0


def _add_targets(p: argparse.ArgumentParser) -> None:
    pass


def _run_targets(a: argparse.Namespace) -> int:
    from pipeline.export.registry import load_backends

    for t in load_backends().values():
        console.print(f"{t.name:24s} quants: {', '.join(t.quants):22s} extra: {t.extra:11s} {t.summary}")
        if t.socs is not None:
            console.print(f"{'':24s} SoCs: {', '.join(t.socs()) or '(ai-edge-litert not installed)'}")
    return 0


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", type=Path, nargs="+", help="bundle folders (each with manifest.json)")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="the checkpoint the bundles were exported from (its fingerprint is checked)")
    p.add_argument("--steps", type=positive_int, default=32, help="greedy decode steps compared")


def _run_verify(a: argparse.Namespace) -> int:
    from rich.table import Table

    from pipeline.export.verify import verify_bundle_artifacts

    from contract.inputs import require_bundle

    for b in a.bundles:
        require_bundle(b)
    rows = [r for b in a.bundles for r in verify_bundle_artifacts(b, a.checkpoint, a.steps)]
    table = Table(title="meki verify")
    for col in ("bundle", "target", "quant", "status", "max |diff|", "SNR dB", "greedy", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.bundle, r.target, r.quant, r.status, f"{r.max_abs_diff:.2e}", f"{r.snr_db:.1f}",
                      str(r.greedy_match), r.note)
    Console().print(table)
    return 0 if all(r.status != "fail" for r in rows) else 1


def _add_run(p: argparse.ArgumentParser) -> None:
    from mobile_runtime.run import add_run_args

    add_run_args(p)


def _run_run(a: argparse.Namespace) -> int:
    from mobile_runtime.run import run

    return run(a)


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="folder for corpus, tokenizer.json, train.bin, val.bin, meta.json")
    p.add_argument("--source", type=Path, action="append", help="document folders (default: training/get_corpus.sh's)")
    p.add_argument("--vocab-size", type=positive_int, default=8192)
    p.add_argument("--val-fraction", type=fraction, default=0.02)
    p.add_argument("--max-train-tokens", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def _run_data(a: argparse.Namespace) -> int:
    from training.data import prepare_data

    meta = prepare_data(a.out, a.source, a.vocab_size, a.val_fraction, a.seed, a.max_train_tokens, a.overwrite)
    console.print(f"wrote {a.out}: {meta}")
    return 0


def _add_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder (manifest.json)")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--android", type=Path, metavar="APP_DIR", help="the Gradle project (android_app)")
    dest.add_argument("--ios", type=Path, metavar="DIR", help="folder for the MekiAssets Swift package")
    p.add_argument("--delivery", default="install-time", help="Play Asset Delivery mode for large packs")
    p.add_argument("--overwrite", action="store_true")


def _run_bundle(a: argparse.Namespace) -> int:
    from contract.inputs import require_bundle
    from pipeline.bundle_apps import bundle_android, bundle_ios

    require_bundle(a.bundle)
    placed = (bundle_android(a.bundle, a.android, delivery=a.delivery, overwrite=a.overwrite) if a.android
              else bundle_ios(a.bundle, a.ios, overwrite=a.overwrite))
    console.print(placed)
    return 0


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="run folder: log.jsonl, last/model (checkpoint), last/state.pt")
    p.add_argument("--data", type=Path, required=True, help="folder from `meki data` (train.bin, val.bin, meta.json)")
    p.add_argument("--preset", default="tiny", help="model shape; vocab_size is taken from the data")
    p.add_argument("--model-config", type=Path, help="config.json instead of a preset")
    p.add_argument("--memory", help="both | static | dynamic | none")
    p.add_argument("--d-mem", type=positive_int)
    p.add_argument("--variant", help="paper | megatron")
    p.add_argument("--train-config", type=Path, help="JSON of TrainConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an earlier run")
    p.add_argument("--overwrite", action="store_true")


def _train_fields(a: argparse.Namespace) -> dict:
    """TrainConfig fields from --train-config JSON, then each --set KEY=VALUE (JSON value or bare string)."""
    import json

    from contract.inputs import read_text
    from pipeline.config import ConfigError

    try:
        fields = json.loads(read_text(a.train_config, "train config")) if a.train_config else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{a.train_config}: not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{a.train_config}: expected a JSON object of TrainConfig fields")
    for item in a.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=3e-4")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare string such as cuda
            fields[key] = value
    return fields


def _run_train(a: argparse.Namespace) -> int:
    from pipeline.config import ModelConfig, preset
    from pipeline.devices import resolve_device
    from training.data import DatasetMeta
    from training.train import TrainConfig, train

    tcfg = TrainConfig.from_dict(_train_fields(a))
    if tcfg.device is not None:
        resolve_device(tcfg.device)  # before reading any data
    cfg = ModelConfig.load(a.model_config) if a.model_config else preset(a.preset)
    changes = {"memory": a.memory, "d_mem": a.d_mem, "variant": a.variant}
    cfg = cfg.replace(vocab_size=DatasetMeta.load(a.data).vocab_size, **{k: v for k, v in changes.items() if v})
    result = train(cfg, tcfg, a.data, a.out, resume=not a.no_resume, overwrite=a.overwrite)
    console.print(f"step {result.step}: train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f}; "
                  f"checkpoint {result.checkpoint}")
    return 0


def _add_bench(p: argparse.ArgumentParser) -> None:
    from device_tests.cli import add_bench_args

    add_bench_args(p)


def _run_bench(a: argparse.Namespace) -> int:
    from device_tests.cli import run_bench_cli

    return run_bench_cli(a)


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", type=Path, nargs="+", help="bundle folders (from `meki export`)")
    p.add_argument("--data", type=Path, required=True, help="folder from `meki data` (val.bin, meta.json)")
    p.add_argument("--windows", type=int, default=32, help="validation windows, spread evenly over val.bin")
    p.add_argument("--window-len", type=int, default=128, help="tokens scored per window (<= the KV cache)")
    p.add_argument("--target", action="append", default=[], help="only these backbones (default: all that run here)")
    p.add_argument("--checkpoint", type=Path, action="append", default=None,
                   help="the checkpoint the bundles were exported from (one for all, or one per bundle); "
                   "without it only the artifacts are scored")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


def _run_eval(a: argparse.Namespace) -> int:
    from pipeline.evaluate import EvalConfig, evaluate_bundles, render_table, to_json

    cfg = EvalConfig(windows=a.windows, window_len=a.window_len, targets=tuple(a.target))
    results = evaluate_bundles(a.bundles, a.data, cfg, a.checkpoint)
    Console().print(render_table(results))
    if a.json is not None:
        a.json.write_text(to_json(results, a.data, cfg) + "\n")
        console.print(f"wrote {a.json}")
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything the demo makes")
    p.add_argument("--prompt", default="The function returns")
    p.add_argument("--new-tokens", type=positive_int, default=48, help="tokens of each model's text")
    p.add_argument("--reps", type=positive_int, default=5, help="measured runs of each model (128 tokens each)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's outputs")


def _run_demo(a: argparse.Namespace) -> int:
    from meki.demo import run_demo

    return run_demo(a.out, a.prompt, a.new_tokens, a.reps, a.overwrite)


VERBS: list[Verb] = [
    ("init", "create a randomly initialised checkpoint from a preset", _add_init, _run_init),
    ("import", "import a Hugging Face Qwen3 or Megatron MeKi checkpoint", _add_import, _run_import),
    ("fold", "fold the MeKi tables of a checkpoint (streamed, chunked)", _add_fold, _run_fold),
    ("pack", "pack folded tables into a read-only memory pack", _add_pack, _run_pack),
    ("verify-pack", "check every block of a memory pack", _add_verify_pack, _run_verify_pack),
    ("export", "lower a checkpoint to on-device bundles (MeKi + dense baseline)", _add_export, _run_export),
    ("targets", "list the export targets", _add_targets, _run_targets),
    ("verify", "compare every runnable artifact of a bundle with eager PyTorch", _add_verify, _run_verify),
    ("run", "generate text from a bundle (streams; --stats writes JSON)", _add_run, _run_run),
    ("bench", "benchmark MeKi vs dense on phones over adb (or locally)", _add_bench, _run_bench),
    ("bundle", "place a verified bundle into the Android or iOS build", _add_bundle, _run_bundle),
    ("data", "build the training corpus, tokenizer and token files", _add_data, _run_data),
    ("train", "train a model (single GPU, or DDP under torchrun)", _add_train, _run_train),
    ("eval", "held-out loss/perplexity through exported bundles, step by step", _add_eval, _run_eval),
    ("demo", "the main job on an embedded default, end to end", _add_demo, _run_demo),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meki", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, help_text, add, run in VERBS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; every error ends as one stderr line and an exit code from meki.errors."""
    from meki.errors import report

    quiet_third_party()
    args = build_parser().parse_args(argv)  # usage errors: argparse prints usage + one line, exit 2
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - describe() sorts user errors from bugs
        return report(args.verb, exc)


if __name__ == "__main__":
    sys.exit(main())
