"""`avqa-edge serve` (and `calibrate`): torch-free live serving (issue 4)."""
from .cli import _planned

_planned("serve", 4, "torch-free live serving with per-sensor health and fallback")
