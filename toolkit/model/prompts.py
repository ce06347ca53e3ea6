"""Prompt learning for uncertain missing modality (issue 5; METHOD.md section 5).

Small learnable tokens adapt a trained, frozen model to degraded sensors. One prompt set
per case (PROMPT_CASES): `complete`, `audio` (audio missing or noisy), `visual` (video
missing or noisy), `both` (both noisy). A set holds

- input-level prompts: P_in audio tokens and P_in visual tokens (C each), concatenated with
  that modality's T segment tokens before the backbone's audio<->visual attention block
  (`Backbone.forward(..., prompts=(pa, pv))`; their outputs are dropped after the block);
- attention-level prompts: P_attn tokens prepended to that block's keys and values
  (`prefix_kv`). These are a **separate** set, not the input-level tokens reused as the
  reference does: the backbone has a single audio<->visual block, so the input tokens are
  already keys and values of that very attention, and reusing them would only duplicate them.

Inference: `select(case)` gives each sample the set of its case (`prompt_oracle`, or a health
monitor's verdict); `concat_all()` concatenates every set along the token axis
(`prompt_all`: the case is unknown). Prompt tokens start from the backbone's modality type
embedding plus small noise, so an untrained set is close to "one more token of that
modality".

The prompts live in their own module and file (`prompts.safetensors` in a prompt run), never
in the base model's state dict: a base run's weights load unchanged.
"""
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from avqa_edge.errors import AvqaError

PROMPT_CASES = ("complete", "audio", "visual", "both")
# evaluation / training condition -> prompt case
CONDITION_CASE = {"complete": "complete", "audio_missing": "audio", "audio_noisy": "audio",
                  "visual_missing": "visual", "visual_noisy": "visual", "both_noisy": "both"}


@dataclass
class PromptConfig:
    dim: int = 64
    n_input: int = 4          # P_in: input-level prompt tokens per modality and case
    n_attn: int = 4           # P_attn: attention-level (key/value) prompt tokens per case
    cases: Tuple[str, ...] = PROMPT_CASES

    def __post_init__(self):
        self.cases = tuple(self.cases)
        if self.n_input < 0 or self.n_attn < 0 or self.n_input + self.n_attn == 0:
            raise AvqaError("prompts: n_input and n_attn must be >= 0 and not both 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cases"] = list(self.cases)
        return d


Prompts = Tuple[Optional[Tuple[torch.Tensor, torch.Tensor]], Optional[torch.Tensor]]


class PromptBank(nn.Module):
    """K prompt sets (K = len(cases)): input_a / input_v (K, P_in, C), attn (K, P_attn, C)."""

    def __init__(self, cfg: PromptConfig, type_av: Optional[torch.Tensor] = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        k, c = len(cfg.cases), cfg.dim
        gen = torch.Generator().manual_seed(seed)
        base = type_av.detach().clone() if type_av is not None else torch.zeros(2, c)   # (2, C)

        def init(n: int, row: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(row.expand(k, n, c).clone() + 0.02 * torch.randn(k, n, c, generator=gen))

        self.input_a = init(cfg.n_input, base[0])
        self.input_v = init(cfg.n_input, base[1])
        self.attn = init(cfg.n_attn, base.mean(0))

    def case_index(self, cases: Union[str, Sequence[str]]) -> torch.Tensor:
        names = [cases] if isinstance(cases, str) else list(cases)
        unknown = [c for c in names if c not in self.cfg.cases]
        if unknown:
            raise AvqaError(f"unknown prompt case(s) {sorted(set(unknown))}; known: {list(self.cfg.cases)}")
        return torch.tensor([self.cfg.cases.index(c) for c in names], dtype=torch.int64)

    def _pack(self, pa: torch.Tensor, pv: torch.Tensor, kv: torch.Tensor) -> Prompts:
        return ((pa, pv) if self.cfg.n_input else None), (kv if self.cfg.n_attn else None)

    def select(self, idx: torch.Tensor) -> Prompts:
        """idx (B,) case indices -> ((pa, pv) (B, P_in, C) each, kv (B, P_attn, C)): each sample's set."""
        return self._pack(self.input_a[idx], self.input_v[idx], self.attn[idx])

    def concat_all(self, b: int) -> Prompts:
        """Every set concatenated along the tokens: ((B, K*P_in, C) x 2, (B, K*P_attn, C))."""
        k, c = len(self.cfg.cases), self.cfg.dim
        return self._pack(self.input_a.reshape(1, -1, c).expand(b, -1, -1),
                          self.input_v.reshape(1, -1, c).expand(b, -1, -1),
                          self.attn.reshape(1, -1, c).expand(b, -1, -1))


def prompted_logits(backbone: nn.Module, a: torch.Tensor, v: torch.Tensor, q: torch.Tensor, prompts: Prompts) -> torch.Tensor:
    """The backbone's answer logits with prompts ((pa, pv) or None, kv or None)."""
    inp, kv = prompts
    return backbone(a, v, q, prefix_kv=kv, prompts=inp)


def n_parameters(bank: PromptBank) -> int:
    return sum(p.numel() for p in bank.parameters())
