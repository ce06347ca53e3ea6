"""One question about one clip, through the bundle's component graphs (torch-free, Python 3.8+).

The numpy counterpart of `AVQAModel.forward(batch, mask_a, mask_v, method)` at batch 1:

1. encode what is present: a sensor absent for the whole window is not run; otherwise the
   raw input of its absent segments is blanked (black frames, silent audio; the model's
   `_blank`) and their features zeroed;
2. fill absent segments (masks (T,), 1 = real): `zero_fill` leaves zeros; `rmm` / `rmm+avr`
   use the RMM pseudo features (Eq. 2), pseudo audio from the real visual features and the
   question, pseudo visual from the real audio features and the question;
3. `avr` / `rmm+avr`: when any segment is missing, the AVR graph (Eq. 5-7, the S reverse
   steps in one graph) refines the pair, keeping the real parts;
4. the backbone's logits -> softmax -> the answer and the top-k probabilities. A bundle
   whose model has a video expert (`video_expert` graph) answers with it instead when the
   video is absent in every segment and the audio is not (`AVQAModel.answer`), for every
   fill method.

Prompt methods (docs/prompts.md), when the bundle holds a prompt run's graphs (manifest `prompts`):
absent segments stay zero (no RMM / AVR) and a backbone graph with the prompts baked in
answers: `prompt_all` (every prompt set; the case is unknown) or `prompt_oracle` (one set:
the `case` passed in, e.g. from a health monitor that knows a sensor is noisy; without it,
the case the masks show: audio / visual absent -> that set, else `complete`; noise cannot be
seen in the masks).

    with Pipeline.from_bundle("bundles/edge", precision="fp16") as p:
        ans = p.answer(frames, audio, "How many instruments are sounding?", mask_v=np.zeros(10))
        ans.answer, ans.top_k, ans.timings_ms

Several questions about the same window can share one encoding:
`feats = p.encode(frames, audio, mask_a, mask_v)`, then `p.answer_features(feats, question)`.
"""
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avqa_edge.errors import AvqaError

from . import signal as sig
from .bundle import COMPONENTS, PRECISIONS, Bundle
from .runners import OrtRunner, Runner
from .text import Vocabulary

METHODS = ("zero_fill", "rmm", "avr", "rmm+avr")
PROMPT_METHODS = ("prompt_all", "prompt_oracle")
PROMPT_COMPONENTS = ("backbone_prompt_all", "backbone_prompt_case")
BACKENDS = ("ort", "trt")
Question = Union[str, Sequence[int], np.ndarray]


@dataclass
class ClipFeatures:
    """A window's encoded features, absent segments zeroed."""
    a: np.ndarray          # (1, T, C) float32
    v: np.ndarray          # (1, T, C, H', W') float32
    mask_a: np.ndarray     # (T,) float32, 1 = real segment
    mask_v: np.ndarray     # (T,) float32
    timings_ms: Dict[str, float] = field(default_factory=dict)


@dataclass
class Answer:
    answer: str
    index: int
    probability: float
    top_k: List[Tuple[str, float]]
    logits: np.ndarray                 # (n_answers,) float32
    method: str
    segments: Dict[str, int]           # real segments per sensor, and T
    timings_ms: Dict[str, float]
    graph: str = "backbone"            # the graph that answered: backbone, video_expert or a prompt graph
    unknown_words: List[str] = field(default_factory=list)   # question words the vocabulary lacks (read as <unk>)

    def to_dict(self) -> Dict:
        return {"answer": self.answer, "index": self.index, "probability": self.probability,
                "top_k": [[a, p] for a, p in self.top_k], "method": self.method, "graph": self.graph,
                "segments": dict(self.segments), "timings_ms": dict(self.timings_ms),
                "unknown_words": list(self.unknown_words)}


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


