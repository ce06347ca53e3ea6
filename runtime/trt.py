"""TensorRT runner and device fingerprint (torch-free, Python 3.8+: runs on JetPack 5).

One runtime path serves TensorRT 8.5 / 8.6, 10.x and 11.x: the named-tensor API
(`num_io_tensors`, `get_tensor_name`, `set_input_shape`, `set_tensor_address`) and
`execute_async_v3` exist from 8.5 on; only the engine *build* differs between versions
(export/trt_build.py). Device memory lives behind one small class, `DeviceBuffers` (pycuda:
docs/export.md: device memory stays behind one small class).

An engine only runs on the GPU model and TensorRT version it was built with, so the bundle
records a fingerprint next to each engine and the runner refuses a mismatch before it
deserializes anything (`check_fingerprint`).

tensorrt and pycuda are imported inside the functions that use them, so importing this module
costs nothing and works where neither is installed.
"""
import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from avqa_edge.errors import AvqaError
from avqa_edge.runtime.runners import Runner, Spec

REBUILD_COMMAND = "avqa-edge export --trt --from-bundle BUNDLE"
VERIFY_COMMAND = "avqa-edge parity BUNDLE --backend trt"
OVERRIDE_FLAG = "--allow-unverified-engines"
FINGERPRINT_KEYS = ("gpu_name", "compute_capability", "tensorrt", "cuda")

# TensorRT DataType member name -> numpy dtype. INT64 / UINT8 exist only in newer TensorRT
# (INT64 from 10.0), hence looked up by name rather than trusting `trt.nptype`.
_NUMPY_DTYPES = (
    ("FLOAT", np.float32),
    ("HALF", np.float16),
    ("INT8", np.int8),
    ("INT32", np.int32),
    ("INT64", np.int64),
    ("BOOL", np.bool_),
    ("UINT8", np.uint8),
)


# ----------------------------------------------------------------------------- imports

def import_tensorrt() -> Any:
    """`import tensorrt`, or an AvqaError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise AvqaError(
            f"TensorRT is not installed ({err}). Install it with pip install 'avqa-edge[tensorrt]' "
            "(desktop / RTX), or on a Jetson use JetPack's TensorRT (apt install python3-libnvinfer; "
            "a venv needs --system-site-packages) plus pip install pycuda. Without TensorRT, run the "
            "bundle's ONNX graphs with onnxruntime."
        ) from None
    return trt


def _import_pycuda() -> Any:
    """`import pycuda.driver` (the CUDA driver API that owns our buffers and stream)."""
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise AvqaError(
            f"pycuda is not installed ({err}); the TensorRT runner uses it for device memory. "
            "Install it with pip install pycuda (or pip install 'avqa-edge[tensorrt]')."
        ) from None
    return cuda


_LOGGER = []   # [(tensorrt module, its Logger)]: one logger per process, shared by builder and runtime


def trt_logger(trt: Any) -> Any:
    """The process-wide TensorRT logger (WARNING level).

    TensorRT keeps one global logger; passing a different one to a later Builder or Runtime
    only triggers a warning, so every caller shares this one.
    """
    if not _LOGGER or _LOGGER[0][0] is not trt:
        _LOGGER[:] = [(trt, trt.Logger(trt.Logger.WARNING))]
    return _LOGGER[0][1]


# ----------------------------------------------------------------------------- fingerprint

def _cuda_version_string(driver_version: int) -> str:
    """CUDA's integer version (12060) -> "12.6"."""
    return f"{driver_version // 1000}.{(driver_version % 1000) // 10}"


def _gpu_info_pycuda(device_index: int) -> Dict[str, str]:
    """GPU name, compute capability and the driver's CUDA version via pycuda."""
    import pycuda.driver as cuda
    cuda.init()
    if cuda.Device.count() <= device_index:
        raise RuntimeError(f"pycuda sees {cuda.Device.count()} CUDA device(s)")
    dev = cuda.Device(device_index)
    major, minor = dev.compute_capability()
    return {
        "gpu_name": str(dev.name()),
        "compute_capability": f"{major}.{minor}",
        "cuda": _cuda_version_string(int(cuda.get_driver_version())),
    }


def _import_cuda_python_driver() -> Any:
    """cuda-python's driver module: `cuda.bindings.driver` (12.6+) or the older `cuda.cuda`."""
    try:
        from cuda.bindings import driver
    except ImportError:
        from cuda import cuda as driver
    return driver


