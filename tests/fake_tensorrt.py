"""Stand-ins for `tensorrt`, `pycuda.driver` and cuda-python that record every call (tests only).

TensorRT cannot be installed where this project is built and tested, so the engine build and
the runner are tested against these fakes. Each fake TensorRT mimics the API surface of the
version it is made for, so code that touches an API the version lacks fails the same way:
- 8.5: no NetworkDefinitionCreationFlag.STRONGLY_TYPED, no LayerType.NORMALIZATION, no INT64;
- 8.6: adds LayerType.NORMALIZATION;
- 10.x: STRONGLY_TYPED; EXPLICIT_BATCH still defined (deprecated); a strongly typed network
  with BuilderFlag.FP16 fails to build, as in TensorRT 10;
- 11.x: no BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS, no EXPLICIT_BATCH, no
  platform_has_fast_fp16, and `layer.precision` / `set_output_type` raise.

Every call is appended to `calls` as (name, args). Device memory is a shared dict of numpy
byte arrays, so data copied in by the fake pycuda really flows through the fake engine.

With `FakeConfig(onnx_engines=True)` an engine runs the ONNX graph it was built from in ONNX
Runtime (its I/O is the graph's), so a real bundle goes through build, runner and parity;
`output_hook(onnx_path, outputs)` may alter what an engine returns (a broken engine).
"""
import enum
import sys
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


class Calls(list):
    """[(name, args)] in call order."""

    def names(self) -> List[str]:
        return [name for name, _ in self]

    def args(self, name: str) -> List[tuple]:
        return [args for n, args in self if n == name]


class DeviceMemory:
    """Fake GPU memory: address -> uint8 buffer."""

    def __init__(self):
        self.blocks: Dict[int, np.ndarray] = {}
        self._next = 0x10000

    def alloc(self, nbytes: int) -> int:
        addr = self._next
        self._next += nbytes + 4096
        self.blocks[addr] = np.zeros(nbytes, np.uint8)
        return addr

    def free(self, addr: int) -> None:
        del self.blocks[addr]

    def write(self, addr: int, array: np.ndarray) -> None:
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.blocks[addr][:raw.size] = raw

    def read(self, addr: int, shape: Tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        return self.blocks[addr][:n].copy().view(dtype).reshape(shape)


# ----------------------------------------------------------------------------- network description

class LayerSpec:
    """A layer the fake parser puts in the network: name, LayerType name, op name, output dtype."""

    def __init__(self, name: str, type_name: str, op: Optional[str] = None, out_dtype: str = "FLOAT"):
        self.name, self.type_name, self.op, self.out_dtype = name, type_name, op, out_dtype


DEFAULT_LAYERS = (
    LayerSpec("matmul", "MATRIX_MULTIPLY"),
    LayerSpec("add_bias", "ELEMENTWISE", op="SUM"),
    LayerSpec("ln_mean", "REDUCE"),
    LayerSpec("ln_pow", "ELEMENTWISE", op="POW"),
    LayerSpec("ln_sqrt", "UNARY", op="SQRT"),
    LayerSpec("relu", "ACTIVATION"),
    LayerSpec("softmax", "SOFTMAX"),
    LayerSpec("exp", "UNARY", op="EXP"),
    LayerSpec("abs", "UNARY", op="ABS"),
    LayerSpec("shape_reduce", "REDUCE", out_dtype="INT32"),   # an integer reduce cannot be pinned
)
NORMALIZATION_LAYER = LayerSpec("layernorm", "NORMALIZATION")


class EngineTensor:
    """An engine I/O tensor: name, "INPUT"/"OUTPUT", shape, DataType member name."""

    def __init__(self, name: str, mode: str, shape: Sequence[int], dtype: str = "FLOAT"):
        self.name, self.mode, self.shape, self.dtype = name, mode, tuple(shape), dtype


def double_inputs(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Default engine function: y = 2 x, count = sum(tokens) per row."""
    return {"y": 2 * inputs["x"], "count": inputs["tokens"].sum(axis=1, keepdims=True).astype(np.int32)}


DEFAULT_ENGINE_IO = (
    EngineTensor("x", "INPUT", (1, 4)),
    EngineTensor("tokens", "INPUT", (1, 3), "INT32"),
    EngineTensor("y", "OUTPUT", (1, 4)),
    EngineTensor("count", "OUTPUT", (1, 1), "INT32"),
)


class FakeConfig:
    """What a test chooses about the fake TensorRT's behaviour."""

    def __init__(self, version: str = "10.3.0", layers: Sequence[LayerSpec] = DEFAULT_LAYERS,
                 network_inputs: Sequence[Tuple[str, Tuple[int, ...]]] = (("x", (1, 4)),),
                 parse_errors: Sequence[str] = (), build_fails: bool = False,
                 engine_io: Sequence[EngineTensor] = DEFAULT_ENGINE_IO,
                 compute: Callable = double_inputs, strongly_typed_flag: bool = True,
                 onnx_engines: bool = False, output_hook: Optional[Callable] = None):
        self.version = version
        self.major, self.minor = (int(p) for p in version.split(".")[:2])
        self.layers = list(layers)
        if (self.major, self.minor) >= (8, 6) and NORMALIZATION_LAYER not in self.layers:
            self.layers.append(NORMALIZATION_LAYER)
        self.network_inputs = list(network_inputs)
        self.parse_errors = list(parse_errors)
        self.build_fails = build_fails
        self.engine_io = list(engine_io)
        self.compute = compute
        self.strongly_typed_flag = strongly_typed_flag
        self.onnx_engines = onnx_engines
        self.output_hook = output_hook

    def engine_bytes(self, onnx_path: str = "") -> bytes:
        """What build_serialized_network returns (ONNX-backed engines carry their graph's path)."""
        head = b"fake-engine " + self.version.encode()
        return head + b"\n" + onnx_path.encode() if self.onnx_engines else head


_ORT_TO_TRT = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int64)": "INT64", "tensor(uint8)": "UINT8",
               "tensor(int32)": "INT32", "tensor(bool)": "BOOL"}


