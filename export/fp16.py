"""FP16 variants of the exported graphs: what TensorRT 10/11 strongly typed networks need
(docs/export.md: FP16 must be in the ONNX, with I/O and numerically sensitive ops in FP32).

A small explicit pass over the graph:
- a node whose op is not block-listed computes in float16: its float32 inputs are cast
  (float32 weights and constants are stored converted, clipped to the float16 range), its
  float32 outputs become float16;
- block-listed ops (normalization, softmax, reductions, pow, log / exp, LSTM, ...) and,
  where asked, every node upstream of a given op (the audio encoder's log-mel front end,
  everything that feeds its Log: the power spectrum can exceed the float16 range) compute
  in float32, with Casts at the boundaries;
- graph inputs and outputs keep their dtype (float32 stays float32; uint8 / int64 are
  untouched).

Why not onnxconverter-common's `convert_float_to_float16(keep_io_types=True, op_block_list=...)`:
version 1.16 produced graphs that ONNX Runtime refuses (the visual encoder's uint8 -> float
Cast was retyped to float16 without its value_info) and float16 outputs despite
`keep_io_types` (question encoder, AVR). This pass is short, and `onnx.checker`, strict
shape inference and ONNX Runtime verify its output.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from avqa_edge.errors import AvqaError

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0

# Numerically sensitive ops that stay float32 (TensorRT's advice, plus what the graphs hold).
BLOCK_OPS: Tuple[str, ...] = (
    "LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
    "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    "Pow", "Sqrt", "Log", "Exp", "Sin", "Cos", "LSTM", "GRU", "RNN",
)
# Per component: ops whose whole upstream stays float32 (the log-mel front end feeds the first Log).
FP32_UPSTREAM_OF: Dict[str, Tuple[str, ...]] = {"audio": ("Log",)}
# Inputs that are not the op's main type T and stay as they are (Resize: roi, scales).
FIXED_INPUTS: Dict[str, Tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}


def convert(model: onnx.ModelProto, block_ops: Sequence[str] = BLOCK_OPS,
            fp32_upstream_of: Sequence[str] = ()) -> onnx.ModelProto:
    """-> a float16 copy of `model` (float32 I/O, block-listed ops in float32)."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    g = model.graph
    dtype: Dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dtype[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        dtype[t.name] = t.data_type
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and _const_tensor(n) is not None}
    pass_ = _Pass(dtype, inits, consts)

    block_ops = set(block_ops)
    upstream = _upstream_nodes(g, set(fp32_upstream_of))
    for k, node in enumerate(g.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise AvqaError(f"fp16: node {node.name or node.op_type} holds a subgraph; not supported")
        if node.output[0] in consts:
            pass_.nodes.append(node)       # float32 constants are converted where a float16 op reads them
            continue
        in_fp32 = node.op_type in block_ops or node.domain not in ("", "ai.onnx") or k in upstream
        pass_.visit(node, HALF if not in_fp32 else FLOAT)

    pass_.restore_outputs(g.output)
    new = helper.make_graph(pass_.nodes, g.name, list(g.input), list(g.output),
                            initializer=list(g.initializer) + pass_.new_inits)
    out = helper.make_model(new, opset_imports=list(model.opset_import), producer_name=model.producer_name,
                            producer_version=model.producer_version, ir_version=model.ir_version)
    out.metadata_props.extend(model.metadata_props)
    out = _prune(out)
    onnx.checker.check_model(out)
    return onnx.shape_inference.infer_shapes(out, strict_mode=True)


class _Pass:
    """Tracks each tensor's dtype after conversion and inserts the casts."""

    def __init__(self, dtype: Dict[str, int], inits: Dict[str, onnx.TensorProto], consts: Dict[str, onnx.NodeProto]):
        self.dtype = dict(dtype)
        self.inits, self.consts = inits, consts
        self.nodes: List[onnx.NodeProto] = []
        self.new_inits: List[onnx.TensorProto] = []
        self._cache: Dict[Tuple[str, int], str] = {}

    def visit(self, node: onnx.NodeProto, precision: int) -> None:
        fixed = FIXED_INPUTS.get(node.op_type, ())
        for i, name in enumerate(node.input):
            if name and i not in fixed and self.dtype.get(name) in (FLOAT, HALF):
                node.input[i] = self.as_dtype(name, precision)
        if precision == HALF:
            _retype_attributes(node)
            for name in node.output:
                if self.dtype.get(name) == FLOAT:
                    self.dtype[name] = HALF
        self.nodes.append(node)

    def as_dtype(self, name: str, want: int) -> str:
        """The name of `name` in dtype `want` (a converted weight, or a Cast node)."""
        if self.dtype[name] == want:
            return name
        key = (name, want)
        if key not in self._cache:
            suffix = "__fp16" if want == HALF else "__fp32"
            new = name + suffix
            src = self.inits.get(name)
            if src is None and name in self.consts:
                src = _const_tensor(self.consts[name])
            if src is not None and want == HALF:
                arr = numpy_helper.to_array(src)
                self.new_inits.append(numpy_helper.from_array(_to_half(arr), new))
            else:
                self.nodes.append(helper.make_node("Cast", [name], [new], to=want, name=new + "_cast"))
            self.dtype[new] = want
            self._cache[key] = new
        return self._cache[key]

    def restore_outputs(self, outputs: Iterable[onnx.ValueInfoProto]) -> None:
        """Graph outputs that became float16 get a final Cast back to float32."""
        for out in outputs:
            if self.dtype.get(out.name) != HALF or out.type.tensor_type.elem_type != FLOAT:
                continue
            inner = out.name + "__fp16_out"
            for node in self.nodes:
                for i, n in enumerate(node.input):
                    if n == out.name:
                        node.input[i] = inner
                for i, n in enumerate(node.output):
                    if n == out.name:
                        node.output[i] = inner
            self.nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=out.name + "_cast_out"))


def _upstream_nodes(g: onnx.GraphProto, ops: set) -> set:
    """Indices of the nodes of type `ops` and of every node they (transitively) read."""
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    todo = [k for k, n in enumerate(g.node) if n.op_type in ops]
    seen = set()
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        todo.extend(producer[i] for i in g.node[k].input if i in producer)
    return seen


def _const_tensor(node: onnx.NodeProto) -> Optional[onnx.TensorProto]:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
            return a.t
    return None


def _to_half(arr: np.ndarray) -> np.ndarray:
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)


def _retype_attributes(node: onnx.NodeProto) -> None:
    """A float16 node's own float32 constants: Cast's target, ConstantOfShape's value."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
            a.i = HALF
        elif node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == FLOAT:
            a.t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(a.t)), a.t.name))


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers nothing reads any more (float32 originals of converted weights)."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep: List[onnx.NodeProto] = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    inits = [t for t in g.initializer if t.name in needed]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]
    return model


def precision_report(model: onnx.ModelProto) -> Dict[str, Dict[str, int]]:
    """Per op type, how many nodes compute in float16 / float32 (by their first float input)."""
    m = onnx.shape_inference.infer_shapes(model)
    dtype = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)}
    dtype.update({t.name: t.data_type for t in m.graph.initializer})
    out: Dict[str, Dict[str, int]] = {}
    for node in m.graph.node:
        kinds = [dtype.get(i) for i in node.input if dtype.get(i) in (FLOAT, HALF)]
        if not kinds or node.op_type == "Cast":
            continue
        key = "fp16" if kinds[0] == HALF else "fp32"
        out.setdefault(node.op_type, {"fp16": 0, "fp32": 0})[key] += 1
    return out
