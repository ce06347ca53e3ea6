"""avqa-edge: audio-visual question answering that keeps answering when a sensor fails.

The Python API (docs/python-api.md), all torch-free and imported on first use:

    from avqa_edge import Pipeline                  # a bundle's graphs: answer one clip
    pipe = Pipeline.from_bundle("bundles/default")  # ONNX Runtime; backend="trt" for engines
    ans = pipe.answer(frames, audio, "How many instruments are sounding?")

    from avqa_edge import ServeConfig, build_service, run_server   # live sensors + HTTP
"""

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily so `import avqa_edge` stays instant and
# never imports onnxruntime, OpenCV or torch by itself.
_API = {
    "Pipeline": "avqa_edge.runtime.pipeline",
    "Answer": "avqa_edge.runtime.pipeline",
    "Bundle": "avqa_edge.runtime.bundle",
    "ServeConfig": "avqa_edge.runtime.service",
    "Service": "avqa_edge.runtime.service",
    "build_service": "avqa_edge.runtime.service",
    "run_server": "avqa_edge.runtime.server",
    "AvqaError": "avqa_edge.errors",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        import importlib
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'avqa_edge' has no attribute {name!r}")


def __dir__():
    return __all__
