"""Target `tflite-qnn`: the backbone AOT-compiled by LiteRT's Qualcomm plugin into QNN HTP context binaries.

Steps: litert-torch converts npu_graph.NpuStep (static prefill chunk and T=1 decode signatures, the
KV cache an input, each chunk's new k/v outputs) to a CPU .tflite (in .venv-litert, as the `tflite`
target does); LiteRT's `apply_plugin_main` runs the Qualcomm compiler plugin once per SoC, which
replaces each signature's ops by one CUSTOM DISPATCH_OP holding a QNN context binary.

Where the QNN libraries come from (NPU.md): PyPI's `onnxruntime-qnn` wheel carries QAIRT's x86_64
host libraries (libQnnHtp.so, libHtpPrepare.so, libQnnSystem.so, libQnnIr.so, libQnnSaver.so); the
plugin also links libQnnLpai.so, which no wheel ships: `make setup` builds an empty one
(scripts/setup_qnn.sh) into <venv>/lib/meki-qnn/. The same libQnnHtp.so runs the binaries on the
HTP simulator (mobile_runtime/qnn_sim.py), which is how `meki verify` and `meki run` check them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from contract.manifest import Backbone
from pipeline.export.child import run_child, scratch_dir
from pipeline.export.npu_graph import npu_signature_specs
from pipeline.export.qnn_quant import QNN_QUANTS, RANGE_MARGIN, CalibConfig, Feeds, calibration_tokens, layer_snr, step_feeds
from pipeline.export.registry import ExportError, ExportSettings, register_target
from pipeline.export.litert import convert, converter_missing, litert_python, tflite_facts
from pipeline.model import MekiModel

QNN_PACKAGE = "onnxruntime-qnn"  # the PyPI wheel that carries the QAIRT host libraries
QNN_HOST_LIBS = ("libQnnHtp.so", "libHtpPrepare.so", "libQnnIr.so", "libQnnSaver.so", "libQnnSystem.so")
STUB_LIB = "libQnnLpai.so"  # linked by the plugin, in no wheel: an empty one from scripts/setup_qnn.sh
STUB_DIR_ENV = "MEKI_QNN_STUB_DIR"
DEFAULT_SOCS = ("SM8750",)
QUANT_KINDS = {"none": "fp16 (fp32 graph, the HTP computes in fp16)",
               "w8a16": "int8 per-channel weights, int16 static activations (ai-edge-quantizer)",
               "w4a16": "int4 per-channel weights, int16 static activations (ai-edge-quantizer)"}
_PARTITIONED = re.compile(r"Partitioned subgraph<(\d+)>, selected (\d+) ops, from a total of (\d+) ops\. "
                          r"resulted in (\d+) partitions")
_UNSUPPORTED = re.compile(r"LiteRT Op #\d+ '(\w+)' \(code=\d+\) is not supported")
_SDK_VERSION = re.compile(r"Applying plugin with SDK version: (\S+)")
_SKEW = re.compile(r"(Qnn [\w ]*version [\d.]+ is used\. The version LiteRT using is [\d.]+)")


def qnn_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("onnxruntime_qnn")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def stub_dir() -> Path:
    return Path(os.environ.get(STUB_DIR_ENV) or Path(sys.prefix) / "lib" / "meki-qnn")


def known_socs() -> tuple[str, ...]:
    """The SoCs LiteRT's Qualcomm plugin compiles for (its SocModel enum)."""
    try:
        from ai_edge_litert.aot.vendors.qualcomm.target import SocModel
    except ImportError:
        return ()
    return tuple(s.value for s in SocModel if s.value != "ALL")


def _plugin_paths() -> tuple[Path, Path] | None:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).parent
    return root / "tools" / "apply_plugin_main", root / "vendors" / "qualcomm" / "compiler"


