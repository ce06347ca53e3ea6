"""ONNX export of the component graphs (seven; eight with a video expert): one function per
artifact, each checked.

Opset 17 is the target: the newest that TensorRT 8.5 / 8.6 (JetPack 5 / 6.0) parse. The
dynamo exporter (torch >= 2.9's default) builds at opset 18 and converts down; when that
conversion fails it silently writes 18 (seen here with ReduceMean in the audio
encoder, AVR and backbone). So every graph is exported with dynamo first and the opset
actually written is read back; if it is not the target, the graph is exported again with
the TorchScript exporter (`dynamo=False`), which writes 17 directly. Which exporter made
each graph is recorded in its metadata and in the bundle manifest.

After export: `onnx.checker` (full check), input / output names, shapes and dtypes against
`components.io_specs`, and metadata_props naming the component, the model config hash and
the package version.
"""
import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import onnx
import torch

from avqa_edge import __version__
from avqa_edge.errors import AvqaError

from . import components as C
from . import fp16 as fp16_pass

OPSET = 17
EXPORTERS = ("auto", "dynamo", "torchscript")
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT32: "int32"}


@dataclass
class Artifact:
    """One file written into the bundle, as reported to the user and recorded in the manifest."""
    path: str                 # relative to the bundle
    component: str
    precision: str            # fp32 | fp16 | data
    bytes: int
    seconds: float
    opset: Optional[int] = None
    exporter: str = ""
    nodes: int = 0


def written_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset a model declares."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise AvqaError("the ONNX model declares no default-domain opset")


def _export_once(module: torch.nn.Module, args: Tuple[torch.Tensor, ...], path: Path, in_names: List[str],
                 out_names: List[str], opset: int, dynamo: bool) -> onnx.ModelProto:
    """torch.onnx.export with its chatter captured (the dynamo exporter prints progress and logs
    a traceback when its opset conversion fails, which is expected and handled here)."""
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo")]
    levels = [lg.level for lg in quiet]
    chatter = io.StringIO()
    try:
        for lg in quiet:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            kw = dict(external_data=False, optimize=True) if dynamo else dict(do_constant_folding=True)
            with torch.no_grad():
                torch.onnx.export(module, args, str(path), input_names=in_names, output_names=out_names,
                                  opset_version=opset, dynamo=dynamo, **kw)
    except Exception as e:
        raise AvqaError(f"ONNX export ({'dynamo' if dynamo else 'torchscript'}) failed: {type(e).__name__}: "
                        f"{str(e)[:500]}\n{chatter.getvalue()[-2000:]}") from None
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    return onnx.load(str(path))


def add_metadata(model: onnx.ModelProto, meta: Dict[str, str]) -> None:
    """Set metadata_props (replacing keys already present)."""
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))


