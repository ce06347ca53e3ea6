"""A `python -c` script that runs the CLI as a device without torch would.

`sys.modules['torch'] = None` makes any `import torch` fail; on exit the script prints which
training-side modules (avqa_edge.toolkit / avqa_edge.export) were loaded, so that a test can
assert the serve path never touched them: `TORCH_FREE in stderr`.
"""
NO_TORCH = (
    "import sys, faulthandler, signal\n"
    "faulthandler.register(signal.SIGUSR1, all_threads=True)   # stacks on demand (a stuck shutdown)\n"
    "sys.modules['torch'] = None   # any 'import torch' now fails\n"
    "from avqa_edge.cli import app\n"
    "try:\n"
    "    app(sys.argv[1:])\n"
    "finally:\n"
    "    bad = [m for m in sys.modules if m.startswith(('avqa_edge.toolkit', 'avqa_edge.export'))]\n"
    "    print('imported-training-code:', bad, file=sys.stderr, flush=True)\n"
)
TORCH_FREE = "imported-training-code: []"
