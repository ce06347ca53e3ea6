"""AVR diffusion maths (paper Eq. 5-7): the noise schedule and the reverse process.

The schedule is plain tensor code that the U-Net never sees (diffusers' scheduler habit).
It is an angular schedule over S = diffusion_steps steps: x_t = cos(phi_t) x_0 + sin(phi_t) eps
with phi_t = (t / S) * phi_max and cos^2(phi_max) = alpha_bar_end, so alpha_bar_t =
cos^2(phi_t) and beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (Eq. 5's forward chain). The
denoiser is trained at the integer steps t = 1..S (Eq. 7).

Where the reverse process starts (our choice, METHOD.md: the released code starts from the
conditioning feature itself with no noising): from the start feature x_0 (real parts +
pseudo or zero parts) partly noised to alpha_bar_start = cos^2(phi_start) <= 1, i.e. to the
continuous step t_0 = S * phi_start / phi_max, then S deterministic DDIM steps (eta = 0) of
equal size in t down to 0. With alpha_bar_start = alpha_bar_end, t_0 = S and the steps are
the training steps S, S-1, ..., 1; with a larger alpha_bar_start the steps fall between the
training steps and the sinusoidal step embedding interpolates (measured in the README).
At each step the predicted x_0 keeps the real parts of the pair (a mask per segment and
modality), so the denoiser fills in the missing part conditioned on the observed one.
Deterministic given its inputs: the same graph exports to ONNX.
"""
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn


class NoiseSchedule(nn.Module):
    def __init__(self, steps: int = 10, alpha_bar_end: float = 0.25, alpha_bar_start: Optional[float] = None):
        """alpha_bar_start: where the reverse process starts (None: alpha_bar_end, step S)."""
        super().__init__()
        self.steps = steps
        phi_max = math.acos(math.sqrt(alpha_bar_end))
        phi = torch.arange(steps + 1, dtype=torch.float64) / steps * phi_max        # (S+1,), phi_0 = 0
        alpha_bar = torch.cos(phi) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]                                  # (S,)
        # computed in float64, stored in float32 (lucidrains' habit)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)      # (S+1,)
        self.register_buffer("betas", betas.float(), persistent=False)              # (S,)
        # the reverse process's grid, index k = k-th step from the end: t_k = t_0 k / S
        start = alpha_bar_end if alpha_bar_start is None else alpha_bar_start
        if not alpha_bar_end <= start < 1.0:
            raise ValueError(f"alpha_bar_start must be in [alpha_bar_end, 1), got {start}")
        train_t = torch.arange(steps + 1, dtype=torch.float64)                      # (S+1,) the training steps
        rev_t = train_t
        if start != alpha_bar_end:
            rev_t = train_t / steps * (steps * math.acos(math.sqrt(start)) / phi_max)  # t_0 = S phi_start / phi_max
        self.register_buffer("train_t", train_t.float(), persistent=False)          # (S+1,)
        self.register_buffer("rev_t", rev_t.float(), persistent=False)              # (S+1,)
        self.register_buffer("rev_alpha_bar", (torch.cos(rev_t / steps * phi_max) ** 2).float(), persistent=False)

    def grid(self, from_end: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """The reverse process's (alpha_bar, t), each (S+1,), index k = the k-th step from the
        end: from alpha_bar_start, or (from_end) from step S on the training steps."""
        return (self.alpha_bar, self.train_t) if from_end else (self.rev_alpha_bar, self.rev_t)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I). t (N,) int in [0, S]."""
        ab = self.alpha_bar[t].reshape(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def reverse(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
            x_start: torch.Tensor, known: torch.Tensor, noise: torch.Tensor, from_end: bool = False) -> torch.Tensor:
    """S deterministic reverse steps (DDIM, eta = 0) from x_start noised to the schedule's
    start (alpha_bar_start), on the grid t_S = t_0 > ... > t_0 / S; from_end: from the
    schedule's last step S instead, on the training steps S, ..., 1.

    x_start: (N, 2C, H', W') start pair; known: (N, 2C, 1, 1) 1 where the channel is a real
    feature (kept), 0 where it is to be generated; noise: like x_start. Returns x_0.
    The loop has a fixed count, so ONNX export unrolls it into one flat graph.
    """
    s = schedule.steps
    ab, ts = schedule.grid(from_end)
    x = ab[s].sqrt() * x_start + (1 - ab[s]).sqrt() * noise
    x0 = x_start
    for t in range(s, 0, -1):
        t_vec = ts[t].expand(x.shape[0])                                            # (N,) float step
        eps = denoiser(x, t_vec)
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        x0 = known * x_start + (1 - known) * x0
        x = ab[t - 1].sqrt() * x0 + (1 - ab[t - 1]).sqrt() * eps
    return x0