def metadata(model: onnx.ModelProto) -> Dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def graph_io(model: onnx.ModelProto) -> Tuple[List[Dict], List[Dict]]:
    """(inputs, outputs) as [{name, shape, dtype}] read from the graph (dim_param -> its name)."""
    def one(vi):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return {"name": vi.name, "shape": shape, "dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type))}
    inits = {t.name for t in model.graph.initializer}
    return [one(v) for v in model.graph.input if v.name not in inits], [one(v) for v in model.graph.output]


def check_graph(model: onnx.ModelProto, component: str, specs: Tuple[List[C.TensorSpec], List[C.TensorSpec]],
                opset: int = OPSET, config_hash: Optional[str] = None) -> None:
    """onnx.checker + I/O names, shapes, dtypes, opset and metadata against the expected spec.
    Raises AvqaError listing every mismatch."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:   # onnx raises its own ValidationError / InferenceError types
        raise AvqaError(f"{component}: onnx.checker failed: {e}") from None
    problems = []
    got_in, got_out = graph_io(model)
    for kind, got, want in (("input", got_in, specs[0]), ("output", got_out, specs[1])):
        if [g["name"] for g in got] != [w.name for w in want]:
            problems.append(f"{kind} names {[g['name'] for g in got]} != {[w.name for w in want]}")
            continue
        for g, w in zip(got, want):
            if g["shape"] != list(w.shape):
                problems.append(f"{kind} {w.name}: shape {g['shape']} != {list(w.shape)}")
            if g["dtype"] != w.dtype:
                problems.append(f"{kind} {w.name}: dtype {g['dtype']} != {w.dtype}")
    if written_opset(model) != opset:
        problems.append(f"opset {written_opset(model)} written, {opset} expected")
    meta = metadata(model)
    if meta.get("avqa_edge.component") != component:
        problems.append(f"metadata component {meta.get('avqa_edge.component')!r} != {component!r}")
    if config_hash is not None and meta.get("avqa_edge.config_hash") != config_hash:
        problems.append(f"metadata config hash {meta.get('avqa_edge.config_hash')!r} != {config_hash!r}")
    if problems:
        raise AvqaError(f"{component}: the exported graph does not match its spec: " + "; ".join(problems))


def export_component(model, component: str, path: Path, opset: int = OPSET, exporter: str = "auto") -> Artifact:
    """Export one component graph (batch 1) to `path`, fall back to TorchScript when dynamo
    does not write `opset`, add metadata, check it. -> the artifact record."""
    if exporter not in EXPORTERS:
        raise AvqaError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    specs = C.io_specs(model)[component]
    module = C.build(model, component)
    args = C.example_inputs(specs[0])
    in_names, out_names = [s.name for s in specs[0]], [s.name for s in specs[1]]
    t0 = time.perf_counter()
    tried = []
    proto, used = None, ""
    for dyn in ((True, False) if exporter == "auto" else ((exporter == "dynamo"),)):
        proto = _export_once(module, args, path, in_names, out_names, opset, dyn)
        used = "dynamo" if dyn else "torchscript"
        tried.append(f"{used}: opset {written_opset(proto)}")
        if written_opset(proto) == opset:
            break
    if written_opset(proto) != opset:
        raise AvqaError(f"{component}: could not write opset {opset} ({'; '.join(tried)}). Opset 18+ graphs "
                        "cannot be parsed by TensorRT 8.5 / 8.6 (JetPack 5 / 6.0); TensorRT 10.x parses them.")
    proto.graph.doc_string = f"avqa-edge {component} (batch 1): {(type(module).forward.__doc__ or '').split(chr(10))[0]}"
    add_metadata(proto, {"avqa_edge.component": component, "avqa_edge.config_hash": model.cfg.hash(),
                         "avqa_edge.version": __version__, "avqa_edge.precision": "fp32",
                         "avqa_edge.exporter": used, "avqa_edge.batch": "1"})
    check_graph(proto, component, specs, opset, model.cfg.hash())
    onnx.save(proto, str(path))
    return Artifact(path=path.name, component=component, precision="fp32", bytes=path.stat().st_size,
                    seconds=round(time.perf_counter() - t0, 3), opset=opset, exporter=used, nodes=len(proto.graph.node))


# One function per artifact; each returns its Artifact.
def export_visual_encoder(model, path: Path, **kw) -> Artifact:
    """frames uint8 (1, T, F, H, W, 3) -> v (1, T, C, H', W')."""
    return export_component(model, "visual", path, **kw)


def export_audio_encoder(model, path: Path, **kw) -> Artifact:
    """audio float32 (1, T*SEGMENT_SAMPLES) -> a (1, T, C), conv-DFT log-mel front end included."""
    return export_component(model, "audio", path, **kw)


def export_question_encoder(model, path: Path, **kw) -> Artifact:
    """tokens int64 (1, L) -> question states q (1, 1+L, C)."""
    return export_component(model, "question", path, **kw)


def export_rmm_audio(model, path: Path, **kw) -> Artifact:
    """RMM for missing audio (Eq. 2): v, q -> pseudo a."""
    return export_component(model, "rmm_audio", path, **kw)


def export_rmm_visual(model, path: Path, **kw) -> Artifact:
    """RMM for missing video (Eq. 2): a, q -> pseudo v."""
    return export_component(model, "rmm_visual", path, **kw)


def export_avr(model, path: Path, **kw) -> Artifact:
    """AVR (Eq. 5-7): the S reverse steps unrolled in one graph."""
    return export_component(model, "avr", path, **kw)


def export_backbone(model, path: Path, **kw) -> Artifact:
    """a, v, q -> answer logits."""
    return export_component(model, "backbone", path, **kw)


def export_video_expert(model, path: Path, **kw) -> Artifact:
    """a, v, q -> answer logits of the video expert (the video missing in every segment)."""
    return export_component(model, "video_expert", path, **kw)


EXPORT_FUNCTIONS: Dict[str, Callable[..., Artifact]] = {
    "visual": export_visual_encoder, "audio": export_audio_encoder, "question": export_question_encoder,
    "rmm_audio": export_rmm_audio, "rmm_visual": export_rmm_visual, "avr": export_avr, "backbone": export_backbone,
    "video_expert": export_video_expert,
}


def export_fp16(src: Path, dst: Path, component: str, specs, config_hash: str) -> Artifact:
    """The FP16 variant of an exported FP32 graph (fp16.py), checked like the FP32 one:
    same I/O names, shapes and dtypes (FP32 in and out)."""
    t0 = time.perf_counter()
    proto = onnx.load(str(src))
    out = fp16_pass.convert(proto, fp32_upstream_of=fp16_pass.FP32_UPSTREAM_OF.get(component, ()))
    add_metadata(out, {"avqa_edge.precision": "fp16",
                       "avqa_edge.fp16_block_ops": ",".join(fp16_pass.BLOCK_OPS),
                       "avqa_edge.fp16_fp32_upstream_of": ",".join(fp16_pass.FP32_UPSTREAM_OF.get(component, ()))})
    check_graph(out, component, specs, written_opset(proto), config_hash)
    onnx.save(out, str(dst))
    return Artifact(path=dst.name, component=component, precision="fp16", bytes=dst.stat().st_size,
                    seconds=round(time.perf_counter() - t0, 3), opset=written_opset(out),
                    exporter=metadata(out).get("avqa_edge.exporter", ""), nodes=len(out.graph.node))
