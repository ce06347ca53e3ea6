"""The runtime never imports torch (or the training code)."""
import pkgutil
import subprocess
import sys

import avqa_edge.runtime


def test_runtime_imports_without_torch():
    mods = [f"avqa_edge.runtime.{m.name}" for m in pkgutil.iter_modules(avqa_edge.runtime.__path__)]
    assert "avqa_edge.runtime.signal" in mods
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        f"for m in {mods!r}:\n"
        "    __import__(m)\n"
        "bad = [m for m in sys.modules if m.startswith('avqa_edge.toolkit')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_python_api_is_exported_and_torch_free():
    """`from avqa_edge import Pipeline, ...` works where torch cannot be imported, and a bare
    `import avqa_edge` loads none of the heavy libraries."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import avqa_edge\n"
        "assert not {'onnxruntime', 'cv2', 'fastapi'} & set(sys.modules), 'import avqa_edge stays light'\n"
        "from avqa_edge import Pipeline, Bundle, ServeConfig, build_service, run_server, AvqaError\n"
        "assert Pipeline.from_bundle and callable(build_service) and callable(run_server)\n"
        "assert set(avqa_edge.__all__) >= {'Pipeline', 'build_service', 'ServeConfig'}\n"
        "try:\n"
        "    avqa_edge.NoSuchThing\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('unknown names must raise AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