def onnx_engine(path: str, hook: Optional[Callable] = None) -> Tuple[List[EngineTensor], Callable]:
    """(I/O, compute) of an engine that runs the ONNX graph at `path` in ONNX Runtime."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3          # errors only (FP16 graphs log constant-folding notes)
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    io = [EngineTensor(t.name, mode, t.shape, _ORT_TO_TRT[t.type])
          for mode, ts in (("INPUT", sess.get_inputs()), ("OUTPUT", sess.get_outputs())) for t in ts]
    names = [t.name for t in sess.get_outputs()]

    def compute(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outs = dict(zip(names, sess.run(names, feeds)))
        return hook(path, outs) if hook is not None else outs
    return io, compute


# ----------------------------------------------------------------------------- fake tensorrt

def make_tensorrt(cfg: FakeConfig, calls: Calls, memory: DeviceMemory) -> types.ModuleType:
    """A module object that behaves like `import tensorrt` of version cfg.version."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = cfg.version
    new_api = cfg.major >= 11

    layer_types = ["CONVOLUTION", "MATRIX_MULTIPLY", "ELEMENTWISE", "UNARY", "REDUCE", "SOFTMAX",
                   "ACTIVATION", "SHUFFLE", "CONSTANT"]
    if (cfg.major, cfg.minor) >= (8, 6):
        layer_types.append("NORMALIZATION")
    dtypes = ["FLOAT", "HALF", "INT8", "INT32", "BOOL"] + (["UINT8", "INT64", "BF16"] if cfg.major >= 10 else [])
    builder_flags = ["TF32", "REFIT"] + ([] if new_api else ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"])
    if new_api:
        network_flags = ["STRONGLY_TYPED"] if cfg.strongly_typed_flag else []
    elif cfg.major >= 10:
        network_flags = ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    else:
        network_flags = ["EXPLICIT_BATCH"]

    def int_enum(name: str, members: Sequence[str]) -> type:
        return enum.IntEnum(name, {m: i for i, m in enumerate(members)}) if members else type(name, (), {})

    trt.LayerType = int_enum("LayerType", layer_types)
    trt.ElementWiseOperation = int_enum("ElementWiseOperation", ["SUM", "PROD", "SUB", "DIV", "POW"])
    trt.UnaryOperation = int_enum("UnaryOperation", ["EXP", "LOG", "SQRT", "ABS", "NEG"])
    trt.DataType = int_enum("DataType", dtypes)
    trt.float32, trt.float16, trt.int32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    trt.BuilderFlag = int_enum("BuilderFlag", builder_flags)
    trt.NetworkDefinitionCreationFlag = int_enum("NetworkDefinitionCreationFlag", network_flags)
    trt.MemoryPoolType = int_enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"])
    trt.TensorIOMode = int_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])

    class Logger:
        WARNING, INFO, ERROR = 2, 3, 1

        def __init__(self, severity=2):
            calls.append(("Logger", (severity,)))

    class ITensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, shape, dtype

    class ILayer:
        """As in the real bindings, get_layer returns this base class: no `.op` until re-classed."""

        def __init__(self, spec: LayerSpec):
            self.name = spec.name
            self.type = trt.LayerType[spec.type_name]
            self._op_name = spec.op
            self._out = ITensor(spec.name + "_out", (1, 4), trt.DataType[spec.out_dtype])
            self.num_outputs = 1

        def get_output(self, j):
            return self._out

        @property
        def precision(self):
            return trt.float32

        @precision.setter
        def precision(self, value):
            if new_api:
                raise AttributeError("ILayer.precision was removed in TensorRT 11")
            calls.append(("layer.precision", (self.name, value)))

        def set_output_type(self, j, dtype):
            if new_api:
                raise AttributeError("ILayer.set_output_type was removed in TensorRT 11")
            calls.append(("layer.set_output_type", (self.name, j, dtype)))

    class IElementWiseLayer(ILayer):
        @property
        def op(self):
            return trt.ElementWiseOperation[self._op_name]

    class IUnaryLayer(ILayer):
        @property
        def op(self):
            return trt.UnaryOperation[self._op_name]

    class INetworkDefinition:
        def __init__(self, flags):
            self.flags = flags
            self.layers, self.inputs = [], []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            calls.append(("OnnxParser", ()))

        def parse_from_file(self, path):
            calls.append(("parser.parse_from_file", (path,)))
            self.network.onnx_path = str(path)
            if cfg.parse_errors:
                return False
            self.network.layers = [ILayer(spec) for spec in cfg.layers]
            self.network.inputs = [ITensor(n, s, trt.float32) for n, s in cfg.network_inputs]
            return True

        @property
        def num_errors(self):
            return len(cfg.parse_errors)

        def get_error(self, i):
            return ParserError(cfg.parse_errors[i])

    class ITimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"|timings"

    class IOptimizationProfile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile.set_shape", (name, lo, opt, hi)))

    class IBuilderConfig:
        def __init__(self):
            self.flags, self.cache = set(), None

        def set_flag(self, flag):
            calls.append(("config.set_flag", (flag.name,)))
            self.flags.add(flag.name)

        def set_memory_pool_limit(self, pool, size):
            calls.append(("config.set_memory_pool_limit", (pool.name, size)))

        def create_timing_cache(self, data):
            calls.append(("config.create_timing_cache", (bytes(data),)))
            return ITimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("config.set_timing_cache", (cache.data, ignore_mismatch)))
            if cache.data.startswith(b"foreign"):   # a cache from another GPU / TensorRT
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            calls.append(("config.add_optimization_profile", ()))

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder", ()))

        if not new_api:
            platform_has_fast_fp16 = True

        def create_network(self, flags=0):
            calls.append(("builder.create_network", (flags,)))
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            calls.append(("builder.build_serialized_network", ()))
            strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            strongly_typed = new_api or (strongly is not None and network.flags & (1 << int(strongly)))
            if cfg.build_fails or (strongly_typed and "FP16" in config.flags):
                return None   # TensorRT 10 rejects precision flags on a strongly typed network
            return cfg.engine_bytes(getattr(network, "onnx_path", ""))

    class IExecutionContext:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            calls.append(("context.set_input_shape", (name, tuple(shape))))
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes.get(name, self.engine.get_tensor_shape(name))

        def set_tensor_address(self, name, ptr):
            calls.append(("context.set_tensor_address", (name, ptr)))
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            calls.append(("context.execute_async_v3", (stream_handle,)))
            feeds = {}
            for t in self.engine.io_list:
                if t.mode == "INPUT":
                    feeds[t.name] = memory.read(self.addresses[t.name], self.get_tensor_shape(t.name),
                                                _NP[t.dtype])
            for name, value in self.engine.compute(feeds).items():
                memory.write(self.addresses[name], value)
            return True

    class ICudaEngine:
        def __init__(self, io_list=None, compute=None):
            self.io_list = list(io_list if io_list is not None else cfg.engine_io)
            self.compute = compute or cfg.compute
            self.io = {t.name: t for t in self.io_list}

        @property
        def num_io_tensors(self):
            return len(self.io_list)

        def get_tensor_name(self, i):
            return self.io_list[i].name

        def get_tensor_mode(self, name):
            return trt.TensorIOMode[self.io[name].mode]

        def get_tensor_shape(self, name):
            return self.io[name].shape

        def get_tensor_dtype(self, name):
            return trt.DataType[self.io[name].dtype]

        def create_execution_context(self):
            calls.append(("engine.create_execution_context", ()))
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger):
            calls.append(("Runtime", ()))

        def deserialize_cuda_engine(self, data):
            calls.append(("runtime.deserialize_cuda_engine", (bytes(data),)))
            head, _, onnx_path = bytes(data).partition(b"\n")
            if head != b"fake-engine " + cfg.version.encode() or bool(onnx_path) != cfg.onnx_engines:
                return None   # built by another TensorRT version, or not an engine
            if cfg.onnx_engines:
                return ICudaEngine(*onnx_engine(onnx_path.decode(), cfg.output_hook))
            return ICudaEngine()

    for cls in (Logger, ILayer, IElementWiseLayer, IUnaryLayer, OnnxParser, Builder, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt


_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT8": np.int8, "BOOL": np.bool_,
       "INT64": np.int64, "UINT8": np.uint8}


