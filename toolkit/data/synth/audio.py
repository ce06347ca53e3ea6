"""Rendering audio: each instrument's sound (harmonics, pitch range, envelope) and the mix."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avqa_edge.runtime.signal import SAMPLE_RATE, SEGMENT_SAMPLES

from .config import INSTRUMENTS, PEAK_LIMIT, _N_SAMPLES
from .noise import _noise_bank, _stream
from .scene import Scene, Source
from .video import LOOKS


@dataclass(frozen=True)
class _Sound:
    f_range: Tuple[float, float]         # fundamental range (Hz)
    harmonics: Tuple[float, ...]         # amplitude of harmonic k+1
    envelope: str                        # "pluck" (decay per note) | "sustain" | "noise" (drum)
    note: Tuple[float, float]            # note length range (s)
    tau: float = 0.3                     # decay time constant (pluck / noise)
    attack: float = 0.01                 # s
    vibrato: float = 0.0                 # relative frequency modulation depth at 5.5 Hz
    tremolo: float = 0.0                 # amplitude modulation depth at 6.5 Hz
    breath: float = 0.0                  # added noise, relative


SOUNDS: Dict[str, _Sound] = {
    "piano": _Sound((220, 587), (1.0, 0.45, 0.25, 0.12, 0.06), "pluck", (0.25, 0.5), tau=0.45,
                    attack=0.004),
    "violin": _Sound((392, 880), (1.0, 0.7, 0.5, 0.35), "sustain", (0.5, 1.0),
                     attack=0.06, vibrato=0.02),
    "flute": _Sound((520, 1200), (1.0, 0.18, 0.04), "sustain", (0.4, 0.8), attack=0.05,
                    breath=0.12),
    "guitar": _Sound((147, 392), (1.0, 0.9, 0.75, 0.6, 0.45, 0.35, 0.25, 0.18, 0.12),
                     "pluck", (0.18, 0.35), tau=0.16, attack=0.002),
    "drum": _Sound((55, 95), (1.0,), "noise", (0.2, 0.5), tau=0.07, attack=0.001),
    "trumpet": _Sound((233, 700), (0.4, 0.75, 1.0, 0.85, 0.55), "sustain", (0.3, 0.6),
                      attack=0.025),
    "cello": _Sound((98, 247), tuple(1.0 / k ** 0.7 for k in range(1, 15)), "sustain",
                    (0.6, 1.2), attack=0.08, tremolo=0.6),
    "xylophone": _Sound((600, 1200), (1.0, 0.0, 0.5), "pluck", (0.12, 0.25), tau=0.07,
                        attack=0.001),
}
assert set(SOUNDS) == set(INSTRUMENTS) == set(LOOKS)

_TABLE_BITS = 12
_TABLE_N = 1 << _TABLE_BITS
_TABLES: Dict[str, np.ndarray] = {}
_T_AXIS = np.arange(_N_SAMPLES, dtype=np.float64) / SAMPLE_RATE
_VIBRATO = np.sin(2 * np.pi * 5.5 * _T_AXIS)
_TREMOLO = np.sin(2 * np.pi * 6.5 * _T_AXIS).astype(np.float32)


def _table(name: str) -> np.ndarray:
    """One period of the instrument's waveform (harmonic sum), float32, peak-normalised."""
    tab = _TABLES.get(name)
    if tab is None:
        snd = SOUNDS[name]
        assert len(snd.harmonics) * snd.f_range[1] < SAMPLE_RATE / 2, name   # no aliasing
        ph = np.arange(_TABLE_N) / _TABLE_N * 2 * np.pi
        tab = sum(a * np.sin((k + 1) * ph + 0.7 * k) for k, a in enumerate(snd.harmonics))
        tab = (tab / np.abs(tab).max()).astype(np.float32)
        _TABLES[name] = tab
    return tab


def _runs(mask: Sequence[bool]) -> List[Tuple[int, int]]:
    """[(start, stop)) segment runs where mask is true."""
    runs, start = [], None
    for t, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append((start, t))
            start = None
    return runs


_ENVELOPES: Dict[str, np.ndarray] = {}
_FADE = np.linspace(0.0, 1.0, int(0.005 * SAMPLE_RATE), dtype=np.float32)


def _pluck_envelope(name: str) -> np.ndarray:
    """Attack ramp + exponential decay over the longest note, float32 (indexed by sample)."""
    env = _ENVELOPES.get(name)
    if env is None:
        snd = SOUNDS[name]
        t = np.arange(int(snd.note[1] * SAMPLE_RATE) + 1, dtype=np.float64)
        env = np.exp(-t / (snd.tau * SAMPLE_RATE)) * np.minimum(t / (snd.attack * SAMPLE_RATE), 1.0)
        env = env.astype(np.float32)
        _ENVELOPES[name] = env
    return env


