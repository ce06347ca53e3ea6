"""One small nn.Module per exported graph, wrapping the trained AVQAModel's parts.

Every graph has a **fixed batch of 1** (one question about one clip, what the edge runtime
serves); T, C, H', W' and the question length L come from the model config. Masks are not
inputs of the encoders: the runtime blanks absent segments' raw input and zeroes their
features in numpy (the model's `_blank` and `* mask`), and does not run an encoder at all
for a sensor absent from the whole window.

| graph        | inputs                                                   | outputs                    |
|--------------|----------------------------------------------------------|----------------------------|
| visual       | frames uint8 (1, T, F, H, W, 3)                          | v (1, T, C, H', W')        |
| audio        | audio float32 (1, T*SEGMENT_SAMPLES) in [-1, 1]          | a (1, T, C)                |
| question     | tokens int64 (1, L)                                      | q (1, 1+L, C) (states)     |
| rmm_audio    | v (1, T, C, H', W'), q (1, 1+L, C)                       | pseudo_a (1, T, C)         |
| rmm_visual   | a (1, T, C), q (1, 1+L, C)                               | pseudo_v (1, T, C, H', W') |
| avr          | a, v, known_a (1, T), known_v (1, T) float32 (1 = real)  | a_out, v_out (like a, v)   |
| backbone     | a, v, q                                                  | logits (1, n_answers)      |
| video_expert | a, v, q (only for a model trained with a video expert)   | logits (1, n_answers)      |

The AVR graph concatenates the pair, runs the S DDIM reverse steps of
`toolkit.model.diffusion.reverse` unrolled (a Python loop with a fixed count) on **all** T
segments (the PyTorch model skips segments with both parts known, an exact shortcut: the
reverse process returns them unchanged), and splits the result. The reverse process's
fixed noise (`model.avr_noise`, seed 1234) is baked into the graph as a constant, so the
graph is deterministic given its inputs (no random op: TensorRT ignores their seed).
"""
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

from avqa_edge.errors import AvqaError
from avqa_edge.runtime import signal as sig

from ..toolkit.model.avqa import AVQAModel
from ..toolkit.model.diffusion import reverse

from avqa_edge.runtime.bundle import COMPONENTS, OPTIONAL_COMPONENTS  # noqa: F401 (re-exported)


@dataclass
class TensorSpec:
    """Name, fixed shape and numpy dtype name of one graph input or output."""
    name: str
    shape: Tuple[int, ...]
    dtype: str           # "float32", "int64", "uint8"

    def to_dict(self) -> Dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class VisualGraph(nn.Module):
    def __init__(self, model: AVQAModel):
        super().__init__()
        self.enc = model.visual_encoder

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (1, T, F, H, W, 3) uint8 -> v (1, T, C, H', W')."""
        return self.enc(frames)


class AudioGraph(nn.Module):
    def __init__(self, model: AVQAModel):
        super().__init__()
        self.enc = model.audio_encoder

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (1, T*SEGMENT_SAMPLES) float32 in [-1, 1] -> a (1, T, C); the conv-DFT
        log-mel front end is part of the graph."""
        return self.enc(audio)


class QuestionGraph(nn.Module):
    def __init__(self, model: AVQAModel):
        super().__init__()
        self.enc = model.question_encoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (1, L) int64, right-padded with 0 -> question states q (1, 1+L, C)."""
        return self.enc(tokens)


class RmmAudioGraph(nn.Module):
    def __init__(self, model: AVQAModel):
        super().__init__()
        self.rmm = model.rmm

    def forward(self, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Eq. 2, audio missing: v (1, T, C, H', W'), q (1, 1+L, C) -> pseudo a (1, T, C)."""
        return self.rmm.pseudo_audio(v, q)


