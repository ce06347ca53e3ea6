"""ONNX rewrites and checks for older TensorRT parsers (onnx + numpy only: no torch, Python 3.8+,
so it also runs on a JetPack 5 device next to the engine build).

TensorRT 8.5 (JetPack 5) parses ONNX up to opset 17 but has no importer for
`LayerNormalization` (it arrived in 8.6). `decompose_layernorm` spells every such node out
in plain ops, the pattern PyTorch's exporter wrote before opset 17 (which TensorRT 8.x parses):

    mean = ReduceMean(X, axes)            var  = ReduceMean(Pow(X - mean, 2), axes)
    Y    = (X - mean) / Sqrt(var + eps) * Scale (+ B)

over the axes [axis, rank), with the epsilon of the node, in float32 when the node's
stash_type asks for it (float16 input: Cast in, Cast back before Scale, as the ONNX function
body of LayerNormalization does). ReduceMean takes `axes` as an attribute up to opset 17 and
as an input from 18; the rewrite follows the model's opset. The graph's inputs, outputs and
every other tensor keep their names (the last node of each expansion writes the node's Y);
the new nodes' names hold DECOMPOSED_TAG, for pinning them to FP32 in a TensorRT build.

`trt_parse_issues(model, "8.5.2")` lists what a TensorRT version's ONNX parser cannot read:
LayerNormalization before 8.6; STFT, DFT and MelWeightMatrix on every version (docs/export.md:
8.x and 10.3 cannot parse STFT, DFT and MelWeightMatrix are unsupported everywhere); an
opset above 17 before TensorRT 10.
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from avqa_edge.errors import AvqaError

LAYERNORM = "LayerNormalization"
# in the name of every node a decomposition writes (TensorRT names its layers after the ONNX
# nodes), so an FP16-flag build can pin the whole spelled-out LayerNorm to FP32 by name
DECOMPOSED_TAG = "LayerNormDecomposed"
Version = Union[str, Sequence[int]]

# op -> (first TensorRT version whose ONNX parser imports it, or None: none does; why / what to do)
TRT_OP_SUPPORT: Dict[str, Tuple[Optional[Tuple[int, int]], str]] = {
    LAYERNORM: ((8, 6), "TensorRT's ONNX parser imports LayerNormalization from 8.6 on; rewrite it with "
                        "avqa_edge.export.onnx_compat.decompose_layernorm"),
    "STFT": (None, "TensorRT 8.x and 10.3 cannot parse STFT (treated as unsupported on every version): compute "
                   "the spectrum with a Conv1d holding windowed cos/sin weights"),
    "DFT": (None, "TensorRT has no DFT importer: use a Conv1d or MatMul with fixed cos/sin weights"),
    "MelWeightMatrix": (None, "TensorRT has no MelWeightMatrix importer: store the mel filterbank as a constant "
                              "and MatMul with it"),
}
MAX_OPSET_BEFORE_TRT10 = 17      # TensorRT 8.5 / 8.6 (JetPack 5 / 6.0) parse ONNX up to opset 17

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


@dataclass
class TrtParseIssue:
    """One thing a TensorRT version's ONNX parser cannot read."""
    op: str            # the op type, or "opset"
    nodes: int         # how many nodes use it (0 for "opset")
    reason: str

    def __str__(self) -> str:
        return f"{self.op} ({self.nodes} node{'s' if self.nodes != 1 else ''}): {self.reason}" if self.nodes \
            else f"{self.op}: {self.reason}"


# ---- helpers -------------------------------------------------------------------------------------

