"""`avqa-edge bench`: latency and memory per component against PyTorch (issue 3)."""
from .cli import _planned

_planned("bench", 3, "latency and memory per component against PyTorch")