def qnn_sdk_missing() -> str | None:
    """What the QNN compile needs and this machine lacks (one line), or None."""
    problems = [p for p in (converter_missing(),) if p]
    paths = _plugin_paths()
    if paths is None or not paths[0].is_file() or not (paths[1] / "libLiteRtCompilerPlugin_Qualcomm.so").is_file():
        problems.append("LiteRT's AOT tools (apply_plugin_main, libLiteRtCompilerPlugin_Qualcomm.so) missing: "
                        "pip install -e '.[litert-runtime]' (ai-edge-litert)")
    libs = qnn_lib_dir()
    absent = list(QNN_HOST_LIBS) if libs is None else [lib for lib in QNN_HOST_LIBS if not (libs / lib).is_file()]
    if absent:
        problems.append(f"QNN host libraries missing ({', '.join(absent)}): they come from the {QNN_PACKAGE} wheel: "
                        f"pip install -e '.[qnn]' (or `make setup`)")
    if not (stub_dir() / STUB_LIB).is_file():
        problems.append(f"{stub_dir() / STUB_LIB} missing (the Qualcomm plugin links it and no wheel ships it): "
                        f"run `make setup` or `bash scripts/setup_qnn.sh {sys.prefix}`")
    return "; ".join(problems) or None


def check_socs(socs: tuple[str, ...]) -> tuple[str, ...]:
    valid = known_socs()
    bad = [s for s in socs if s.upper() not in valid]
    if bad:
        raise ExportError(f"target tflite-qnn: unknown SoC {', '.join(bad)} (valid: {', '.join(valid)})")
    return tuple(dict.fromkeys(s.upper() for s in socs)) or DEFAULT_SOCS


def _error_lines(lines: list[str]) -> list[str]:
    """The compiler's own error lines (its log is long); the last 8."""
    return [ln for ln in lines if "ERROR" in ln or "rror:" in ln][-8:]


def compile_for_soc(src: Path, out: Path, soc: str) -> dict[str, Any]:
    """apply_plugin_main on `src` for one SoC -> `out`; returns the plugin's partition report."""
    tool, plugin_dir = _plugin_paths()
    env = os.environ | {"LD_LIBRARY_PATH": os.pathsep.join(
        [str(qnn_lib_dir()), str(stub_dir()), os.environ.get("LD_LIBRARY_PATH", "")])}
    tmp = out.with_name(f".{out.name}.partial")
    cmd = [str(tool), "--cmd=apply", f"--model={src}", f"--o={tmp}", "--soc_manufacturer=Qualcomm",
           f"--soc_model={soc}", f"--libs={plugin_dir}", "--err=-"]
    t0 = time.perf_counter()
    try:
        done = run_child(cmd, f"tflite-qnn: QNN compile for {soc}", env=env, pick=_error_lines)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    log = done.stdout + done.stderr
    os.replace(tmp, out)
    parts = [dict(zip(("subgraph", "npu_ops", "total_ops", "partitions"), map(int, m)))
             for m in _PARTITIONED.findall(log)]
    sdk = _SDK_VERSION.search(log)
    return {"partitions": parts, "unsupported": dict(Counter(_UNSUPPORTED.findall(log))),
            "qairt": sdk.group(1) if sdk else "unknown", "version_skew": sorted(set(_SKEW.findall(log))),
            "compile_s": round(time.perf_counter() - t0, 1)}


def compiled_facts(path: Path) -> dict[str, Any]:
    """From the compiled .tflite: per signature its DISPATCH_OPs (context binary name, offset, size) and
    every op left outside them (those run on the CPU)."""
    from mobile_runtime.qnn_sim import dispatch_ops, read_model

    model = read_model(path)
    facts: dict[str, Any] = {}
    for sig, sub in model.signatures.items():
        ops = dispatch_ops(model, sub)
        ins, outs = model.signature_io(sig)
        io_quant = {name: [model.tensor(sub, idx)[2].name, *q] for name, idx in (ins | outs).items()
                    if (q := model.quant(sub, idx)) is not None}
        facts[sig] = {"subgraph": sub, "io_quant": io_quant, "dispatch_ops": [{"name": d.name, "offset": d.offset, "bytes": d.size} for d in ops],
                      "cpu_ops": dict(Counter(model.op_name(sub, i) for i in range(model.num_ops(sub))
                                              if model.op_name(sub, i) != "DISPATCH_OP"))}
    return facts


