"""Build FP16 TensorRT engines from an avqa-edge bundle, on the target device.

This module runs where the engines will run - a Jetson (JetPack 5: Python 3.8, TensorRT
8.5.2, no torch) or an RTX machine - so at module level it imports only the standard library
and avqa_edge.runtime.trt (numpy); tensorrt (and pycuda, for the fingerprint) are imported
inside the functions that need them.

Two build routes, chosen by the installed TensorRT version (docs/export.md):

| TensorRT                         | route            | ONNX graph | FP16 comes from                  |
|----------------------------------|------------------|------------|----------------------------------|
| 8.5 / 8.6 (JetPack 5 / 6.0), 9.x | `fp16_flag`      | FP32       | BuilderFlag.FP16, sensitive layers pinned FP32 (layer.precision + OBEY_PRECISION_CONSTRAINTS) |
| 10.x, 11.x                       | `strongly_typed` | FP16       | the graph's own types (STRONGLY_TYPED network, no precision flags) |

TensorRT 11 removed weak typing (`BuilderFlag.FP16`, precision constraints, `layer.precision`),
so the FP16 graph - normalization, softmax, reductions and pow kept FP32, FP32 I/O - is the
only FP16 route there; on 10.x it is the recommended one. Older than 8.5 is refused: the
runtime needs the named-tensor API and `execute_async_v3`, which arrived in 8.5.

Entry point: `build_bundle_engines(bundle_dir)` (CLI: `avqa-edge export --trt --from-bundle BUNDLE`).
After building, the engines are checked against the PyTorch references stored in the bundle
(export/parity_refs.py, torch-free as well) and each engine's verdict is recorded in the
manifest (`manifest["engines"][component]["parity"]`); serving refuses engines without a
passing verdict.
"""
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from avqa_edge.errors import AvqaError
from avqa_edge.runtime import atomic
from avqa_edge.runtime import bundle as bundle_io
from avqa_edge.runtime.trt import (  # noqa: F401  (re-exported: the build side records, the runtime checks)
    FINGERPRINT_KEYS,
    REBUILD_COMMAND,
    check_fingerprint,
    device_fingerprint,
    gpu_info,
    trt_logger,
)

ROUTE_FP16_FLAG = "fp16_flag"
ROUTE_STRONGLY_TYPED = "strongly_typed"
MIN_TRT_VERSION = (8, 5)
# Which of the bundle's ONNX graphs each route parses (manifest["components"][c]["files"][key]).
ROUTE_ONNX = {ROUTE_FP16_FLAG: "fp32", ROUTE_STRONGLY_TYPED: "fp16"}
ENGINE_PRECISION = "fp16"   # both routes give a mixed FP16 engine
ENGINE_DIR = "engines"      # BUNDLE/engines/<component>.engine

# Layers kept in FP32 on the fp16_flag route (the ops the FP16 ONNX graphs also keep in FP32).
# LayerType.NORMALIZATION and the ONNX LayerNormalization importer exist from TensorRT 8.6;
# for 8.5 a graph must spell LayerNorm out (ReduceMean, Sub, Pow, Sqrt, Div), and the
# REDUCE / POW / SQRT entries catch those layers.
SENSITIVE_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
# layer type -> (Python layer class that exposes `.op`, the op enum, the sensitive ops)
SENSITIVE_OPS = {
    "ELEMENTWISE": ("IElementWiseLayer", "ElementWiseOperation", ("POW",)),
    "UNARY": ("IUnaryLayer", "UnaryOperation", ("EXP", "LOG", "SQRT")),
}

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- versions and routes

def trt_version(trt_module: Any) -> Tuple[int, ...]:
    """`tensorrt.__version__` as integers: "8.5.2.2" -> (8, 5, 2, 2), "10.3.0" -> (10, 3, 0)."""
    text = str(getattr(trt_module, "__version__", ""))
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if match is None:
        raise AvqaError(f"Cannot read the TensorRT version from tensorrt.__version__ = {text!r}")
    return tuple(int(g) for g in match.groups() if g is not None)


