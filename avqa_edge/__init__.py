"""avqa-edge: audio-visual question answering that keeps answering when a sensor fails."""

__version__ = "0.1.0"
