"""One runner interface for every backend (Polygraphy's runner habit), torch-free, Python 3.8+.

A runner wraps one graph (ONNX file or TensorRT engine):

    with OrtRunner("bundle/onnx/visual.onnx", threads=1) as r:
        r.input_spec()      # {"frames": ((1, 10, 2, 32, 48, 3), dtype('uint8'))}
        r.output_names      # ["v"]
        out = r.infer({"frames": frames})   # {"v": array (1, 10, 64, 4, 6) float32}

`infer` checks the feed against the graph's own metadata (names, dtypes, shapes; -1 in a
spec is a free dimension) and raises AvqaError with a message naming the graph, the input
and what was expected. Subclasses (ONNX Runtime here, TensorRT in runtime/trt.py) implement
`activate`, `deactivate`, `_input_spec`, `_output_names` and `_infer`; the base keeps the
checks and the context-manager protocol. Sensor fallback logic stays outside runners.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.errors import AvqaError

# ONNX Runtime's config key (onnxruntime_session_options_config_keys.h) for busy-waiting intra-op threads
SPIN_KEY = "session.intra_op.allow_spinning"

Spec = Dict[str, Tuple[Tuple[int, ...], np.dtype]]

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


class Runner:
    """Base runner: a context manager with `input_spec()`, `output_names` and `infer(feed)`."""

    def __init__(self, name: str):
        self.name = name
        self.is_active = False

    # -- to implement -----------------------------------------------------------------------
    def activate(self) -> None:
        """Load the graph / engine (and allocate what it needs)."""
        raise NotImplementedError

    def deactivate(self) -> None:
        """Free what `activate` allocated."""
        raise NotImplementedError

    def _input_spec(self) -> Spec:
        raise NotImplementedError

    def _output_names(self) -> List[str]:
        raise NotImplementedError

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    # -- common -----------------------------------------------------------------------------
    def __enter__(self) -> "Runner":
        if not self.is_active:
            self.activate()
            self.is_active = True
        return self

    def __exit__(self, *exc) -> None:
        if self.is_active:
            self.deactivate()
            self.is_active = False

    def _require_active(self) -> None:
        if not self.is_active:
            raise AvqaError(f"runner {self.name} is not active: use it as a context manager (with runner: ...) "
                            "or call __enter__() first")

    def input_spec(self) -> Spec:
        """{input name: (shape, numpy dtype)}; -1 marks a free dimension."""
        self._require_active()
        return self._input_spec()

    @property
    def output_names(self) -> List[str]:
        self._require_active()
        return self._output_names()

    def check_feed(self, feed: Dict[str, np.ndarray]) -> None:
        """Raise AvqaError unless `feed` has exactly the graph's inputs with their dtypes and shapes."""
        spec = self.input_spec()
        missing = [n for n in spec if n not in feed]
        extra = [n for n in feed if n not in spec]
        if missing or extra:
            raise AvqaError(f"{self.name}: inputs {sorted(feed)} given, the graph takes {list(spec)}"
                            + (f" (missing {missing})" if missing else "") + (f" (unknown {extra})" if extra else ""))
        for n, (shape, dtype) in spec.items():
            x = feed[n]
            if not isinstance(x, np.ndarray):
                raise AvqaError(f"{self.name}: input {n!r} is a {type(x).__name__}, expected a numpy array")
            if x.dtype != dtype:
                raise AvqaError(f"{self.name}: input {n!r} has dtype {x.dtype}, expected {np.dtype(dtype)}")
            if len(x.shape) != len(shape) or any(s != -1 and s != d for s, d in zip(shape, x.shape)):
                want = tuple("?" if s == -1 else s for s in shape)
                raise AvqaError(f"{self.name}: input {n!r} has shape {tuple(x.shape)}, expected {want}")

    def infer(self, feed: Dict[str, np.ndarray], check: bool = True) -> Dict[str, np.ndarray]:
        """Run the graph on `feed` ({input name: array}) -> {output name: array}."""
        self._require_active()
        if check:
            self.check_feed(feed)
        return self._infer(feed)


class OrtRunner(Runner):
    """ONNX Runtime runner. threads: intra-op threads (0 = ONNX Runtime's default);
    providers: execution providers (default CPU only); session_config: extra ONNX Runtime config
    entries (e.g. {SPIN_KEY: "1"}), applied last."""

    def __init__(self, path, threads: int = 0, providers: Optional[Sequence] = None, name: Optional[str] = None,
                 session_config: Optional[Dict[str, str]] = None):
        super().__init__(name or str(path))
        self.path = str(path)
        self.threads = int(threads)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.session_config = dict(session_config or {})
        self.ort_session = None

    def activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise AvqaError("onnxruntime is not installed: pip install onnxruntime "
                            "(or 'avqa-edge[runtime]'; on Jetson NVIDIA's onnxruntime-gpu wheel, docs/export.md)") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL   # AVR 2x slower below it
        if self.threads != 1:
            # a pipeline holds seven sessions, each with its own pool: idle workers that spin
            # take the core the next graph needs (measured on 2 cores: 4-8x slower)
            opts.add_session_config_entry(SPIN_KEY, "0")
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, value)
        opts.log_severity_level = 3          # errors only (FP16 graphs log constant-folding notes)
        try:
            self.ort_session = ort.InferenceSession(self.path, opts, providers=self.providers)
        except Exception as e:               # onnxruntime raises its own exception types
            raise AvqaError(f"{self.name}: ONNX Runtime could not load {self.path}: {e}") from None
        self._spec = {i.name: (tuple(d if isinstance(d, int) else -1 for d in i.shape), np.dtype(_ORT_TYPES[i.type]))
                      for i in self.ort_session.get_inputs()}
        self._outs = [o.name for o in self.ort_session.get_outputs()]

    def deactivate(self) -> None:
        self.ort_session = None

    def _input_spec(self) -> Spec:
        return dict(self._spec)

    def _output_names(self) -> List[str]:
        return list(self._outs)

    def metadata(self) -> Dict[str, str]:
        """The graph's metadata_props (component, config hash, precision, ...)."""
        self._require_active()
        return dict(self.ort_session.get_modelmeta().custom_metadata_map)

    def _infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outs = self.ort_session.run(self._outs, feed)
        return dict(zip(self._outs, outs))