# ----------------------------------------------------------------------------- fake pycuda

class GpuSpec:
    """The fake device: name, compute capability, driver CUDA version (int), count."""

    def __init__(self, name: str = "Orin", cc: Tuple[int, int] = (8, 7), cuda: int = 12060, count: int = 1):
        self.name, self.cc, self.cuda, self.count = name, cc, cuda, count


def make_pycuda(gpu: GpuSpec, calls: Calls, memory: DeviceMemory) -> Tuple[types.ModuleType, types.ModuleType]:
    """(pycuda package, pycuda.driver) backed by `memory`."""
    drv = types.ModuleType("pycuda.driver")

    def init():
        calls.append(("cuda.init", ()))
        if gpu.count == 0:
            raise RuntimeError("cuInit failed: no CUDA-capable device is detected")

    class PrimaryContext:
        def push(self):
            calls.append(("ctx.push", ()))

        def detach(self):
            calls.append(("ctx.detach", ()))

    class Context:
        @staticmethod
        def pop():
            calls.append(("ctx.pop", ()))

    class Device:
        def __init__(self, index):
            if index >= gpu.count:
                raise RuntimeError("invalid device ordinal")

        @staticmethod
        def count():
            return gpu.count

        def name(self):
            return gpu.name

        def compute_capability(self):
            return gpu.cc

        def retain_primary_context(self):
            calls.append(("device.retain_primary_context", ()))
            return PrimaryContext()

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.addr = memory.alloc(nbytes)

        def __int__(self):
            return self.addr

        def free(self):
            calls.append(("cuda.free", (self.addr,)))
            memory.free(self.addr)

    class Stream:
        handle = 0xBEEF

        def __init__(self):
            calls.append(("cuda.Stream", ()))

        def synchronize(self):
            calls.append(("stream.synchronize", ()))

    def mem_alloc(nbytes):
        calls.append(("cuda.mem_alloc", (nbytes,)))
        return DeviceAllocation(nbytes)

    def pagelocked_empty(shape, dtype):
        calls.append(("cuda.pagelocked_empty", (tuple(shape), np.dtype(dtype))))
        return np.empty(shape, dtype)

    def memcpy_htod_async(dest, src, stream=None):
        calls.append(("cuda.memcpy_htod_async", (int(dest),)))
        memory.write(int(dest), src)

    def memcpy_dtoh_async(dest, src, stream=None):
        calls.append(("cuda.memcpy_dtoh_async", (int(src),)))
        dest[...] = memory.read(int(src), dest.shape, dest.dtype)

    for name, value in dict(init=init, Context=Context, Device=Device, Stream=Stream, mem_alloc=mem_alloc,
                            pagelocked_empty=pagelocked_empty, memcpy_htod_async=memcpy_htod_async,
                            memcpy_dtoh_async=memcpy_dtoh_async,
                            get_driver_version=lambda: gpu.cuda).items():
        setattr(drv, name, value)
    pkg = types.ModuleType("pycuda")
    pkg.__path__ = []
    pkg.driver = drv
    return pkg, drv