def _gpu_info_cuda_python(device_index: int) -> Dict[str, str]:
    """The same facts via cuda-python, the binding NVIDIA's own samples use from TensorRT 10.13."""
    drv = _import_cuda_python_driver()

    def ok(result: Tuple) -> Any:
        err, rest = result[0], result[1:]
        if int(err) != 0:   # CUresult.CUDA_SUCCESS == 0
            raise RuntimeError(f"CUDA driver call failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    ok(drv.cuInit(0))
    count = ok(drv.cuDeviceGetCount())
    if count <= device_index:
        raise RuntimeError(f"cuda-python sees {count} CUDA device(s)")
    dev = ok(drv.cuDeviceGet(device_index))
    name = ok(drv.cuDeviceGetName(256, dev))
    attr = drv.CUdevice_attribute
    major = ok(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
    minor = ok(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
    return {
        "gpu_name": str(name).strip(),
        "compute_capability": f"{major}.{minor}",
        "cuda": _cuda_version_string(int(ok(drv.cuDriverGetVersion()))),
    }


def gpu_info(device_index: int = 0) -> Tuple[Optional[Dict[str, str]], str]:
    """(facts about the NVIDIA GPU, "") or (None, why none was found).

    Tries pycuda (what `avqa-edge[tensorrt]` installs and JetPack users have), then
    cuda-python. Never raises: a missing binding or a failing cuInit both mean "no GPU here".
    """
    reasons = []
    for label, probe in (("pycuda", _gpu_info_pycuda), ("cuda-python", _gpu_info_cuda_python)):
        try:
            return probe(device_index), ""
        except ImportError:
            reasons.append(f"{label} is not installed")
        except Exception as err:   # cuInit fails without a driver or a visible GPU
            reasons.append(f"{label}: {err}")
    return None, "; ".join(reasons)


def device_fingerprint(device_index: int = 0) -> Dict[str, Optional[str]]:
    """{"gpu_name", "compute_capability" ("8.7"), "tensorrt" ("10.3.0"), "cuda" ("12.6")} of this device.

    "cuda" is the CUDA version the installed driver supports; "tensorrt" is None where
    TensorRT is not importable. Raises AvqaError where no NVIDIA GPU is visible.
    """
    info, reason = gpu_info(device_index)
    if info is None:
        raise AvqaError(f"No NVIDIA GPU is visible ({reason}).")
    try:
        import tensorrt as trt
        trt_version = str(trt.__version__)
    except ImportError:
        trt_version = None
    return {
        "gpu_name": info["gpu_name"],
        "compute_capability": info["compute_capability"],
        "tensorrt": trt_version,
        "cuda": info["cuda"],
    }


def fingerprint_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """One line per fingerprint key whose value differs; keys unknown on either side are skipped."""
    lines = []
    for key in FINGERPRINT_KEYS:
        want, have = recorded.get(key), current.get(key)
        if want is None or have is None:
            continue
        if str(want) != str(have):
            lines.append(f"{key}: engine built with {want!r}, this device has {have!r}")
    return lines


def check_fingerprint(recorded: Mapping[str, Any], current: Mapping[str, Any],
                      bundle: Optional[Union[str, Path]] = None) -> None:
    """Refuse an engine built for another GPU / TensorRT / CUDA, saying exactly what differs.

    TensorRT plans are not portable across GPU models or TensorRT versions ("engine plan file
    generated on an incompatible device"); rebuilding on the device is the only fix.
    """
    diffs = fingerprint_differences(recorded, current)
    if not diffs:
        return
    where = f" (bundle: {bundle})" if bundle is not None else ""
    raise AvqaError(
        "The TensorRT engine does not match this device" + where + ":\n  - "
        + "\n  - ".join(diffs)
        + "\nAn engine only runs on the GPU model and TensorRT version it was built with. "
        + f"Rebuild the engines on this device: {REBUILD_COMMAND}"
    )


# ----------------------------------------------------------------------------- parity verdicts

def unverified_engines(manifest: Mapping[str, Any], components: Any) -> List[str]:
    """One line per component whose engine lacks a passing parity verdict
    (manifest["engines"][c]["parity"], written by export/parity_refs.py), or whose verdict
    was given to another engine file than the one the manifest now lists."""
    engines = manifest.get("engines") or {}
    files = manifest.get("files") or {}
    lines = []
    for c in components:
        rec = engines.get(c) or {}
        verdict = rec.get("parity") or {}
        sha = (files.get(rec.get("file")) or {}).get("sha256")
        if not rec:
            lines.append(f"{c}: no engine")
        elif "passed" not in verdict:
            lines.append(f"{c}: no parity verdict")
        elif verdict.get("passed") is not True:
            lines.append(f"{c}: parity FAILED (report: {verdict.get('report')})")
        elif verdict.get("engine_sha256") and verdict["engine_sha256"] != sha:
            lines.append(f"{c}: the verdict was given to another engine file")
    return lines


def check_engine_verdicts(manifest: Mapping[str, Any], components: Any, bundle: Union[str, Path],
                          allow_unverified: bool = False, warn: Any = None) -> None:
    """Refuse TensorRT engines without a passing parity verdict (AvqaError saying how to
    verify them); with `allow_unverified`, `warn(message)` instead."""
    lines = unverified_engines(manifest, components)
    if not lines:
        return
    head = f"the TensorRT engines of {bundle} are not verified against PyTorch"
    body = ":\n  - " + "\n  - ".join(lines)
    if allow_unverified:
        if warn is not None:
            warn(f"WARNING: {head}{body}\nWARNING: serving them anyway ({OVERRIDE_FLAG}); answers may be wrong.")
        return
    raise AvqaError(f"{head}{body}\nVerify them on this device: {VERIFY_COMMAND.replace('BUNDLE', str(bundle))} "
                    f"(torch-free, against the PyTorch references stored in the bundle); or serve with --backend ort; "
                    f"or pass {OVERRIDE_FLAG} to serve them unverified.")


# ----------------------------------------------------------------------------- device memory

class DeviceBuffers:
    """Pinned host + device buffers per tensor name, one CUDA stream, on the device's primary context.

    The primary context is the one the CUDA runtime (and so TensorRT) uses, so pycuda and
    TensorRT share it. `activate()` pushes it around each use, so a runner built on one thread
    can run on another. `close()` frees everything.
    """

    def __init__(self, device_index: int = 0):
        cuda = _import_pycuda()
        self._cuda = cuda
        try:
            cuda.init()
            self._ctx = cuda.Device(device_index).retain_primary_context()
        except Exception as err:   # pycuda.driver.Error: no driver, no device, bad index
            raise AvqaError(f"No usable NVIDIA GPU {device_index} for TensorRT ({err}).") from None
        self._host = {}      # type: Dict[str, np.ndarray]
        self._device = {}    # type: Dict[str, Any]
        with self.activate():
            self._stream = cuda.Stream()
        self._closed = False

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make the context current on this thread for the duration of the block."""
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    @property
    def stream_handle(self) -> int:
        """The raw cudaStream_t that `execute_async_v3` takes."""
        return int(self._stream.handle)

    def ensure(self, name: str, shape: Tuple[int, ...], dtype: np.dtype) -> int:
        """Have a (shape, dtype) host/device pair for `name`; returns the device pointer.

        Reallocates only when the shape or dtype changes, so fixed-shape graphs allocate once.
        Call inside `activate()`.
        """
        host = self._host.get(name)
        if host is None or host.shape != tuple(shape) or host.dtype != dtype:
            self._free(name)
            host = self._cuda.pagelocked_empty(tuple(shape), dtype)
            self._host[name] = host
            self._device[name] = self._cuda.mem_alloc(max(host.nbytes, 1))   # 0 bytes is invalid
        return int(self._device[name])

    def to_device(self, name: str, array: np.ndarray) -> None:
        """Copy `array` into the pinned buffer and enqueue host -> device on the stream."""
        host = self._host[name]
        np.copyto(host, array)
        self._cuda.memcpy_htod_async(self._device[name], host, self._stream)

    def from_device(self, name: str) -> None:
        """Enqueue device -> host for `name` (read it after `synchronize()`)."""
        self._cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)

    def host(self, name: str) -> np.ndarray:
        return self._host[name]

    def synchronize(self) -> None:
        self._stream.synchronize()

    def _free(self, name: str) -> None:
        dev = self._device.pop(name, None)
        if dev is not None:
            dev.free()
        host = self._host.pop(name, None)
        base = getattr(host, "base", None)
        if base is not None and hasattr(base, "free"):   # pycuda's HostAllocation
            base.free()

    def close(self) -> None:
        """Free every buffer and the stream, then release the primary context. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self.activate():
            for name in list(self._device):
                self._free(name)
            self._stream = None
        self._ctx.detach()


# ----------------------------------------------------------------------------- runner

def numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    """TensorRT DataType -> numpy dtype (AvqaError for types numpy cannot hold, e.g. BF16, FP8)."""
    for member_name, np_type in _NUMPY_DTYPES:
        member = getattr(trt.DataType, member_name, None)
        if member is not None and dtype == member:
            return np.dtype(np_type)
    raise AvqaError(f"TensorRT tensor type {dtype} has no numpy equivalent")


class _TensorInfo:
    """One engine I/O tensor: name, input or output, shape (-1 = dynamic), numpy dtype."""

    def __init__(self, name: str, is_input: bool, shape: Tuple[int, ...], dtype: np.dtype):
        self.name, self.is_input, self.shape, self.dtype = name, is_input, shape, dtype


def _engine_io(trt: Any, engine: Any) -> List[_TensorInfo]:
    """The engine's I/O tensors in binding order (named-tensor API, TensorRT 8.5+)."""
    infos = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        infos.append(_TensorInfo(name, is_input, shape, numpy_dtype(trt, engine.get_tensor_dtype(name))))
    return infos


class TrtRunner(Runner):
    """Runs one TensorRT engine through the common runner interface (runtime/runners.py).

    engine_path: a serialized engine (`engines/<component>.engine` in the bundle).
    fingerprint: the fingerprint recorded when the engine was built (manifest.json); when
        given, `activate` checks it against this device before deserializing anything.

        with TrtRunner("bundle/engines/visual.engine", fingerprint=manifest["fingerprint"]) as r:
            out = r.infer({"frames": frames})
    """

    def __init__(self, engine_path: Union[str, Path], fingerprint: Optional[Mapping[str, Any]] = None,
                 device_index: int = 0, name: Optional[str] = None):
        self.engine_path = Path(engine_path)
        super().__init__(name or self.engine_path.name)
        self.fingerprint = dict(fingerprint) if fingerprint else None
        self.device_index = device_index
        # the bundle directory, for messages: engines live in BUNDLE/engines/
        parent = self.engine_path.parent
        self.bundle_dir = parent.parent if parent.name == "engines" else parent
        if not self.engine_path.is_file():
            raise AvqaError(f"TensorRT engine not found: {self.engine_path}. Build the engines on this device: "
                            f"{REBUILD_COMMAND}")
        self._buffers = None   # type: Optional[DeviceBuffers]
        self._runtime = self._engine = self._context = None
        self._io = []   # type: List[_TensorInfo]

    # -- lifetime (called by the base class's __enter__ / __exit__)

    def activate(self) -> None:
        """Check the fingerprint, then deserialize the engine and create its execution context."""
        trt = import_tensorrt()
        if self.fingerprint is not None:
            check_fingerprint(self.fingerprint, device_fingerprint(self.device_index), bundle=self.bundle_dir)
        self._buffers = DeviceBuffers(self.device_index)
        try:
            with self._buffers.activate():
                self._load(trt)
        except BaseException:
            self._buffers.close()
            self._buffers = None
            raise

    def _load(self, trt: Any) -> None:
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:   # TensorRT logs the cause (version / device mismatch, damaged file)
            raise AvqaError(
                f"TensorRT {getattr(trt, '__version__', '?')} could not deserialize {self.engine_path}: "
                "it was built for another GPU or TensorRT version, or the file is damaged. "
                f"Rebuild the engines on this device (bundle: {self.bundle_dir}): {REBUILD_COMMAND}")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise AvqaError(f"TensorRT could not create an execution context for {self.engine_path} "
                            "(out of GPU memory?)")
        self._io = _engine_io(trt, self._engine)

    def deactivate(self) -> None:
        """Destroy the context and engine inside the CUDA context, then free the buffers."""
        if self._buffers is None:
            return
        with self._buffers.activate():
            self._context = self._engine = self._runtime = None
        self._buffers.close()
        self._buffers = None

    # -- the runner interface (the base class checks names, dtypes and shapes before _infer)

    def _input_spec(self) -> Spec:
        """{input name: (shape, numpy dtype)}; -1 marks a dynamic dimension."""
        return {t.name: (t.shape, t.dtype) for t in self._io if t.is_input}

    def _output_names(self) -> List[str]:
        return [t.name for t in self._io if not t.is_input]

    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Set shapes and addresses, copy inputs in, run on the stream, copy outputs out."""
        ctx, buffers = self._context, self._buffers
        outputs = self._output_names()
        with buffers.activate():
            for t in self._io:
                if t.is_input:
                    ctx.set_input_shape(t.name, tuple(feed[t.name].shape))
            for t in self._io:   # output shapes are known once every input shape is set
                shape = tuple(int(d) for d in ctx.get_tensor_shape(t.name))
                if any(d < 0 for d in shape):
                    raise AvqaError(f"{self.name}: {t.name!r} has unresolved shape {shape} "
                                    "(data-dependent output shapes are not supported)")
                ctx.set_tensor_address(t.name, buffers.ensure(t.name, shape, t.dtype))
            for t in self._io:
                if t.is_input:
                    buffers.to_device(t.name, np.ascontiguousarray(feed[t.name]))
            if not ctx.execute_async_v3(buffers.stream_handle):
                raise AvqaError(f"{self.name}: TensorRT execution failed (see its log above)")
            for name in outputs:
                buffers.from_device(name)
            buffers.synchronize()
            return {name: buffers.host(name).copy() for name in outputs}

    def close(self) -> None:
        """Same as leaving the `with` block."""
        self.__exit__(None, None, None)
