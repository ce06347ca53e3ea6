"""Training's stage 2: the encoders frozen, the rest of the model refit on their features.

Stage 1 trains the encoders and a backbone end to end on the complete answer and the event
tags, the same for every method (the method's pseudo terms are left to stage 2; in stage 1
they cost 45 % of a step). Stage 2 freezes the encoders (audio, visual, question)
and caches their features for the whole training split, re-initializes the backbone, and
trains it, RMM and AVR on those features with the method's own loss (Eq. 8 for rmm_avr). This
is the paper's own setting: its backbone, RMM and AVR learn on frozen pre-extracted features.

Why (a diagnostic on the frozen encoders of a finished stage-1 run, kept in the history): the stage-1
backbone was the bottleneck, not the features. A linear probe of the clip's audio features
answers "is the x playing" at 97.3 % with the video missing, where the trained model scored
93.6. A backbone trained from scratch on the frozen features reached 92.6 % `complete`
against 88.3 for the end-to-end one, in 3000 steps of about 0.1 s. On cached features a batch
costs no encoding, so its questions come from distinct clips (stage 1 samples 4 per clip), and
the targets RMM recalls and AVR denoises stop moving.
"""
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from .data.loader import SplitData, to_device
from .model.avqa import AVQAModel, Feats

MAX_CACHE_BYTES = 4 << 30   # above this, stage 2 encodes each batch with the frozen encoders instead


def encoders(model: AVQAModel) -> List[nn.Module]:
    """The modules stage 2 freezes."""
    names = ("audio_encoder", "visual_encoder", "projections", "question_encoder")
    return [getattr(model, n) for n in names if hasattr(model, n)]


def backbones(model: AVQAModel) -> List[nn.Module]:
    """The answering networks, that retrofit keeps frozen as its base run trained them."""
    return [m for m in (model.backbone, model.video_expert) if m is not None]


def frozen_in_stage2(model: AVQAModel, retrofit: bool = False) -> List[nn.Module]:
    """The modules stage 2 does not train: the encoders, and with retrofit the backbones as well
    (then only RMM and AVR learn)."""
    return encoders(model) + (backbones(model) if retrofit else [])


def trainable(model: AVQAModel, stage2: bool, retrofit: bool = False) -> List[nn.Parameter]:
    """The model's parameters that a stage trains (stage 2: all but the frozen modules')."""
    frozen = {id(p) for m in frozen_in_stage2(model, retrofit) for p in m.parameters()} if stage2 else set()
    return [p for p in model.parameters() if id(p) not in frozen]


def freeze_encoders(model: AVQAModel, retrofit: bool = False) -> None:
    """Eval mode (BatchNorm keeps its running statistics) and no gradients, for stage 2; with
    retrofit the backbones too."""
    for m in frozen_in_stage2(model, retrofit):
        m.eval()
        m.requires_grad_(False)


class FeatureCache:
    """The frozen encoders' features of every training clip and question, in memory when they
    fit in MAX_CACHE_BYTES (the built-in benchmark's default: about 0.5 GB); otherwise each
    batch is encoded on the fly, without gradients."""

    def __init__(self, model: AVQAModel, data: SplitData, device: torch.device, chunk: int = 128,
                 max_bytes: int = MAX_CACHE_BYTES):
        cfg = model.cfg
        self.model, self.data, self.device = model, data, device
        n_clips, n_q = len(data.questions_of), len(data)
        self.nbytes = 4 * cfg.dim * (n_clips * cfg.t_segments * (1 + cfg.map_h * cfg.map_w)
                                     + n_q * (1 + data.tokens.shape[1]))
        self.cached = self.nbytes <= max_bytes
        if not self.cached:
            return
        a, v = [], []
        with torch.no_grad():
            for i in range(0, n_clips, chunk):
                batch = to_device(data.clip_tensors(range(i, min(i + chunk, n_clips))), device)
                a.append(model.encode_audio(batch))                                   # (u, T, C)
                v.append(model.encode_visual(batch))                                  # (u, T, C, H', W')
            self.a, self.v = torch.cat(a), torch.cat(v)
            self.q = torch.cat([model.question_encoder(data.tokens[i:i + 1024].to(device))
                                for i in range(0, n_q, 1024)])                        # (Q, 1 + L, C)

    def sample(self, rng: np.random.Generator, batch_size: int, per_clip: int) -> Tuple[Feats, torch.Tensor]:
        """-> (features of batch_size random questions, their answers). Cached: questions drawn
        across the whole split; otherwise as stage 1 draws them (per_clip per clip)."""
        if self.cached:
            return self.features(torch.from_numpy(rng.choice(len(self.data), size=min(batch_size, len(self.data)),
                                                             replace=False)))
        batch = to_device(self.data.batch(self.data.sample(rng, batch_size, per_clip)), self.device)
        with torch.no_grad():
            f, _, _ = self.model.encode(batch)
        return f, batch["answers"]

    def features(self, qs: torch.Tensor) -> Tuple[Feats, torch.Tensor]:
        """Cached features and answers of the questions qs (B,)."""
        clips = self.data.clip[qs].to(self.device)
        return Feats(self.a[clips], self.v[clips], self.q[qs.to(self.device)]), self.data.answers[qs].to(self.device)
