"""AVR diffusion maths (paper Eq. 5-7): the noise schedule and the reverse process.

The schedule is plain tensor code that the U-Net never sees (diffusers' scheduler habit).
It is an angular schedule over S = diffusion_steps steps: x_t = cos(phi_t) x_0 + sin(phi_t) eps
with phi_t = (t / S) * phi_max and cos^2(phi_max) = alpha_bar_end, so alpha_bar_t =
cos^2(phi_t) and beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (Eq. 5's forward chain).

Where the reverse process starts (our choice, METHOD.md: the released code starts from the
conditioning feature itself with no noising): from the start feature x_0 (real parts +
pseudo or zero parts) noised to step S with an explicit noise tensor, then S deterministic
DDIM steps (eta = 0). At each step the predicted x_0 keeps the real parts of the pair
(a mask per segment and modality), so the denoiser fills in the missing part conditioned
on the observed one. Deterministic given its inputs: the same graph exports to ONNX.
"""
import math
from typing import Callable

import torch
from torch import nn


class NoiseSchedule(nn.Module):
    def __init__(self, steps: int = 10, alpha_bar_end: float = 0.25):
        super().__init__()
        self.steps = steps
        phi_max = math.acos(math.sqrt(alpha_bar_end))
        phi = torch.arange(steps + 1, dtype=torch.float64) / steps * phi_max        # (S+1,), phi_0 = 0
        alpha_bar = torch.cos(phi) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]                                  # (S,)
        # computed in float64, stored in float32 (lucidrains' habit)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)      # (S+1,)
        self.register_buffer("betas", betas.float(), persistent=False)              # (S,)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I). t (N,) int in [0, S]."""
        ab = self.alpha_bar[t].reshape(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def reverse(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
            x_start: torch.Tensor, known: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """S deterministic reverse steps (DDIM, eta = 0) from x_start noised to step S.

    x_start: (N, 2C, H', W') start pair; known: (N, 2C, 1, 1) 1 where the channel is a real
    feature (kept), 0 where it is to be generated; noise: like x_start. Returns x_0.
    The loop has a fixed count, so ONNX export unrolls it into one flat graph.
    """
    s = schedule.steps
    ab = schedule.alpha_bar
    x = ab[s].sqrt() * x_start + (1 - ab[s]).sqrt() * noise
    x0 = x_start
    for t in range(s, 0, -1):
        t_vec = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = denoiser(x, t_vec)
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        x0 = known * x_start + (1 - known) * x0
        x = ab[t - 1].sqrt() * x0 + (1 - ab[t - 1]).sqrt() * eps
    return x0