class RmmVisualGraph(nn.Module):
    def __init__(self, model: AVQAModel):
        super().__init__()
        self.rmm = model.rmm

    def forward(self, a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Eq. 2, visual missing: a (1, T, C), q (1, 1+L, C) -> pseudo v (1, T, C, H', W')."""
        return self.rmm.pseudo_visual(a, q)


class AvrGraph(nn.Module):
    """AVR at inference (Eq. 5-7), the S reverse steps unrolled on every segment."""

    def __init__(self, model: AVQAModel):
        super().__init__()
        self.denoiser, self.schedule = model.denoiser, model.schedule
        self.register_buffer("noise", model.avr_noise.detach().clone(), persistent=False)  # (T, 2C, H', W')

    def forward(self, a: torch.Tensor, v: torch.Tensor, known_a: torch.Tensor,
                known_v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """a (1, T, C), v (1, T, C, H', W'), known_a / known_v (1, T) float (1 = real part,
        kept) -> enhanced a (1, T, C), v (1, T, C, H', W')."""
        b, t, c, h, w = v.shape
        x = torch.cat([a[..., None, None].expand(-1, -1, -1, h, w), v], dim=2)        # (1, T, 2C, H', W')
        x = x.reshape(b * t, 2 * c, h, w)                                              # (T, 2C, H', W')
        known = torch.cat([known_a[..., None].expand(-1, -1, c),
                           known_v[..., None].expand(-1, -1, c)], dim=2)               # (1, T, 2C)
        known = known.reshape(b * t, 2 * c, 1, 1)                                      # (T, 2C, 1, 1)
        out = reverse(self.denoiser, self.schedule, x, known, self.noise)              # (T, 2C, H', W')
        out = out.reshape(b, t, 2 * c, h, w)
        return out[:, :, :c].mean(dim=(-1, -2)), out[:, :, c:]                        # (1,T,C), (1,T,C,H',W')


class BackboneGraph(nn.Module):
    def __init__(self, model: AVQAModel, expert: bool = False):
        super().__init__()
        self.backbone = model.video_expert if expert else model.backbone

    def forward(self, a: torch.Tensor, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """a (1, T, C), v (1, T, C, H', W'), q (1, 1+L, C) -> answer logits (1, n_answers)."""
        return self.backbone(a, v, q)


_WRAPPERS = {"visual": VisualGraph, "audio": AudioGraph, "question": QuestionGraph,
             "rmm_audio": RmmAudioGraph, "rmm_visual": RmmVisualGraph, "avr": AvrGraph,
             "backbone": BackboneGraph, "video_expert": lambda m: BackboneGraph(m, expert=True)}


def components_of(model: AVQAModel) -> tuple:
    """The graphs this model exports: the seven COMPONENTS, plus `video_expert` if it has one."""
    return COMPONENTS + (("video_expert",) if model.video_expert is not None else ())


def check_exportable(model: AVQAModel) -> None:
    """The bundle needs raw inputs, RMM and AVR (the `edge` preset's model)."""
    cfg = model.cfg
    problems = []
    if cfg.inputs != "raw":
        problems.append("inputs='features' (the paper preset needs the VGGish / ResNet-18 extractors, not included)")
    if model.rmm is None:
        problems.append("no RMM (trained with --no-rmm)")
    if model.denoiser is None:
        problems.append("no AVR denoiser (trained with --no-avr)")
    if problems:
        raise AvqaError("this run cannot be exported as a bundle: " + "; ".join(problems))


def build(model: AVQAModel, name: str) -> nn.Module:
    """The wrapper module of one component, in eval mode."""
    if name not in _WRAPPERS:
        raise AvqaError(f"unknown component {name!r}; known: {', '.join(COMPONENTS + OPTIONAL_COMPONENTS)}")
    if name not in components_of(model):
        raise AvqaError(f"this model has no {name} (trained without it)")
    return _WRAPPERS[name](model).eval()


def io_specs(model: AVQAModel) -> "OrderedDict[str, Tuple[List[TensorSpec], List[TensorSpec]]]":
    """Expected (inputs, outputs) of every graph of `components_of(model)`, batch 1, from the
    model config."""
    cfg = model.cfg
    t, c, h, w = cfg.t_segments, cfg.dim, cfg.map_h, cfg.map_w
    f32 = "float32"
    a, v, q = (1, t, c), (1, t, c, h, w), (1, 1 + cfg.q_len, c)     # q: the question states
    known = (1, t)
    frames = (1, t, sig.FRAMES_PER_SEGMENT, sig.FRAME_H, sig.FRAME_W, 3)
    n_ans = max(len(cfg.answers), 1)
    S = TensorSpec
    specs = OrderedDict([
        ("visual", ([S("frames", frames, "uint8")], [S("v", v, f32)])),
        ("audio", ([S("audio", (1, t * sig.SEGMENT_SAMPLES), f32)], [S("a", a, f32)])),
        ("question", ([S("tokens", (1, cfg.q_len), "int64")], [S("q", q, f32)])),
        ("rmm_audio", ([S("v", v, f32), S("q", q, f32)], [S("pseudo_a", a, f32)])),
        ("rmm_visual", ([S("a", a, f32), S("q", q, f32)], [S("pseudo_v", v, f32)])),
        ("avr", ([S("a", a, f32), S("v", v, f32), S("known_a", known, f32), S("known_v", known, f32)],
                 [S("a_out", a, f32), S("v_out", v, f32)])),
        ("backbone", ([S("a", a, f32), S("v", v, f32), S("q", q, f32)], [S("logits", (1, n_ans), f32)])),
    ])
    if model.video_expert is not None:
        specs["video_expert"] = specs["backbone"]
    return specs


_TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}


def example_inputs(specs: List[TensorSpec], seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Plausible example inputs for tracing: random frames, audio in [-1, 1], a five-token
    question, unit-scale features, masks with some segments missing."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        if s.dtype == "uint8":
            out.append(torch.randint(0, 256, s.shape, generator=gen, dtype=torch.uint8))
        elif s.dtype == "int64":
            tok = torch.zeros(s.shape, dtype=torch.int64)
            tok[:, :5] = 1                                   # <unk>: valid for any vocabulary
            out.append(tok)
        elif s.name.startswith("known"):
            out.append((torch.rand(s.shape, generator=gen) > 0.5).float())
        elif s.name == "audio":
            out.append(torch.rand(s.shape, generator=gen) * 0.2 - 0.1)
        else:
            out.append(torch.randn(s.shape, generator=gen))
    return tuple(out)
