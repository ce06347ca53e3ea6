"""Auxiliary event tagging for the encoders (built-in benchmark only; training only).

The paper's encoders are VGGish and ResNet-18, pretrained with labels (AudioSet, ImageNet)
before AVQA training ever starts. Ours learn from raw signals within minutes, and from the
answers alone they learn slowly: after 3000 steps the audio encoder still missed which
instruments play ("is the X playing" 80 % with both sensors) and which one is louder (64 %),
and the visual encoder never picked up that a playing instrument moves (with the audio
missing, "is the X playing" stayed at chance, 49 %). So, where the data has per-segment
ground truth (the built-in benchmark's scenes), small heads read the encoder outputs and
are trained to tag each segment: which instruments sound and how loud (audio), which
instrument is in each grid cell and whether it moves (visual). The heads are not part of
the model: they are never saved with it, exported or run at inference; the tags are read
from the train split only, and every method (rmm_avr, dropout, baseline) gets the same loss.
"""
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F


class EventTagger(nn.Module):
    def __init__(self, dim: int, n_instruments: int, grid=(2, 3)):
        """grid: the label grid (rows, columns); the visual map is pooled to it."""
        super().__init__()
        self.k, self.grid = n_instruments, tuple(grid)
        self.audio = nn.Linear(dim, 2 * n_instruments)                  # sounding logit, level
        self.visual = nn.Conv2d(dim, n_instruments + 2, 1)              # cell class (K + empty), moving logit

    def loss(self, a: torch.Tensor, v: torch.Tensor, labels: Dict[str, torch.Tensor]) -> torch.Tensor:
        """a (B, T, C) and v (B, T, C, H', W') real encoder outputs; labels from
        synth.segment_labels, one row per question's clip. -> scalar loss."""
        out = self.audio(a)                                                   # (B, T, 2K)
        snd_logit, level = out[..., :self.k], out[..., self.k:]
        sounding = labels["sounding"]                                         # (B, T, K)
        loss_a = F.binary_cross_entropy_with_logits(snd_logit, sounding)
        loss_level = ((level - labels["level"]) ** 2 * sounding).sum() / sounding.sum().clamp(min=1)
        cells = F.adaptive_avg_pool2d(v.flatten(0, 1), self.grid)             # (B*T, C, R, Cols)
        vo = self.visual(cells).permute(0, 2, 3, 1)                           # (B*T, R, Cols, K+2)
        cls = labels["cell"].flatten(0, 1)                                    # (B*T, R, Cols)
        loss_cell = F.cross_entropy(vo[..., :self.k + 1].reshape(-1, self.k + 1), cls.reshape(-1))
        occupied = (cls > 0).to(v.dtype)
        move = F.binary_cross_entropy_with_logits(vo[..., -1], labels["moving"].flatten(0, 1), reduction="none")
        loss_move = (move * occupied).sum() / occupied.sum().clamp(min=1)
        return loss_a + loss_level + loss_cell + loss_move


def batch_labels(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The batch's per-clip labels, one row per question ({} when the data has none)."""
    idx = batch["clip_index"]
    return {k[len("label_"):]: v[idx] for k, v in batch.items() if k.startswith("label_")}