def make_cuda_python(gpu: GpuSpec) -> Tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """(cuda, cuda.bindings, cuda.bindings.driver): cuda-python's (error, value) tuple style."""
    drv = types.ModuleType("cuda.bindings.driver")
    ok = 0
    drv.CUdevice_attribute = enum.IntEnum("CUdevice_attribute", {
        "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": 75, "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": 76})
    drv.cuInit = lambda flags: (ok,)
    drv.cuDeviceGetCount = lambda: (ok, gpu.count)
    drv.cuDeviceGet = lambda i: (ok, i)
    drv.cuDeviceGetName = lambda n, dev: (ok, gpu.name.encode() + b"\0" * (n - len(gpu.name)))
    drv.cuDeviceGetAttribute = lambda attr, dev: (ok, gpu.cc[0] if attr.name.endswith("MAJOR") else gpu.cc[1])
    drv.cuDriverGetVersion = lambda: (ok, gpu.cuda)
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []
    bindings.driver = drv
    pkg = types.ModuleType("cuda")
    pkg.__path__ = []
    pkg.bindings = bindings
    return pkg, bindings, drv


# ----------------------------------------------------------------------------- one handle for a test

class FakeDevice:
    """A fake TensorRT + pycuda pair sharing one call log and one device memory."""

    def __init__(self, cfg: Optional[FakeConfig] = None, gpu: Optional[GpuSpec] = None):
        self.cfg = cfg or FakeConfig()
        self.gpu = gpu or GpuSpec()
        self.calls = Calls()
        self.memory = DeviceMemory()
        self.trt = make_tensorrt(self.cfg, self.calls, self.memory)
        self.pycuda, self.driver = make_pycuda(self.gpu, self.calls, self.memory)

    def install(self, monkeypatch, pycuda: bool = True) -> "FakeDevice":
        """Put the fakes in sys.modules (cuda-python blocked, so pycuda is the only GPU source)."""
        modules = sys.modules
        monkeypatch.setitem(modules, "tensorrt", self.trt)
        monkeypatch.setitem(modules, "pycuda", self.pycuda if pycuda else None)
        monkeypatch.setitem(modules, "pycuda.driver", self.driver if pycuda else None)
        for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
            monkeypatch.setitem(modules, name, None)
        return self
