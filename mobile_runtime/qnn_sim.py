"""Run a `tflite-qnn` backbone on this host: its QNN context binaries on the HTP simulator.

LiteRT's AOT compile leaves one CUSTOM DISPATCH_OP per signature; its custom options (a flexbuffer
map) name the QNN graph (`name`) and where the context binary lies in the .tflite (`bytecode_offset`,
`bytecode_size`). The QNN tensors keep the .tflite tensors' names. So each signature becomes an ONNX
Runtime EPContext model (one `com.microsoft:EPContext` node embedding the binary, its inputs and
outputs named as the DISPATCH_OP's tensors) run by onnxruntime-qnn's QNN execution provider with
the x86_64 libQnnHtp.so, which simulates the HTP. Slow, but it is the compiled artifact that runs.

The runner owns the KV cache: the graph reads it and returns each chunk's new k/v (`k_new_i`,
`v_new_i`), which are written at input_pos here (see pipeline/export/npu_graph.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Backbone, BundleError

QNN_EP = "QNNExecutionProvider"
_NP = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}


@dataclass
class DispatchOp:
    name: str  # the QNN graph inside the context binary
    offset: int
    size: int
    inputs: list[int]  # tensor indices in the subgraph
    outputs: list[int]


class TfliteModel:
    """The few facts of a .tflite flatbuffer that the NPU path needs (ai_edge_litert's schema)."""

    def __init__(self, buf: bytes) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.buf = buf
        self.fb = schema.Model.GetRootAsModel(buf, 0)
        names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        self.opcodes = []
        for i in range(self.fb.OperatorCodesLength()):
            oc = self.fb.OperatorCodes(i)
            custom = oc.CustomCode()
            self.opcodes.append(custom.decode() if custom else names[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())])

    @cached_property
    def signatures(self) -> dict[str, int]:
        return {self.fb.SignatureDefs(i).SignatureKey().decode(): self.fb.SignatureDefs(i).SubgraphIndex()
                for i in range(self.fb.SignatureDefsLength())}

    def signature_io(self, sig: str) -> tuple[dict[str, int], dict[str, int]]:
        """Signature tensor names -> tensor indices, for inputs and outputs."""
        s = next(self.fb.SignatureDefs(i) for i in range(self.fb.SignatureDefsLength())
                 if self.fb.SignatureDefs(i).SignatureKey().decode() == sig)
        ins = {s.Inputs(j).Name().decode(): s.Inputs(j).TensorIndex() for j in range(s.InputsLength())}
        outs = {s.Outputs(j).Name().decode(): s.Outputs(j).TensorIndex() for j in range(s.OutputsLength())}
        return ins, outs

    def num_ops(self, sub: int) -> int:
        return self.fb.Subgraphs(sub).OperatorsLength()

    def op_name(self, sub: int, i: int) -> str:
        return self.opcodes[self.fb.Subgraphs(sub).Operators(i).OpcodeIndex()]

    def tensor(self, sub: int, idx: int) -> tuple[str, list[int], Any]:
        t = self.fb.Subgraphs(sub).Tensors(idx)
        return t.Name().decode(), [int(x) for x in t.ShapeAsNumpy()], np.dtype(_NP[t.Type()])

    def quant(self, sub: int, idx: int) -> tuple[float, int] | None:
        """(scale, zero_point) of a per-tensor quantised integer tensor, else None."""
        t = self.fb.Subgraphs(sub).Tensors(idx)
        q = t.Quantization()
        if np.dtype(_NP[t.Type()]).kind == "f" or q is None or q.ScaleLength() != 1:
            return None
        return float(q.Scale(0)), int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0


def read_model(path: Path) -> TfliteModel:
    return TfliteModel(Path(path).read_bytes())


def dispatch_ops(model: TfliteModel, sub: int) -> list[DispatchOp]:
    from flatbuffers import flexbuffers

    found = []
    for i in range(model.num_ops(sub)):
        if model.op_name(sub, i) != "DISPATCH_OP":
            continue
        op = model.fb.Subgraphs(sub).Operators(i)
        opts = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
        found.append(DispatchOp(opts["name"], int(opts["bytecode_offset"]), int(opts["bytecode_size"]),
                                [op.Inputs(k) for k in range(op.InputsLength())],
                                [op.Outputs(k) for k in range(op.OutputsLength())]))
    return found