def _coverage(cpu_facts: dict[str, Any], report: dict[str, Any], facts: dict[str, Any], soc: str) -> dict[str, int]:
    """delegated: per signature, ops inside NPU partitions / all ops, and the partition count."""
    by_subgraph = {f["subgraph"]: sig for sig, f in facts.items()}
    out = {}
    for part in report["partitions"]:
        sig = by_subgraph.get(part["subgraph"], f"subgraph{part['subgraph']}")
        out |= {f"{sig}.npu_ops": part["npu_ops"], f"{sig}.total_ops": part["total_ops"],
                f"{sig}.partitions": part["partitions"]}
    left = {sig: f["cpu_ops"] for sig, f in facts.items() if f["cpu_ops"]}
    if left or report["unsupported"]:
        named = "; ".join(f"{sig}: {ops}" for sig, ops in left.items())
        raise ExportError(f"tflite-qnn: {soc}: not every op runs on the NPU; left on the CPU: {named or '-'} "
                          f"(plugin: not supported {report['unsupported'] or '-'})")
    return out


def _text_feeds(model: MekiModel, out_dir: Path, settings: ExportSettings, cfg: CalibConfig) -> tuple[Feeds, Feeds]:
    """Feeds (and eager outputs) over real text; rows from the bundle's pack, ids via its tokenizer."""
    tok = out_dir / "tokenizer.json"
    try:
        ids = calibration_tokens(settings.calibration and Path(settings.calibration),
                                 tok if tok.is_file() else None, model.cfg.vocab_size)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"tflite-qnn: calibration data: {exc}") from exc
    lookup = lambda t: None  # noqa: E731
    if model.cfg.has_meki:
        from mobile_runtime.pack import MemoryPack

        pack = MemoryPack.open(out_dir / "tables.mekipack")
        lookup = lambda t: pack.lookup(t.reshape(-1))[None]  # noqa: E731
    return step_feeds(model, settings.max_seq_len, settings.prefill_len, ids, lookup, cfg)


def quantize(src: Path, dst: Path, quant: str, feeds: Feeds, work: Path, margin: float = RANGE_MARGIN) -> None:
    """ai-edge-quantizer over the float graph: here if it imports, else in .venv-litert."""
    py = litert_python()
    if py is None:
        from pipeline.export.qnn_quant import quantize_tflite

        quantize_tflite(src, dst, quant, feeds, margin)
        return
    from pipeline.export.qnn_quant import save_feeds

    save_feeds(feeds, work / "feeds.npz")
    cmd = [py, "-m", "pipeline.export.qnn_quant", "--src", str(src), "--out", str(dst), "--quant", quant,
           "--feeds", str(work / "feeds.npz"), "--margin", str(margin)]
    run_child(cmd, f"tflite-qnn: {quant} quantisation in {py}", cwd=Path(__file__).resolve().parents[2])


def export_qnn(model: MekiModel, out_dir: Path, settings: ExportSettings) -> list[Backbone]:
    """One compiled .tflite per SoC from one conversion; every op must land on the NPU."""
    from dataclasses import replace

    socs = check_socs(settings.socs)
    cfg = model.cfg
    t0 = time.perf_counter()
    calib = CalibConfig()
    held_out = _text_feeds(model, out_dir, settings, replace(calib, windows=1,
                           skip_tokens=calib.windows * (calib.prefill_chunks * settings.prefill_len + calib.decode_steps)))
    with scratch_dir(out_dir, "qnn") as work:
        src = work / "model_npu_graph.tflite"
        convert(model, src, replace(settings, quant="none"), graph="npu")
        if settings.quant != "none":
            float_src, src = src, work / f"model_npu_graph_{settings.quant}.tflite"
            quantize(float_src, src, settings.quant, _text_feeds(model, out_dir, settings, calib)[0], work)
        cpu = tflite_facts(src, cfg)
        if cpu["tables"]:
            raise ExportError(f"tflite-qnn: the graph holds MeKi-table-shaped tensors: {', '.join(cpu['tables'])}")
        for sig, names in cpu["inputs"].items():
            if ("meki_rows" in names) != cfg.has_meki:
                raise ExportError(f"tflite-qnn: signature {sig} inputs {names} (meki_rows belongs in MeKi exports only)")
        convert_s = round(time.perf_counter() - t0, 1)
        backbones = []
        for soc in socs:
            out = out_dir / f"model_litert_qnn_{soc.lower()}.tflite"
            report = compile_for_soc(src, out, soc)
            facts = compiled_facts(out)
            delegated = _coverage(cpu, report, facts, soc)
            backbone = _backbone(out, settings, cfg, soc, report, facts, delegated, convert_s)
            backbone.extra["layer_snr_db"] = simulator_snr(out, held_out)
            backbones.append(backbone)
    return backbones