def _version_text(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def build_route(version: Sequence[int]) -> str:
    """The FP16 build route for a TensorRT version (see the module docstring's table).

    8.x and 9.x (weak typing available, strongly typed networks new or absent): FP16 builder
    flag on the FP32 graph. 10.x and later: strongly typed network from the FP16 graph
    (11 has nothing else; 10 supports both, and strong typing is NVIDIA's recommended path).
    """
    version = tuple(version)
    if version[:2] < MIN_TRT_VERSION:
        raise AvqaError(
            f"TensorRT {_version_text(version)} is too old: avqa-edge needs TensorRT 8.5 or newer "
            "(JetPack 5.1+ on a Jetson), for the named-tensor API and execute_async_v3 that its "
            "runtime uses. Upgrade TensorRT (or JetPack) and rerun " + REBUILD_COMMAND)
    if version[0] < 10:
        return ROUTE_FP16_FLAG
    return ROUTE_STRONGLY_TYPED


def network_flags(trt: Any, route: str, version: Sequence[int]) -> int:
    """The `create_network` bit mask for a route.

    - fp16_flag (8.x / 9.x): EXPLICIT_BATCH, which the ONNX parser requires before 10.0.
    - strongly_typed: STRONGLY_TYPED. On 10.x it opts in to strong typing (EXPLICIT_BATCH is
      deprecated and ignored there, networks are always explicit batch, so it is not set).
      On 11.x every network is strongly typed; the flag is kept for compatibility and ignored,
      so it is set where it exists and 0 is passed where it does not.
    """
    flags = trt.NetworkDefinitionCreationFlag
    if route == ROUTE_FP16_FLAG:
        return 1 << int(flags.EXPLICIT_BATCH)
    strongly_typed = getattr(flags, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        return 1 << int(strongly_typed)
    if version[0] >= 11:
        return 0
    raise AvqaError(f"TensorRT {_version_text(version)} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED; "
                    "it cannot build from the FP16 graph. Install TensorRT 10.x or 11.x.")


# ----------------------------------------------------------------------------- network and config

def parse_onnx(trt: Any, network: Any, onnx_path: Path, version: Sequence[int]) -> Any:
    """Parse an ONNX file into `network`; on failure, every parser error goes into the AvqaError.

    Returns the parser, which must outlive the build (it owns the imported weights).
    `parse_from_file` also resolves external weight files next to the graph.
    """
    parser = trt.OnnxParser(network, trt_logger(trt))
    if parser.parse_from_file(str(onnx_path)):
        return parser
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["(the parser recorded no error)"]
    hint = ""
    if version[0] < 10:
        hint = (f"\nTensorRT {_version_text(version)} parses ONNX up to opset 17: check the opset "
                "recorded in manifest.json.")
    if tuple(version[:2]) < (8, 6):
        hint += " TensorRT 8.5 has no importer for LayerNormalization (added in 8.6)."
    raise AvqaError(f"TensorRT {_version_text(version)} could not parse {onnx_path.name}:\n  - "
                    + "\n  - ".join(errors) + hint)


def _layer_op(trt: Any, layer: Any, class_name: str) -> Any:
    """The `.op` of an ElementWise / Unary layer.

    `network.get_layer` returns the ILayer base class in Python; re-classing it to the concrete
    layer type exposes the op (the usual idiom; Torch-TensorRT does the same).
    """
    cls = getattr(trt, class_name, None)
    if cls is not None and not isinstance(layer, cls):
        layer.__class__ = cls
    return getattr(layer, "op", None)


def is_sensitive_layer(trt: Any, layer: Any) -> bool:
    """Normalization, softmax, reduce, pow, exp / log / sqrt: the layers FP16 hurts most."""
    types = trt.LayerType
    for type_name in SENSITIVE_LAYER_TYPES:
        member = getattr(types, type_name, None)
        if member is not None and layer.type == member:
            return True
    for type_name, (class_name, enum_name, op_names) in SENSITIVE_OPS.items():
        member = getattr(types, type_name, None)
        if member is None or layer.type != member:
            continue
        op = _layer_op(trt, layer, class_name)
        ops = getattr(trt, enum_name)
        return any(op == getattr(ops, name, None) for name in op_names)
    return False


def _has_float_outputs(trt: Any, layer: Any) -> bool:
    """Only layers producing FP32/FP16 tensors can be pinned (shape and index layers cannot)."""
    floats = (trt.float32, trt.float16)
    return layer.num_outputs > 0 and all(layer.get_output(j).dtype in floats for j in range(layer.num_outputs))


def pin_sensitive_layers(trt: Any, network: Any) -> List[str]:
    """Set `layer.precision` and every output type to FP32 on the sensitive layers (8.x / 9.x / 10.x).

    With OBEY_PRECISION_CONSTRAINTS set, the builder must honour these; everything else may
    run in FP16 under BuilderFlag.FP16. Returns the pinned layers' names.
    """
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not is_sensitive_layer(trt, layer) or not _has_float_outputs(trt, layer):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


def configure_precision(trt: Any, builder: Any, network: Any, config: Any, route: str, log: Log) -> List[str]:
    """Route-specific precision settings; returns the layers pinned to FP32.

    fp16_flag: BuilderFlag.FP16 + pinned sensitive layers + OBEY_PRECISION_CONSTRAINTS.
    strongly_typed: nothing - the types are in the graph. Setting FP16 on a strongly typed
    network is an error in 10.x, and the flag no longer exists in 11.x.
    """
    if route != ROUTE_FP16_FLAG:
        return []
    if not getattr(builder, "platform_has_fast_fp16", True):
        log("  warning: this GPU has no fast FP16; the engine may not be faster than FP32")
    config.set_flag(trt.BuilderFlag.FP16)
    pinned = pin_sensitive_layers(trt, network)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def add_static_profile(trt: Any, builder: Any, network: Any, config: Any, log: Log) -> None:
    """Fix any dynamic input dimension to 1 (batch 1, what the runtime serves) with one profile.

    The bundle's graphs have fixed shapes, so this normally does nothing; a dynamic input
    without an optimization profile would make the build fail.
    """
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape):
            dynamic.append((tensor.name, shape))
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for name, shape in dynamic:
        fixed = tuple(1 if d < 0 else d for d in shape)
        profile.set_shape(name, fixed, fixed, fixed)
        log(f"  input {name}: dynamic shape {shape} built for {fixed}")
    config.add_optimization_profile(profile)


# ----------------------------------------------------------------------------- timing cache and files

def _write_atomic(path: Path, data: Any) -> None:
    """Bytes, or a buffer such as TensorRT's IHostMemory, through runtime/atomic.py (fsync + rename)."""
    atomic.write_bytes(path, bytes(memoryview(data)))


def attach_timing_cache(config: Any, path: Optional[Path], log: Log) -> None:
    """Load the timing cache from `path` (empty if the file does not exist yet) into the config.

    The cache holds measured kernel timings, so rebuilding (or building the next component)
    skips most tactic timing. A cache from another GPU or TensorRT version is refused by
    `set_timing_cache(cache, ignore_mismatch=False)`; then a fresh one is used.
    """
    if path is None:
        return
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log(f"  timing cache {path} does not match this device / TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        log(f"  timing cache loaded from {path} ({len(data)} bytes)")


def save_timing_cache(config: Any, path: Optional[Path]) -> None:
    """Write the (now grown) timing cache back to `path`."""
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is not None:
        _write_atomic(path, cache.serialize())


# ----------------------------------------------------------------------------- one engine

def build_engine(onnx_path: Path, engine_path: Path, trt: Any, route: Optional[str] = None,
                 workspace_mib: int = 1024, timing_cache: Optional[Path] = None, log: Log = print) -> Dict[str, Any]:
    """Build one FP16 engine from an ONNX graph and write it to `engine_path`.

    Builder -> create_network(route flags) -> OnnxParser -> builder config (workspace limit,
    profile for dynamic inputs, route precision, timing cache) -> build_serialized_network.
    Returns {"file", "bytes", "seconds", "route", "precision"}.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    version = trt_version(trt)
    route = route or build_route(version)
    start = time.perf_counter()

    builder = trt.Builder(trt_logger(trt))
    network = builder.create_network(network_flags(trt, route, version))
    parser = parse_onnx(trt, network, onnx_path, version)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    add_static_profile(trt, builder, network, config, log)
    pinned = configure_precision(trt, builder, network, config, route, log)
    attach_timing_cache(config, timing_cache, log)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AvqaError(
            f"TensorRT {_version_text(version)} failed to build {engine_path.name} from {onnx_path.name} "
            f"(route {route}); its log above says why. If it ran out of memory, raise the workspace "
            f"limit (now {workspace_mib} MiB).")
    _write_atomic(engine_path, serialized)
    save_timing_cache(config, timing_cache)
    del parser   # kept alive until here: it owns the weights the build read

    seconds = time.perf_counter() - start
    nbytes = engine_path.stat().st_size
    note = f", {len(pinned)} layers pinned to FP32" if route == ROUTE_FP16_FLAG else ""
    log(f"  {engine_path.name}: {nbytes / 2**20:.1f} MiB in {seconds:.1f} s "
        f"({route} from {onnx_path.name}{note})")
    return {"file": engine_path.name, "bytes": nbytes, "seconds": round(seconds, 2),
            "route": route, "precision": ENGINE_PRECISION}


# ----------------------------------------------------------------------------- a whole bundle

def device_build_message(bundle_dir: Union[str, Path], reason: str) -> str:
    """What to do when engines cannot be built here: the exact steps on the device."""
    return (
        f"Cannot build TensorRT engines here: {reason}.\n"
        f"The ONNX bundle {bundle_dir} is complete and usable with onnxruntime meanwhile.\n"
        "Build the FP16 engines on the device that will run them (Jetson or RTX machine):\n"
        f"  1. copy the bundle directory to the device (e.g. scp -r {bundle_dir} DEVICE:)\n"
        "  2. install TensorRT: pip install 'avqa-edge[tensorrt]' (desktop / RTX); on a Jetson use "
        "JetPack's python3-libnvinfer (sudo apt install python3-libnvinfer; a venv needs "
        "--system-site-packages), then pip install avqa-edge pycuda\n"
        f"  3. run: {REBUILD_COMMAND}   (BUNDLE = the copied bundle directory; torch is not needed)")


def _engine_files(manifest: Dict[str, Any]) -> List[str]:
    """Bundle-relative files of the engines recorded by an earlier build."""
    return [rec.get("file") for rec in (manifest.get("engines") or {}).values() if rec.get("file")]


def read_bundle(bundle_dir: Path) -> Dict[str, Any]:
    """The bundle's verified manifest (runtime/bundle.py), which must list at least one component.

    Every file's SHA-256 is checked first, so a damaged copy fails in seconds rather than after
    minutes of building. Engines from an earlier build are left out of the check: they are
    about to be replaced.
    """
    manifest = bundle_io.read_manifest(bundle_dir)
    stale = set(_engine_files(manifest))
    check = dict(manifest, engines={},
                 files={rel: rec for rel, rec in (manifest.get("files") or {}).items() if rel not in stale})
    bundle_io.verify_bundle(bundle_dir, check)
    if not isinstance(manifest.get("components"), dict) or not manifest["components"]:
        raise AvqaError(f"{bundle_dir / bundle_io.MANIFEST} lists no components; re-export the bundle.")
    return manifest


def forget_engines(bundle_dir: Path, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Drop an earlier build's engine records (and their hashes) before rebuilding.

    `add_engines` verifies every file the manifest lists, so stale engine hashes would make
    recording the new engines fail.
    """
    stale = set(_engine_files(manifest))
    if not stale and not manifest.get("fingerprint"):
        return manifest
    manifest = dict(manifest, engines={}, fingerprint={},
                    files={rel: rec for rel, rec in manifest["files"].items() if rel not in stale})
    return bundle_io.write_manifest(bundle_dir, manifest, rehash=False)


def graph_key(files: Dict[str, str], route: str, version: Sequence[int]) -> str:
    """Which of a component's graphs (manifest files key) the route builds from."""
    if route == ROUTE_FP16_FLAG and tuple(version[:2]) < (8, 6) and "fp32_nolayernorm" in files:
        return "fp32_nolayernorm"      # TensorRT 8.5 has no LayerNormalization importer
    return ROUTE_ONNX[route]


def onnx_sources(bundle_dir: Path, manifest: Dict[str, Any], route: str,
                 version: Sequence[int]) -> List[Tuple[str, Path]]:
    """(component, ONNX path) per component, the FP32 or FP16 graph as the route needs.

    Reads manifest["components"][name]["files"]["fp32" | "fp16"] (paths relative to the bundle);
    TensorRT 8.5 takes "fp32_nolayernorm" where the export wrote one.
    """
    sources = []
    for name, component in manifest["components"].items():
        files = component.get("files") or {}
        key = graph_key(files, route, version)
        rel = files.get(key)
        if rel is None:
            raise AvqaError(
                f"Component {name!r} has no {key} ONNX graph in manifest.json (it lists {sorted(files)}); "
                f"TensorRT {_version_text(version)} builds from it (route {route}). Re-export the bundle.")
        path = bundle_dir / rel
        if not path.is_file():
            raise AvqaError(f"{path} is listed in manifest.json but missing; re-export or re-copy the bundle.")
        sources.append((name, path))
    return sources


def _require_tensorrt(bundle_dir: Path) -> Any:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise AvqaError(device_build_message(bundle_dir, f"TensorRT is not installed ({err})")) from None
    return trt


def _require_gpu(bundle_dir: Path) -> None:
    info, reason = gpu_info()
    if info is None:
        raise AvqaError(device_build_message(bundle_dir, f"no NVIDIA GPU is visible ({reason})"))


def record_engines(bundle_dir: Path, engines: Dict[str, Dict[str, Any]], fingerprint: Dict[str, Any]) -> None:
    """Record the engines (hashed) and this device's fingerprint in manifest.json."""
    bundle_io.add_engines(bundle_dir, engines, fingerprint)


def build_bundle_engines(bundle_dir: Union[str, Path], workspace_mib: int = 1024,
                         timing_cache: Optional[Union[str, Path]] = None, log: Log = print,
                         parity: bool = True, threads: int = 0) -> Dict[str, Any]:
    """Build `engines/<component>.engine` for every component of a bundle on this device.

    Picks the route from the installed TensorRT, the FP32 or FP16 graph accordingly, records
    the engines and this device's fingerprint in manifest.json, then (with `parity`) checks
    them against the bundle's stored PyTorch references (export/parity_refs.py, torch-free)
    and records each engine's verdict in manifest["engines"][component]["parity"]. Returns
    {"engines": {component: {"file", "bytes", "seconds", "route", "precision", "onnx"}},
    "fingerprint": {...}, "parity": the ParityReport or None} ("file" relative to the bundle;
    "onnx": the manifest files key of the graph it was built from).
    Without TensorRT or an NVIDIA GPU, raises AvqaError saying how to build on the device;
    when the engines fail parity, raises ParityError naming them (their failing verdicts recorded).
    """
    bundle_dir = Path(bundle_dir)
    if int(workspace_mib) <= 0:
        raise AvqaError(f"The workspace limit must be a positive number of MiB, not {workspace_mib}.")
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None and not cache_path.parent.is_dir():
        raise AvqaError(f"Timing cache folder {cache_path.parent} does not exist.")
    manifest = read_bundle(bundle_dir)

    trt = _require_tensorrt(bundle_dir)
    _require_gpu(bundle_dir)
    version = trt_version(trt)
    route = build_route(version)
    sources = onnx_sources(bundle_dir, manifest, route, version)
    fingerprint = device_fingerprint()
    log(f"Building {len(sources)} TensorRT engine(s) with TensorRT {_version_text(version)} on "
        f"{fingerprint['gpu_name']} (compute {fingerprint['compute_capability']}), route {route}")

    forget_engines(bundle_dir, manifest)
    engine_dir = bundle_dir / ENGINE_DIR
    engine_dir.mkdir(exist_ok=True)
    engines = {}
    for name, onnx_path in sources:
        rec = build_engine(onnx_path, engine_dir / f"{name}.engine", trt, route=route,
                           workspace_mib=workspace_mib, timing_cache=cache_path, log=log)
        rec["file"] = f"{ENGINE_DIR}/{rec['file']}"   # bundle-relative, as the manifest lists files
        rec["onnx"] = graph_key(manifest["components"][name].get("files") or {}, route, version)
        engines[name] = rec
    total = sum(e["bytes"] for e in engines.values())
    log(f"{len(engines)} engine(s), {total / 2**20:.1f} MiB, "
        f"{sum(e['seconds'] for e in engines.values()):.1f} s")
    record_engines(bundle_dir, engines, fingerprint)
    report = verify_engines(bundle_dir, threads=threads, log=log) if parity else None
    return {"engines": engines, "fingerprint": fingerprint, "parity": report}


def verify_engines(bundle_dir: Union[str, Path], threads: int = 0, log: Log = print,
                   raise_on_failure: bool = True) -> Any:
    """Torch-free parity of the bundle's engines against its stored PyTorch references (and
    against ONNX Runtime on the same feeds); each engine's verdict goes into the manifest.

    A bundle exported without stored references gets no verdicts (and a warning: serving
    refuses unverified engines). -> the ParityReport, or None without references."""
    from . import parity_refs as R
    manifest = bundle_io.read_manifest(bundle_dir)
    if not manifest.get("references"):
        log(f"  warning: {bundle_dir} holds no PyTorch references, so the engines cannot be checked here and "
            "stay unverified (serve refuses them): re-export the bundle with this version, then rebuild")
        return None
    report = R.stored_parity(bundle_dir, backend="trt", threads=threads, log=log)
    R.record_parity(bundle_dir, report, "trt")
    verdict = "PASSED" if report else f"FAILED for {', '.join(report.failed_components()) or 'the answers'}"
    log(f"engine parity {verdict}: verdicts recorded in {Path(bundle_dir) / bundle_io.MANIFEST}")
    if raise_on_failure:
        R.gate(report, f"TensorRT engines of {bundle_dir}; they stay recorded as failed and serve refuses them")
    return report