def epcontext_model(model: TfliteModel, sub: int, op: DispatchOp, context_file: str | None = None) -> bytes:
    """An ONNX model of one EPContext node naming its graph; the context binary embedded, or (large
    models: no second in-memory copy) in `context_file` beside the model (embed_mode 0)."""
    from onnx import helper

    def value(idx: int):
        name, shape, dtype = model.tensor(sub, idx)
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape)

    ins, outs = [value(i) for i in op.inputs], [value(i) for i in op.outputs]
    node = helper.make_node("EPContext", [v.name for v in ins], [v.name for v in outs], name=op.name,
                            domain="com.microsoft", main_context=1, embed_mode=0 if context_file else 1, source="QNN",
                            partition_name=op.name,
                            ep_cache_context=context_file or model.buf[op.offset:op.offset + op.size])
    graph = helper.make_graph([node], op.name, ins, outs)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                         helper.make_opsetid("com.microsoft", 1)])
    return onnx_model.SerializeToString()


def qnn_session(onnx_model: bytes | str, share: str = "") -> Any:
    """An ONNX Runtime session on the QNN EP (HTP backend = the simulator on x86_64); no CPU fallback.

    share "on": the QNN context this session loads serves later sessions naming the same graphs
    (ORT's ep.share_ep_contexts); "last": use the shared context, then end the sharing."""
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError as exc:
        raise BundleError(f"the HTP simulator needs onnxruntime-qnn ({exc}): pip install -e '.[qnn]'") from exc
    if not any(d.ep_name == QNN_EP for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == QNN_EP],
                                  {"backend_path": onnxruntime_qnn.get_qnn_htp_path()})
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if share:
        opts.add_session_config_entry("ep.share_ep_contexts", "1")
    if share == "last":
        opts.add_session_config_entry("ep.stop_share_ep_contexts", "1")
    return ort.InferenceSession(onnx_model, opts)


def plain_output_name(sig: str, name: str) -> str:
    """`<sig>_<name>_output_dequant` -> `<name>`: a quantised graph's float output behind a DEQUANTIZE
    (ai-edge-quantizer renames it, and the Qualcomm plugin keeps that name in the compiled signature)."""
    if name.startswith(f"{sig}_") and name.endswith("_output_dequant"):
        return name[len(sig) + 1:-len("_output_dequant")]
    return name


def quantize_input(value: np.ndarray, quant: tuple[float, int] | None, dtype: Any) -> np.ndarray:
    """A float feed for an integer (scale, zero point) input; anything else passes as dtype."""
    if quant is None or np.asarray(value).dtype.kind != "f":
        return np.ascontiguousarray(value, dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(value / quant[0]) + quant[1], info.min, info.max).astype(dtype)