def parse_version(version: Version) -> Tuple[int, ...]:
    """"8.5.2.2" or (8, 5) -> (8, 5, 2, 2) / (8, 5)."""
    if isinstance(version, str):
        m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?", version)
        if m is None:
            raise AvqaError(f"not a TensorRT version: {version!r} (expected e.g. 8.5 or 10.3.0)")
        return tuple(int(g) for g in m.groups() if g is not None)
    out = tuple(int(v) for v in version)
    if not out:
        raise AvqaError("empty TensorRT version")
    return out


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise AvqaError("the ONNX model declares no default-domain opset")


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for g in a.graphs:
                yield g


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the main graph, subgraphs (If / Loop / Scan bodies) and local functions."""
    def walk(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
        for n in nodes:
            yield n
            for g in _subgraphs(n):
                for m in walk(g.node):
                    yield m
    for n in walk(model.graph.node):
        yield n
    for f in model.functions:
        for n in walk(f.node):
            yield n


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    """{op type: nodes} over the whole model (default-domain ops by name, others as domain.op)."""
    out: Dict[str, int] = {}
    for n in _all_nodes(model):
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        out[key] = out.get(key, 0) + 1
    return out


class _Names:
    """Fresh tensor / node names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto):
        self.used: Set[str] = set()
        graphs = [model.graph] + [g for n in _all_nodes(model) for g in _subgraphs(n)]
        for g in graphs:
            self.used.update(v.name for v in list(g.input) + list(g.output) + list(g.value_info))
            self.used.update(t.name for t in g.initializer)
        for n in _all_nodes(model):
            self.used.update(list(n.input) + list(n.output) + [n.name])
        for f in model.functions:
            self.used.update(list(f.input) + list(f.output))

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _value_types(model: onnx.ModelProto) -> Dict[str, Tuple[int, Optional[int]]]:
    """{tensor name: (elem type, rank or None)} from shape inference (main graph and subgraphs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:                 # a model shape inference cannot handle: use what it declares
        inferred = model
    out: Dict[str, Tuple[int, Optional[int]]] = {}
    graphs = [inferred.graph] + [g for n in _all_nodes(inferred) for g in _subgraphs(n)]
    for g in graphs:
        for v in list(g.input) + list(g.output) + list(g.value_info):
            tt = v.type.tensor_type
            out[v.name] = (tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else None)
        for t in g.initializer:
            out[t.name] = (t.data_type, len(t.dims))
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ---- LayerNormalization -> plain ops ---------------------------------------------------------------

def decompose_layernorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every LayerNormalization node replaced by ReduceMean, Sub, Pow,
    ReduceMean, Add, Sqrt, Div, Mul (and Add for the bias) at the model's opset (module
    docstring). Graph inputs, outputs and other tensors keep their names; the optional Mean
    and InvStdDev outputs are produced when used. Raises AvqaError for a node it cannot
    rewrite (a non-negative axis on a tensor of unknown rank)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(n.op_type == LAYERNORM and n.domain in ("", "ai.onnx") for n in _all_nodes(out)):
        return out
    opset = default_opset(out)
    types = _value_types(out)
    names = _Names(out)
    _rewrite_graph(out.graph, opset, types, names)
    for f in out.functions:
        new: List[onnx.NodeProto] = []
        for n in f.node:
            if n.op_type == LAYERNORM and n.domain in ("", "ai.onnx"):
                nodes, consts = _expand(n, opset, types, names)
                new.extend(helper.make_node("Constant", [], [t.name], value=t) for t in consts)
                new.extend(nodes)
            else:
                new.append(n)
        del f.node[:]
        f.node.extend(new)
    return out


def _rewrite_graph(graph: onnx.GraphProto, opset: int, types, names: _Names) -> None:
    new: List[onnx.NodeProto] = []
    for n in graph.node:
        for g in _subgraphs(n):
            _rewrite_graph(g, opset, types, names)
        if n.op_type == LAYERNORM and n.domain in ("", "ai.onnx"):
            nodes, consts = _expand(n, opset, types, names)
            graph.initializer.extend(consts)
            new.extend(nodes)
        else:
            new.append(n)
    del graph.node[:]
    graph.node.extend(new)


def _expand(node: onnx.NodeProto, opset: int, types, names: _Names) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """The plain-op nodes (and their constant initializers) computing one LayerNormalization."""
    x, scale = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    y = node.output[0]
    mean_out = node.output[1] if len(node.output) > 1 and node.output[1] else None
    inv_out = node.output[2] if len(node.output) > 2 and node.output[2] else None
    axis = int(_attr(node, "axis", -1))
    eps = float(_attr(node, "epsilon", 1e-5))
    stash = int(_attr(node, "stash_type", TensorProto.FLOAT))
    x_type, rank = types.get(x, (TensorProto.FLOAT, None))
    x_type = x_type if x_type in _FLOATS else TensorProto.FLOAT
    if axis < 0:
        axes = list(range(axis, 0))                         # e.g. -1 -> [-1]: no rank needed
    elif rank is not None:
        axes = list(range(axis, rank))
    else:
        raise AvqaError(f"{node.name or LAYERNORM}: axis {axis} on {x!r} of unknown rank; cannot decompose")
    # stash_type 1 (the default): mean and variance in float32, even for float16 input
    calc = TensorProto.FLOAT if stash == TensorProto.FLOAT else x_type
    calc_np = helper.tensor_dtype_to_np_dtype(calc)
    base = names.fresh(node.name or LAYERNORM)
    t = lambda what: names.fresh(f"{base}/{what}")          # noqa: E731
    nodes: List[onnx.NodeProto] = []
    consts = [numpy_helper.from_array(np.array(eps, dtype=calc_np), t("epsilon")),
              numpy_helper.from_array(np.array(2.0, dtype=calc_np), t("two"))]
    eps_name, two_name = consts[0].name, consts[1].name

    def add(op: str, inputs: List[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=names.fresh(f"{base}/{DECOMPOSED_TAG}/{op}"), **attrs))
        return output

    def reduce_mean(inp: str, output: str) -> str:
        if opset >= 18:                                      # axes became an input in opset 18
            axes_t = numpy_helper.from_array(np.array(axes, dtype=np.int64), t("axes"))
            consts.append(axes_t)
            return add("ReduceMean", [inp, axes_t.name], output, keepdims=1)
        return add("ReduceMean", [inp], output, axes=axes, keepdims=1)

    xs = x if calc == x_type else add("Cast", [x], t("x_cast"), to=calc)
    mean = reduce_mean(xs, mean_out or t("mean"))            # Mean output: the stash type, keepdims
    centered = add("Sub", [xs, mean], t("centered"))
    var = reduce_mean(add("Pow", [centered, two_name], t("squared")), t("variance"))
    std = add("Sqrt", [add("Add", [var, eps_name], t("variance_eps"))], t("std"))
    normed = add("Div", [centered, std], t("normalized"))
    if calc != x_type:
        normed = add("Cast", [normed], t("normalized_cast"), to=x_type)
    scaled = add("Mul", [normed, scale], y if bias is None else t("scaled"))
    if bias is not None:
        add("Add", [scaled, bias], y)
    if inv_out:
        add("Reciprocal", [std], inv_out)
    return nodes, consts


# ---- what a TensorRT version cannot parse ------------------------------------------------------------

def trt_parse_issues(model: onnx.ModelProto, trt_version: Version) -> List[TrtParseIssue]:
    """What TensorRT `trt_version`'s ONNX parser cannot read in `model` (empty: nothing known).

    LayerNormalization before 8.6; STFT, DFT, MelWeightMatrix on every version; an opset
    above 17 before TensorRT 10."""
    version = parse_version(trt_version)
    counts = op_counts(model)
    issues = []
    for op, (since, why) in TRT_OP_SUPPORT.items():
        if counts.get(op) and (since is None or version[:2] < since):
            issues.append(TrtParseIssue(op, counts[op], why))
    opset = default_opset(model)
    if version[0] < 10 and opset > MAX_OPSET_BEFORE_TRT10:
        issues.append(TrtParseIssue("opset", 0, f"opset {opset}: TensorRT {'.'.join(map(str, version))} parses ONNX "
                                                f"up to opset {MAX_OPSET_BEFORE_TRT10}"))
    return issues


def check_trt_parsable(model: onnx.ModelProto, trt_version: Version, what: str = "the graph") -> None:
    """Raise AvqaError listing `trt_parse_issues`, if any."""
    issues = trt_parse_issues(model, trt_version)
    if issues:
        v = ".".join(str(x) for x in parse_version(trt_version))
        raise AvqaError(f"TensorRT {v} cannot parse {what}:\n  - " + "\n  - ".join(str(i) for i in issues))


def max_abs_diff(original: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: Sequence[Dict[str, np.ndarray]],
                 optimize: bool = False) -> Dict[str, float]:
    """{output: max abs difference} between two graphs run by ONNX Runtime's CPU provider on
    the same feeds. optimize=False turns ORT's graph optimizations off (ORT fuses the
    decomposed pattern back into LayerNormalization, which would hide the rewrite's numerics)."""
    import onnxruntime as ort

    def open_graph(m: onnx.ModelProto):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a, b = open_graph(original), open_graph(rewritten)
    names = [o.name for o in a.get_outputs()]
    if names != [o.name for o in b.get_outputs()]:
        raise AvqaError(f"outputs differ: {names} vs {[o.name for o in b.get_outputs()]}")
    out = {n: 0.0 for n in names}
    for feed in feeds:
        for n, x, y in zip(names, a.run(names, feed), b.run(names, feed)):
            d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
            out[n] = max(out[n], float(d.max()) if d.size else 0.0)
    return out
