"""The built-in benchmark: procedurally generated audio-visual clips modelled on MUSIC-AVQA.

Every clip is ``T_SEGMENTS`` one-second segments of raw video frames (``FRAMES_PER_SEGMENT``
RGB frames of ``FRAME_H x FRAME_W`` per segment) and mono audio at ``SAMPLE_RATE``, so a
model's encoders see real signals. A clip shows 0-4 instruments on a 3 x 2 grid (left /
middle / right columns, two rows of 16 x 16 px cells); each has its own look (shape, colour,
texture) and its own sound (harmonic profile, pitch range, envelope). The cues mirror real
footage:

* a sounding instrument moves (its two frames in a sounding segment are 1-2 px apart),
  silent ones stay still apart from the global camera jitter;
* nearer instruments are drawn larger and tend to be louder (correlation ~0.5, not a rule);
* audio is mono (location cannot be heard), with low background noise; the video has a
  textured background, pixel noise, camera jitter and per-segment lighting changes;
* some visible instruments stay silent, and sometimes an off-screen instrument sounds.

Ground truth lives in a :class:`Scene`. ``render`` realises each sounding instrument at the
loudness stored in the scene (RMS of its own signal over its sounding segments, before
mixing), so every answer of :func:`candidate_questions` is computed from the scene alone.
:func:`generate` samples scenes, renders them, and picks questions so that answers are
balanced within each template (and within each question text, so a name in the question is
no shortcut). Everything is deterministic from ``(config, seed, split)``.

Versions (``SynthConfig.version``): 1, the default, is what every run and result so far used,
bit for bit. 2 draws, after all of version 1's draws, a light or dark finish for each visible
instrument and a low or high register for every one (the register follows the finish with
chance 0.8), and adds the Visual/Identity and Visual/Attribute questions, which need the video
but whose answers the audio predicts imperfectly: with the camera missing there is a partly
recoverable gap (toolkit/scoring.py: CLASSIFICATION says which types each sensor can answer).

Modules: config (constants, SynthConfig), scene (ground truth and its sampling), video and
audio (rendering each), noise (shared noise, per-part random streams), render (a scene ->
frames, audio), questions (templates, candidates, the balanced choice), cache (a split, built
or read from its .npz cache).
"""
from .cache import cache_key, generate
from .config import BENCHMARK_VERSIONS, GENERATOR_VERSION, INSTRUMENTS, LOCATIONS, SPLITS, SynthConfig, generator_version
from .questions import TEMPLATES, V2_TEMPLATES, candidate_questions, template_of, templates
from .render import render
from .scene import Scene, Source, sample_scene, segment_labels

__all__ = [
    "BENCHMARK_VERSIONS", "GENERATOR_VERSION", "INSTRUMENTS", "LOCATIONS", "SPLITS", "TEMPLATES", "V2_TEMPLATES",
    "SynthConfig", "Source", "Scene",
    "sample_scene", "render", "candidate_questions", "template_of", "generate", "cache_key",
    "segment_labels", "generator_version", "templates",
]