class Pipeline:
    """Composes the component runners: the seven COMPONENTS, and `video_expert` when the
    model config has one (see the module docstring)."""

    def __init__(self, runners: Dict[str, Runner], vocabulary: Sequence[str], answers: Sequence[str],
                 model_config: Dict, name: str = "pipeline", prompt_cases: Optional[Sequence[str]] = None):
        need = COMPONENTS + (("video_expert",) if model_config.get("video_expert") else ())
        missing = [c for c in need if c not in runners]
        if missing:
            raise AvqaError(f"pipeline needs runners for every component; missing {missing}")
        self.runners = dict(runners)
        self.vocab = Vocabulary(list(vocabulary))
        self.answers = list(answers)
        self.cfg = dict(model_config)
        self.name = name
        self.prompt_cases = list(prompt_cases or [])   # with runners for PROMPT_COMPONENTS: the prompt methods
        self.bundle: Optional[Bundle] = None
        self.t = int(self.cfg["t_segments"])
        self.q_len = int(self.cfg["q_len"])
        self._active = False

    @classmethod
    def from_bundle(cls, bundle_dir, backend: str = "ort", precision: str = "fp32", threads: int = 0,
                    providers: Optional[Sequence] = None, verify: bool = True, allow_failed_parity: bool = False,
                    runner_factory: Optional[Callable[[str, Bundle], Runner]] = None) -> "Pipeline":
        """Load a bundle's graphs (backend "ort": ONNX Runtime on the fp32 or fp16 graphs;
        "trt": the TensorRT engines, runtime/trt.py) and activate them. `verify` checks
        every file's SHA-256 first; a bundle whose parity gate failed is refused unless
        `allow_failed_parity`. `runner_factory(component, bundle)` overrides the backend."""
        if backend not in BACKENDS:
            raise AvqaError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise AvqaError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        bundle = Bundle.open(bundle_dir, verify=verify)
        if bundle.parity_passed is False and not allow_failed_parity:
            report = (bundle.manifest.get("parity") or {}).get("report") or ["parity.md"]
            report = report[0] if isinstance(report, list) else report
            raise AvqaError(f"bundle {bundle_dir} failed its parity gate at export (see {bundle.path / report}); "
                            "re-export, or pass allow_failed_parity=True to load it anyway")
        if runner_factory is None:
            if backend == "ort":
                def runner_factory(comp, b):
                    return OrtRunner(b.graph_path(comp, precision), threads=threads, providers=providers, name=comp)
            else:
                try:
                    from . import trt   # TensorRT + pycuda on the device, imported only here
                except ImportError as e:
                    raise AvqaError(f"the TensorRT backend is not available here ({e}); use backend='ort'") from None

                def runner_factory(comp, b):
                    return trt.TrtRunner(b.engine_path(comp), fingerprint=b.manifest.get("fingerprint") or None)
        runners = {c: runner_factory(c, bundle) for c in bundle.graphs}
        prompts = bundle.manifest.get("prompts") or {}
        if prompts and (prompts.get("parity") or {}).get("passed") is False and not allow_failed_parity:
            prompts = {}                     # their own gate failed: the prompt methods stay unavailable
        if prompts and backend == "ort":   # no TensorRT engines for the prompt graphs yet
            for c in PROMPT_COMPONENTS:
                runners[c] = OrtRunner(bundle.path / prompts["components"][c]["files"][precision], threads=threads,
                                       providers=providers, name=c)
        p = cls(runners, bundle.vocabulary, bundle.answers, bundle.model_config,
                name=f"{backend}-{precision}" if backend == "ort" else backend,
                prompt_cases=prompts.get("cases") if backend == "ort" else None)
        p.bundle = bundle
        return p.activate()

    # -- lifetime ------------------------------------------------------------------------------
    def activate(self) -> "Pipeline":
        if not self._active:
            for r in self.runners.values():
                r.__enter__()
            self._active = True
        return self

    def close(self) -> None:
        if self._active:
            for r in self.runners.values():
                r.__exit__(None, None, None)
            self._active = False

    def __enter__(self) -> "Pipeline":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inputs ---------------------------------------------------------------------------------
    def tokens(self, question: Question) -> np.ndarray:
        """A question (text, or token ids) -> (1, L) int64 right-padded ids."""
        if isinstance(question, str):
            ids = self.vocab.encode(question, self.q_len)
        else:
            ids = [int(i) for i in np.asarray(question).reshape(-1)]
            if len(ids) > self.q_len:
                raise AvqaError(f"{len(ids)} question tokens given; at most {self.q_len}")
            if any(i < 0 or i >= len(self.vocab) for i in ids):
                raise AvqaError(f"question token ids must lie in [0, {len(self.vocab)})")
            ids = ids + [0] * (self.q_len - len(ids))
        return np.asarray(ids, dtype=np.int64)[None]

    def _mask(self, mask, present: bool, what: str) -> np.ndarray:
        """(T,) float32 0/1; default: all real if the sensor's data is given, else all absent."""
        if mask is None:
            return np.full(self.t, 1.0 if present else 0.0, np.float32)
        m = np.asarray(mask, dtype=np.float32).reshape(-1)
        if m.shape != (self.t,) or not np.all((m == 0) | (m == 1)):
            raise AvqaError(f"{what} must hold {self.t} values of 0 / 1 (one per segment), got shape {np.shape(mask)}")
        if m.any() and not present:
            raise AvqaError(f"{what} marks segments as present but no data was given for that sensor")
        return m

    def _frames(self, frames) -> np.ndarray:
        want = (self.t, sig.FRAMES_PER_SEGMENT, sig.FRAME_H, sig.FRAME_W, 3)
        x = np.asarray(frames)
        if x.shape == (1,) + want:
            x = x[0]
        if x.shape != want or x.dtype != np.uint8:
            raise AvqaError(f"frames must be uint8 {want} (T, frames per segment, H, W, RGB), got {x.dtype} {x.shape}")
        return x

    def _audio(self, audio) -> np.ndarray:
        x = np.asarray(audio)
        n = self.t * sig.SEGMENT_SAMPLES
        if x.shape == (1, n):
            x = x[0]
        if x.shape != (n,):
            raise AvqaError(f"audio must hold {n} samples ({self.t} s at {sig.SAMPLE_RATE} Hz, mono), got shape {x.shape}")
        if x.dtype == np.int16:
            return sig.pcm16_to_float(x)
        if x.dtype.kind != "f":
            raise AvqaError(f"audio must be int16 PCM or float in [-1, 1], got {x.dtype}")
        return x.astype(np.float32)

    # -- stages -------------------------------------------------------------------------------
    def _run(self, comp: str, feed: Dict[str, np.ndarray], timings: Dict[str, float]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.runners[comp].infer(feed)
        timings[comp] = timings.get(comp, 0.0) + (time.perf_counter() - t0) * 1e3
        return out

    def encode(self, frames=None, audio=None, mask_a=None, mask_v=None) -> ClipFeatures:
        """Encode the present segments of a window. frames (T, F, H, W, 3) uint8 or None,
        audio (T*SEGMENT_SAMPLES,) int16 or float in [-1, 1] or None; masks (T,) 0/1."""
        ma = self._mask(mask_a, audio is not None, "mask_a")
        mv = self._mask(mask_v, frames is not None, "mask_v")
        c, h, w = int(self.cfg["dim"]), int(self.cfg["map_h"]), int(self.cfg["map_w"])
        timings: Dict[str, float] = {}
        if ma.any():
            wave = self._audio(audio) * np.repeat(ma, sig.SEGMENT_SAMPLES)                     # (T*S,) blanked
            a = self._run("audio", {"audio": wave[None].astype(np.float32)}, timings)["a"]
            a = a * ma[None, :, None]                                                          # (1, T, C)
        else:
            a = np.zeros((1, self.t, c), np.float32)
        if mv.any():
            x = self._frames(frames) * mv.astype(np.uint8)[:, None, None, None, None]          # (T, F, H, W, 3) blanked
            v = self._run("visual", {"frames": x[None]}, timings)["v"]
            v = v * mv[None, :, None, None, None]                                              # (1, T, C, H', W')
        else:
            v = np.zeros((1, self.t, c, h, w), np.float32)
        return ClipFeatures(a.astype(np.float32), v.astype(np.float32), ma, mv, timings)

    def fill(self, feats: ClipFeatures, q: np.ndarray, method: str = "rmm+avr",
             timings: Optional[Dict[str, float]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Absent segments -> zeros / RMM pseudo features, then AVR (model.fill). -> (a, v)."""
        if method not in METHODS:
            raise AvqaError(f"method must be one of {METHODS}, got {method!r}")
        timings = {} if timings is None else timings
        ma, mv = feats.mask_a[None, :, None], feats.mask_v[None, :, None, None, None]
        a, v = feats.a, feats.v
        if method in ("rmm", "rmm+avr"):
            if (feats.mask_a < 1).any():
                pa = self._run("rmm_audio", {"v": feats.v, "q": q}, timings)["pseudo_a"]   # from the real visual
                a = ma * feats.a + (1 - ma) * pa
            if (feats.mask_v < 1).any():
                pv = self._run("rmm_visual", {"a": feats.a, "q": q}, timings)["pseudo_v"]  # from the real audio
                v = mv * feats.v + (1 - mv) * pv
        if method in ("avr", "rmm+avr") and ((feats.mask_a < 1) | (feats.mask_v < 1)).any():
            out = self._run("avr", {"a": a.astype(np.float32), "v": v.astype(np.float32),
                                    "known_a": feats.mask_a[None], "known_v": feats.mask_v[None]}, timings)
            a, v = out["a_out"], out["v_out"]
        return a.astype(np.float32), v.astype(np.float32)

    def backbone_for(self, feats: ClipFeatures) -> str:
        """The graph that answers: `video_expert` when the model has one and the video is
        absent in every segment while the audio is not (`AVQAModel.answer`), else `backbone`."""
        if "video_expert" in self.runners and not feats.mask_v.any() and feats.mask_a.any():
            return "video_expert"
        return "backbone"

    def prompt_case(self, feats: ClipFeatures, case: Optional[str] = None) -> str:
        """The prompt set for prompt_oracle: `case` if given, else what the masks show."""
        if case is None:
            a_abs, v_abs = bool((feats.mask_a < 1).any()), bool((feats.mask_v < 1).any())
            case = "both" if a_abs and v_abs else "audio" if a_abs else "visual" if v_abs else "complete"
        if case not in self.prompt_cases:
            raise AvqaError(f"prompt case must be one of {self.prompt_cases}, got {case!r}")
        return case

    def answer_features(self, feats: ClipFeatures, question: Question, method: str = "rmm+avr",
                        top_k: int = 3, case: Optional[str] = None) -> Answer:
        """Answer a question about an encoded window (`case`: prompt_oracle's prompt set)."""
        timings = dict(feats.timings_ms)
        q = self._run("question", {"tokens": self.tokens(question)}, timings)["q"]          # (1, 1+L, C)
        if method in PROMPT_METHODS:
            if not self.prompt_cases or any(c not in self.runners for c in PROMPT_COMPONENTS):
                raise AvqaError(f"{method} needs a bundle exported with prompts (`avqa-edge export RUN --prompt PROMPT_RUN`)")
            feed = {"a": feats.a, "v": feats.v, "q": q}                                      # absent segments: zeros
            if method == "prompt_all":
                net = "backbone_prompt_all"
                logits = self._run(net, feed, timings)["logits"][0]
            else:
                net = "backbone_prompt_case"
                idx = np.array([self.prompt_cases.index(self.prompt_case(feats, case))], np.int64)
                logits = self._run(net, dict(feed, case=idx), timings)["logits"][0]
        else:
            a, v = self.fill(feats, q, method, timings)
            net = self.backbone_for(feats)
            logits = self._run(net, {"a": a, "v": v, "q": q}, timings)["logits"][0]          # (n_answers,)
        probs = softmax(logits)
        order = np.argsort(-probs, kind="stable")[:max(1, top_k)]
        best = int(order[0])
        timings["total"] = sum(timings.values())
        return Answer(answer=self.answers[best], index=best, probability=float(probs[best]),
                      top_k=[(self.answers[int(i)], float(probs[i])) for i in order], logits=logits,
                      method=method, segments={"audio": int(feats.mask_a.sum()), "visual": int(feats.mask_v.sum()),
                                               "total": self.t},
                      timings_ms={k: round(x, 3) for k, x in timings.items()}, graph=net,
                      unknown_words=self.vocab.unknown(question) if isinstance(question, str) else [])

    def answer(self, frames=None, audio=None, question: Question = "", mask_a=None, mask_v=None,
               method: str = "rmm+avr", top_k: int = 3, case: Optional[str] = None) -> Answer:
        """One question about one window. A sensor given as None is absent for the whole
        window; masks (T,) mark absent segments of a sensor that is there."""
        return self.answer_features(self.encode(frames, audio, mask_a, mask_v), question, method, top_k, case)
