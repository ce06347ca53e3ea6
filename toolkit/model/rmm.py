"""RMM: relation-aware missing modal generator with slot memories (paper Eq. 1-4).

Three slot banks of L vectors, shared by both directions: G^v (L, H'W'C), G^a (L, C),
G^t (L, C). Missing audio: address G^v with the visual map and G^t with the question,
combine, read G^a. Missing visual: address G^a and G^t, read G^v.

Addressing variants (METHOD.md section 2):
- "paper": a = softmax(a^m * a^t), Eq. 1-2 as written and as released. The product of two
  probability vectors lies in [0, 1], so the outer softmax is nearly uniform and the
  pseudo feature is close to the mean slot whatever the input.
- "logspace" (default): a = softmax(log a^m + log a^t), the normalized product of the two
  addressing distributions, which actually selects slots.
Temperatures: the paper divides by sqrt(c) for every modality, which makes the
H'W'C-dimensional visual addressing near one-hot. With `learn_temperature` each modality
has its own learned temperature, initialized at sqrt(its dimension).

Audio recall heads (`audio_heads`, default 4; 1 is Eq. 1-2 as written). With one head a
segment's recalled audio is a blend of a few of the L audio slots (addressing entropy about
1.8 nats on the built-in benchmark): a linear probe reads which instruments sound in a
segment from 39 % of recalled segments, against 89 % from the real audio and 56 % from the
video map itself. With H heads, G^a's C channels are split into H groups of C/H; head 0
addresses with G^v as in Eq. 1, heads 1..H-1 with their own key banks (L, H'W'C), all with
the same question addressing and visual temperature, and each reads its own group of G^a
(Eq. 2 per head). The recall is then one of L^H combinations instead of one of L blends.
The visual recall keeps one head: it already reads a whole H'W'C map per slot.
"""
import math
from typing import Dict, Tuple

import torch
from torch import nn


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean entropy in nats of distributions along the last dim."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()


