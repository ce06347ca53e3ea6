"""A small U-Net that predicts the noise in a noisy audio-visual pair (Eq. 7's eps_theta).

Input (N, 2C, H', W'): audio tiled over H'W' concatenated with the visual map. One level
down per multiplier after the first (the released code: base 64, mults (1, 2)); 1x1 convs in
and out keep the wide feature dimension cheap. GroupNorm is avoided (the dynamo exporter's
opset-17 conversion of GroupNorm is unreliable, DEPLOY.md); BatchNorm folds away at export.
"""
from typing import Sequence

import torch
from torch import nn

from .encoders import sinusoidal


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(tdim, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = nn.SiLU()
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x)) + self.time(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.act(h))


class UNet(nn.Module):
    def __init__(self, channels: int, base: int = 32, mults: Sequence[int] = (1, 2)):
        super().__init__()
        self.tdim = base * 4
        self.time_mlp = nn.Sequential(nn.Linear(base, self.tdim), nn.SiLU(), nn.Linear(self.tdim, self.tdim))
        self.inp = nn.Conv2d(channels, base, 1)
        widths = [base * m for m in mults]
        self.down = nn.ModuleList()
        cin = base
        for i, w in enumerate(widths):
            self.down.append(ResBlock(cin, w, self.tdim))
            cin = w
        self.mid = ResBlock(cin, cin, self.tdim)
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(ResBlock(cin + w, w, self.tdim))
            cin = w
        self.out = nn.Conv2d(cin, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (N, 2C, H', W'), t (N,) int step -> predicted noise (N, 2C, H', W')."""
        temb = self.time_mlp(sinusoidal(t, self.time_mlp[0].in_features))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = nn.functional.avg_pool2d(h, 2, ceil_mode=True)          # (N, w, ceil(H/2), ceil(W/2))
            h = block(h, temb)
            skips.append(h)
        h = self.mid(h, temb)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)
        return self.out(h)
