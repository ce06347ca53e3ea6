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