def simulator_snr(path: Path, held_out: tuple[Feeds, Feeds]) -> dict[str, float]:
    """Each output of the compiled model on the HTP simulator vs eager NpuStep, on held-out text."""
    from mobile_runtime.qnn_sim import read_model, sim_signatures

    model = read_model(path)
    with scratch_dir(path.parent, "qnn-sim") as work:
        sigs = sim_signatures(model, {sig: sig for sig in model.signatures}, work)
    del model
    feeds, outs = held_out
    return layer_snr(outs, lambda sig, feed: sigs[sig](**feed), feeds)


def _backbone(out: Path, settings: ExportSettings, cfg: Any, soc: str, report: dict[str, Any],
              facts: dict[str, Any], delegated: dict[str, int], convert_s: float) -> Backbone:
    binaries = {}
    for sig, f in facts.items():
        for d in f["dispatch_ops"]:
            binaries.setdefault(f"{d['offset']}+{d['bytes']}", {"offset": d["offset"], "bytes": d["bytes"],
                                                                "graphs": []})["graphs"].append(d["name"])
    return Backbone(
        target="tflite-qnn", file=out.name, quant=settings.quant, max_seq_len=settings.max_seq_len,
        prefill_len=settings.prefill_len, kv_cache="io", methods=npu_signature_specs(cfg, settings.max_seq_len,
                                                                                    settings.prefill_len),
        delegated=delegated,
        extra={"soc": soc, "vendor": "qualcomm", "qnn_backend": "htp", "precision": QUANT_KINDS[settings.quant],
               "qairt": report["qairt"], "qnn_libraries": f"{QNN_PACKAGE}=={_version(QNN_PACKAGE)}",
               "litert_plugin": f"ai-edge-litert=={_version('ai-edge-litert')}",
               "version_skew": report["version_skew"],
               "context_binaries": list(binaries.values()),
               "dispatch": {sig: [d["name"] for d in f["dispatch_ops"]] for sig, f in facts.items()},
               # quantised graphs: tensors the app feeds/reads as integers, [dtype, scale, zero_point]
               "io_quant": {sig: f["io_quant"] for sig, f in facts.items() if f["io_quant"]},
               "prefill_padded": True, "prefill_last_index": "last_index",
               "kv_cache_tensors": [f"kv_{k}_{i}" for i in range(cfg.num_layers) for k in ("k", "v")],
               "kv_new_tensors": [f"{k}_new_{i}" for i in range(cfg.num_layers) for k in ("k", "v")],
               "kv_write": "the runner writes k_new_i/v_new_i [1, Hkv, T, hd] into kv_k_i/kv_v_i at input_pos "
                           "(real tokens only); the graph attends to cache positions < input_pos[0]",
               "export_s": round(convert_s + report["compile_s"], 1), "compile_s": report["compile_s"]})


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@register_target("tflite-qnn", "LiteRT, AOT-compiled for Qualcomm HTP (QNN context binaries; --soc, "
                 "default SM8750); runs here on the HTP simulator", "qnn", ("ai_edge_litert", "onnxruntime_qnn"),
                 QNN_QUANTS, sdk_check=qnn_sdk_missing, socs=known_socs)
def export_tflite_qnn(model: MekiModel, out_dir: Path, settings: ExportSettings) -> list[Backbone]:
    return export_qnn(model, out_dir, settings)