def dequantize_output(value: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    return value if quant is None else (value.astype(np.float32) - quant[1]) * quant[0]


class SimSignature:
    """One signature: its single DISPATCH_OP as a simulator session, fed and read by signature names."""

    def __init__(self, model: TfliteModel, sig: str, workdir: Path, share: str = "") -> None:
        sub = model.signatures[sig]
        ops = dispatch_ops(model, sub)
        others = [model.op_name(sub, i) for i in range(model.num_ops(sub)) if model.op_name(sub, i) != "DISPATCH_OP"]
        if len(ops) != 1 or others:
            raise BundleError(f"signature {sig}: {len(ops)} DISPATCH_OPs and CPU ops {others}: the simulator "
                              "runner takes one fully offloaded partition per signature")
        ins, outs = model.signature_io(sig)
        self.feed_names = {name: model.tensor(sub, idx)[0] for name, idx in ins.items()}
        self.dtypes = {name: model.tensor(sub, idx)[2] for name, idx in ins.items()}
        outs = {plain_output_name(sig, name): idx for name, idx in outs.items()}
        self.out_names = {model.tensor(sub, idx)[0]: name for name, idx in outs.items()}
        # w8a16/w4a16 graphs take and give int16 (scale, zero point): the runner speaks float
        self.in_quant = {name: model.quant(sub, idx) for name, idx in ins.items()}
        self.out_quant = {name: model.quant(sub, idx) for name, idx in outs.items()}
        op = ops[0]
        ctx = Path(workdir) / f"context_{op.offset}_{op.size}.bin"  # signatures share one context binary
        if not ctx.exists():
            ctx.write_bytes(memoryview(model.buf)[op.offset:op.offset + op.size])
        onnx_path = Path(workdir) / f"{sig}.onnx"
        onnx_path.write_bytes(epcontext_model(model, sub, op, ctx.name))
        self.session = qnn_session(str(onnx_path), share)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        got = self.session.run(None, {self.feed_names[k]: quantize_input(v, self.in_quant[k], self.dtypes[k])
                                      for k, v in feeds.items()})
        out = {self.out_names[name]: value for name, value in zip(self._outputs, got)}
        return {k: dequantize_output(v, self.out_quant[k]) for k, v in out.items()}


def sim_signatures(model: TfliteModel, entries: dict[str, str], workdir: Path) -> dict[str, SimSignature]:
    """{step: entry signature} as simulator sessions. Signatures compiled into one context binary
    load it once: at the Qwen3-0.6B shape in fp16 that binary is 3 GB, and a second copy fails
    the simulator's allocation (QNN_COMMON_ERROR_MEM_ALLOC). The sharing ends with this model's
    last session: another model's graphs carry the same names."""
    steps = list(entries)
    return {step: SimSignature(model, entries[step], workdir, "last" if i == len(steps) - 1 else "on")
            for i, step in enumerate(steps)}


class QnnSimRunner:
    """A tflite-qnn backbone on the HTP simulator; same step() contract as LiteRTRunner."""

    def __init__(self, bundle: Path, backbone: Backbone) -> None:
        self.backbone = backbone
        model = read_model(Path(bundle) / backbone.file)
        with tempfile.TemporaryDirectory(prefix="meki-qnn-sim-") as work:  # read once by each session
            self._sigs = sim_signatures(model, {step: spec.entry or step for step, spec in backbone.methods.items()},
                                        Path(work))
        self._kv = [t for t in backbone.methods["decode"].inputs if t.name in backbone.extra["kv_cache_tensors"]]
        self.reset()

    def reset(self) -> None:
        self.cache = {t.name: np.zeros(t.shape, np.dtype(t.dtype)) for t in self._kv}

    def step(self, method: str, tokens: np.ndarray, input_pos: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        n, b = tokens.shape[1], self.backbone
        start = int(input_pos[0])
        if method == "prefill" and n > b.prefill_len:
            raise ValueError(f"prefill chunk of {n} tokens > prefill_len {b.prefill_len}")
        if start + n > b.max_seq_len:
            raise ValueError(f"positions {start}..{start + n - 1} run past the KV cache ({b.max_seq_len})")
        feeds = {"tokens": tokens, "input_pos": input_pos}
        if rows is not None:
            feeds["meki_rows"] = rows
        if method == "prefill":
            feeds = self._pad(feeds, n)
        out = self._sigs[method](**feeds, **self.cache)
        for name in self.cache:  # kv_k_3 <- k_new_3, real tokens only (padding is never written)
            kind, layer = name.split("_")[1], name.split("_")[2]
            self.cache[name][:, :, start:start + n] = out[f"{kind}_new_{layer}"][:, :, :n]
        return out["logits"]

    def _pad(self, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        # to prefill_len: token 0, zero rows, positions continuing (clipped to the cache: the padded
        # queries come after every real one, so causality hides them); last_index picks token n - 1
        pad, b = self.backbone.prefill_len - n, self.backbone
        pos = feeds["input_pos"]
        out = {"tokens": np.pad(feeds["tokens"], ((0, 0), (0, pad))),
               "input_pos": np.minimum(np.concatenate([pos, pos[-1] + 1 + np.arange(pad)]), b.max_seq_len - 1),
               "last_index": np.array([n - 1])}
        if "meki_rows" in feeds:
            out["meki_rows"] = np.pad(feeds["meki_rows"], ((0, 0), (0, pad), (0, 0), (0, 0)))
        return out