def _synth_run(name: str, start: int, n: int, rng: np.random.Generator,
               register: Optional[str] = None) -> np.ndarray:
    """Unnormalised float32 signal of one instrument over clip samples [start, start + n).
    Notes are drawn from its whole semitone range, or (version 2) from its low / high half."""
    snd = SOUNDS[name]
    lo, hi = int(snd.note[0] * SAMPLE_RATE), int(snd.note[1] * SAMPLE_RATE)
    lens = rng.integers(lo, hi + 1, size=n // lo + 2)
    ends = np.cumsum(lens)
    k = int(np.searchsorted(ends, n)) + 1
    lens, ends = lens[:k], ends[:k]
    lens[-1] -= ends[-1] - n                       # notes tile the run exactly
    ends[-1] = n
    starts = ends - lens
    n_semis = int(np.floor(12 * np.log2(snd.f_range[1] / snd.f_range[0])))
    lo_semi, hi_semi = 0, n_semis + 1
    if register is not None:
        half = (n_semis + 1) // 2                  # low: [0, half), high: [half, n_semis]
        lo_semi, hi_semi = (0, half) if register == "low" else (half, n_semis + 1)
    f0 = snd.f_range[0] * 2.0 ** (rng.integers(lo_semi, hi_semi, size=k) / 12.0)
    idx = np.arange(n, dtype=np.int32)
    t_in = idx - np.repeat(starts.astype(np.int32), lens)          # sample index in its note
    if snd.envelope == "sustain":
        t_left = np.repeat(ends.astype(np.int32), lens) - idx      # samples to the note's end
        env = np.minimum(t_in.astype(np.float32) * np.float32(1.0 / (snd.attack * SAMPLE_RATE)),
                         t_left.astype(np.float32) * np.float32(1.0 / (0.03 * SAMPLE_RATE)))
        np.clip(env, 0.0, 1.0, out=env)
    else:
        env = np.take(_pluck_envelope(name), t_in)
    # fixed-point phase accumulator (wraps mod 2^32): exact and cheap
    if snd.vibrato:
        freq = np.repeat(f0, lens) * (1.0 + snd.vibrato * _VIBRATO[start:start + n])
        inc = np.rint(freq * (2.0 ** 32 / SAMPLE_RATE)).astype(np.uint32)
    else:
        inc = np.repeat(np.rint(f0 * (2.0 ** 32 / SAMPLE_RATE)).astype(np.uint32), lens)
    phase = np.cumsum(inc, dtype=np.uint32)
    phase >>= np.uint32(32 - _TABLE_BITS)
    tone = np.take(_table(name), phase)
    if snd.envelope == "noise":                    # drum: low-passed noise burst + a thump
        noise = _noise_bank(rng, n + 3)
        body = noise[3:] + noise[2:-1]
        body += noise[1:-2]
        body += noise[:-3]
        body *= np.float32(0.5)
        tone *= np.float32(0.8)
        tone += body
    if snd.tremolo:
        tone *= np.float32(1.0) + np.float32(snd.tremolo) * _TREMOLO[start:start + n]
    if snd.breath:
        tone += np.float32(snd.breath) * _noise_bank(rng, n)
    tone *= env
    fade = min(len(_FADE), n // 2)                 # no click at the run's edges
    tone[:fade] *= _FADE[:fade]
    tone[n - fade:] *= _FADE[:fade][::-1]
    return tone


def _source_runs(src: Source, rng: np.random.Generator) -> List[Tuple[int, np.ndarray]]:
    """[(first sample, signal)] of one source, scaled so that its RMS over all its sounding
    segments is exactly ``src.loudness``; [] when it is silent."""
    runs = _runs(src.sounding)
    if not runs:
        return []
    out = [(a * SEGMENT_SAMPLES,
            _synth_run(src.name, a * SEGMENT_SAMPLES, (b - a) * SEGMENT_SAMPLES, rng, src.register))
           for a, b in runs]
    energy = sum(float(np.dot(x, x)) for _, x in out)
    n_on = sum(len(x) for _, x in out)
    gain = np.float32(src.loudness / max(np.sqrt(energy / n_on), 1e-12))
    for _, x in out:
        x *= gain
    return out


def _render_audio(scene: Scene, base: int) -> np.ndarray:
    if scene.audio_noise > 0:                 # room noise, slightly tilted to low frequencies
        w = _noise_bank(_stream(base, 2), _N_SAMPLES + 1)
        mix = w[1:] + np.float32(0.6) * w[:-1]
        mix *= np.float32(scene.audio_noise / np.sqrt(1.36))
    else:
        mix = np.zeros(_N_SAMPLES, np.float32)
    for s in scene.sources:
        for s0, x in _source_runs(s, _stream(base, 3, INSTRUMENTS.index(s.name))):
            mix[s0:s0 + len(x)] += x
    peak = float(np.abs(mix).max())
    if peak > PEAK_LIMIT:                    # one gain for the clip: relative loudness is kept
        mix *= np.float32(PEAK_LIMIT / peak)
    return mix