class SlotMemory(nn.Module):
    def __init__(self, dim: int, map_hw: Tuple[int, int], n_slots: int = 75, addressing: str = "logspace",
                 learn_temperature: bool = True, audio_heads: int = 1):
        super().__init__()
        if audio_heads < 1 or dim % audio_heads:
            raise ValueError(f"audio_heads must divide the feature width {dim}, got {audio_heads}")
        self.dim, self.map_hw, self.addressing, self.audio_heads = dim, tuple(map_hw), addressing, audio_heads
        vdim = dim * map_hw[0] * map_hw[1]
        self.slots_v = nn.Parameter(torch.randn(n_slots, vdim))   # G^v (L, H'W'C)
        self.slots_a = nn.Parameter(torch.randn(n_slots, dim))    # G^a (L, C)
        self.slots_t = nn.Parameter(torch.randn(n_slots, dim))    # G^t (L, C)
        if learn_temperature:
            init = torch.log(torch.tensor([math.sqrt(vdim), math.sqrt(dim), math.sqrt(dim)]))
        else:
            init = torch.log(torch.full((3,), math.sqrt(dim)))    # paper: sqrt(c) for all three
        self.log_tau = nn.Parameter(init, requires_grad=learn_temperature)  # (v, a, t)
        if audio_heads > 1:   # heads 1..H-1 of the audio recall: their own visual keys (H-1, L, H'W'C)
            self.extra_keys_v = nn.Parameter(torch.randn(audio_heads - 1, n_slots, vdim))

    def _logits(self, x: torch.Tensor, slots: torch.Tensor, which: int) -> torch.Tensor:
        """x (..., D) . slots (L, D) / tau -> (..., L)."""
        return torch.matmul(x, slots.t()) / self.log_tau[which].exp()

    def _combine(self, logits_m: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        """Eq. 1: the joint addressing weights a^{mt} (..., L)."""
        if self.addressing == "paper":
            return torch.softmax(torch.softmax(logits_m, -1) * torch.softmax(logits_t, -1), -1)
        return torch.softmax(torch.log_softmax(logits_m, -1) + torch.log_softmax(logits_t, -1), -1)

    def address_from_visual(self, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """v (B, T, C, H', W'), q (B, C) -> weights for recalling audio, (B, T, L) with one
        head, (B, T, H, L) with H heads.
        (q may also be the question encoder's states (B, 1 + L, C): row 0 is q.)"""
        q = question_vector(q)
        if self.audio_heads == 1:
            lv = self._logits(v.flatten(2), self.slots_v, 0)      # (B, T, L)
            lt = self._logits(q, self.slots_t, 2)[:, None]        # (B, 1, L)
            return self._combine(lv, lt.expand_as(lv))
        b, t = v.shape[:2]
        keys = torch.cat([self.slots_v[None], self.extra_keys_v], 0)                # (H, L, H'W'C)
        lv = torch.matmul(v.reshape(1, b * t, -1), keys.transpose(1, 2))            # (H, B*T, L)
        lv = (lv / self.log_tau[0].exp()).reshape(self.audio_heads, b, t, -1).permute(1, 2, 0, 3)  # (B, T, H, L)
        lt = self._logits(q, self.slots_t, 2)[:, None, None]                        # (B, 1, 1, L)
        return self._combine(lv, lt.expand_as(lv))

    def address_from_audio(self, a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """a (B, T, C), q (B, C) or (B, 1 + L, C) -> weights (B, T, L) for recalling the visual map."""
        q = question_vector(q)
        la = self._logits(a, self.slots_a, 1)                      # (B, T, L)
        lt = self._logits(q, self.slots_t, 2)[:, None]
        return self._combine(la, lt.expand_as(la))

    def pseudo_audio(self, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Eq. 2, audio missing: f^ap = sum_j a^vt_j G^a_j; with H heads, head h reads its
        channel group of G^a with its own weights. -> (B, T, C)."""
        w = self.address_from_visual(v, q)
        if self.audio_heads == 1:
            return torch.matmul(w, self.slots_a)
        b, t, h, n = w.shape
        groups = self.slots_a.reshape(n, h, -1).transpose(0, 1)                     # (H, L, C/H)
        out = torch.matmul(w.permute(2, 0, 1, 3).reshape(h, b * t, n), groups)      # (H, B*T, C/H)
        return out.reshape(h, b, t, -1).permute(1, 2, 0, 3).reshape(b, t, -1)

    def pseudo_visual(self, a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Eq. 2, visual missing: f^vp = sum_j a^at_j G^v_j. -> (B, T, C, H', W')."""
        b, t = a.shape[:2]
        out = torch.matmul(self.address_from_audio(a, q), self.slots_v)   # (B, T, H'W'C)
        return out.reshape(b, t, self.dim, *self.map_hw)

    def stats(self, a: torch.Tensor, v: torch.Tensor, q: torch.Tensor) -> Dict[str, float]:
        """Addressing entropy (nats) of both directions; uniform is log(L)."""
        with torch.no_grad():
            return {"entropy_audio_recall": float(entropy(self.address_from_visual(v, q))),
                    "entropy_visual_recall": float(entropy(self.address_from_audio(a, q))),
                    "entropy_uniform": math.log(self.slots_a.shape[0])}


def question_vector(q: torch.Tensor) -> torch.Tensor:
    """The question vector (B, C) from itself or from the question states (B, 1 + L, C)."""
    return q[:, 0] if q.dim() == 3 else q


def recall_loss(real: torch.Tensor, pseudo: torch.Tensor, reduction: str = "element_mean") -> torch.Tensor:
    """Eq. 3-4 term MSE(f, f^p). `sample_sum` is Eq. 3 literally: the squared L2 norm per
    sample, averaged over the batch (weighs the H'W'C visual map H'W' times more than audio);
    `element_mean` (default) averages over elements so both directions weigh the same."""
    diff = (real - pseudo) ** 2
    if reduction == "sample_sum":
        return diff.flatten(1).sum(1).mean()
    return diff.mean()
