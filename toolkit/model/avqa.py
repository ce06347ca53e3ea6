"""The full model: encoders, RMM slot generator, AVR diffusion, backbone; and Eq. 8.

Missingness is a mask per segment and modality: mask_a, mask_v (B, T), 1 = the sensor's
segment is real, 0 = absent. An absent segment's raw input is blanked *and* its encoder
output replaced, so nothing of it reaches the model; a modality absent from the whole
batch is not encoded at all.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from avqa_edge.runtime.signal import LOG_EPS

from ..config import ModelConfig
from .backbone import Backbone
from .diffusion import NoiseSchedule, reverse
from .encoders import AudioEncoder, FeatureProjections, QuestionEncoder, VisualEncoder
from .rmm import SlotMemory, recall_loss
from .unet import UNet

FILL_METHODS = ("zero_fill", "rmm", "avr", "rmm+avr")
NOISE_SEED = 1234


@dataclass
class Feats:
    a: torch.Tensor   # (B, T, C)
    v: torch.Tensor   # (B, T, C, H', W')
    q: torch.Tensor   # (B, C)


class AVQAModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c, hw = cfg.dim, (cfg.map_h, cfg.map_w)
        if cfg.inputs == "raw":
            self.audio_encoder = AudioEncoder(c)
            self.visual_encoder = VisualEncoder(c)
        else:
            self.projections = FeatureProjections(cfg.audio_in, cfg.visual_in, c)
        self.question_encoder = QuestionEncoder(len(cfg.vocab) + 2, c)   # + <pad>, <unk>
        self.rmm = SlotMemory(c, hw, cfg.n_slots, cfg.addressing, cfg.learn_temperature,
                              cfg.audio_heads) if cfg.use_rmm else None
        self.schedule = NoiseSchedule(cfg.diffusion_steps, cfg.alpha_bar_end, cfg.avr_start)
        self.denoiser = UNet(2 * c, cfg.unet_base, cfg.unet_mults) if cfg.use_avr else None
        self.backbone = Backbone(c, hw, cfg.t_segments, max(len(cfg.answers), 1), cfg.heads, cfg.fusion_layers)
        # video_expert: answers a question whose video is missing in every segment
        self.video_expert = Backbone(c, hw, cfg.t_segments, max(len(cfg.answers), 1), cfg.heads, cfg.fusion_layers) \
            if cfg.video_expert else None
        gen = torch.Generator().manual_seed(NOISE_SEED)
        # the reverse process's explicit noise: fixed, one per segment, shared by every sample
        self.register_buffer("avr_noise", torch.randn(cfg.t_segments, 2 * c, *hw, generator=gen), persistent=False)

    # ---- encoders -------------------------------------------------------------------------
    def encode_audio(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.inputs == "features":
            return self.projections.encode_audio(batch["audio_feat"])
        if "mel" in batch:                      # training caches the fixed front end's output
            return self.audio_encoder.from_mel(batch["mel"])
        return self.audio_encoder(batch["audio"])

    def encode_visual(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.cfg.inputs == "features":
            return self.projections.encode_visual(batch["visual_feat"])
        return self.visual_encoder(batch["frames"])

    def encode(self, batch: Dict[str, torch.Tensor], mask_a: Optional[torch.Tensor] = None,
               mask_v: Optional[torch.Tensor] = None) -> Tuple[Feats, torch.Tensor, torch.Tensor]:
        """Encode what is present.

        batch: clip tensors for U clips ("frames"/"audio"/"mel" or "*_feat"), "tokens" (B, L)
        and optionally "clip_index" (B,) naming each question's clip (several questions share
        one clip encoding); masks are per clip (U, T). Returns question-level features with
        absent segments zeroed, and question-level masks (B, T)."""
        q = self.question_encoder(batch["tokens"])
        idx = batch.get("clip_index")
        if idx is None:
            idx = torch.arange(q.shape[0], device=q.device)
        u, t = _n_clips(batch), self.cfg.t_segments
        ones = torch.ones(u, t, device=q.device)
        mask_a = ones if mask_a is None else mask_a.to(q.dtype)
        mask_v = ones if mask_v is None else mask_v.to(q.dtype)
        c, h, w = self.cfg.dim, self.cfg.map_h, self.cfg.map_w
        if bool(mask_a.any()):
            a = self.encode_audio(_blank(batch, "audio", mask_a)) * mask_a[..., None]
        else:
            a = q.new_zeros(u, t, c)
        if bool(mask_v.any()):
            v = self.encode_visual(_blank(batch, "visual", mask_v)) * mask_v[..., None, None, None]
        else:
            v = q.new_zeros(u, t, c, h, w)
        return Feats(a[idx], v[idx], q), mask_a[idx], mask_v[idx]

    # ---- missing-modality recovery ---------------------------------------------------------
    def pseudo(self, f: Feats) -> Tuple[torch.Tensor, torch.Tensor]:
        """RMM pseudo features (Eq. 2) for every segment: audio from visual + question,
        visual from audio + question. Without RMM: zeros.

        The generator reads detached features: it learns to recall, while the encoders learn
        from the answers alone (in the released code they are frozen feature extractors, so
        Eq. 3-4 never pull on them there either)."""
        if self.rmm is None:
            return torch.zeros_like(f.a), torch.zeros_like(f.v)
        a, v, q = f.a.detach(), f.v.detach(), f.q.detach()
        return self.rmm.pseudo_audio(v, q), self.rmm.pseudo_visual(a, q)

    def enhance(self, a: torch.Tensor, v: torch.Tensor, known_a: torch.Tensor, known_v: torch.Tensor,
                from_end: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """AVR (Eq. 5-7 at inference): the pair goes through the S-step reverse process, from
        cfg.avr_start (from_end: from the schedule's last step, as Eq. 8's AVR phase does); parts
        marked known (B, T) stay as they are. -> enhanced (a, v).

        Segments with both parts known come back unchanged from the reverse process, so only
        the others are run (an exact shortcut; the exported graph runs every segment)."""
        b, t, c, h, w = v.shape
        x = torch.cat([a[..., None, None].expand(-1, -1, -1, h, w), v], dim=2).reshape(b * t, 2 * c, h, w)  # (B*T, 2C, H', W')
        known = torch.cat([known_a[..., None].expand(-1, -1, c), known_v[..., None].expand(-1, -1, c)], dim=2)
        known = known.reshape(b * t, 2 * c, 1, 1)
        noise = self.avr_noise[None].expand(b, -1, -1, -1, -1).reshape(b * t, 2 * c, h, w)
        rows = ((known_a < 1) | (known_v < 1)).reshape(b * t).nonzero().squeeze(1)   # segments to run
        out = x.clone()
        if len(rows):
            out[rows] = reverse(self.denoiser, self.schedule, x[rows], known[rows], noise[rows], from_end)
        out = out.reshape(b, t, 2 * c, h, w)
        return out[:, :, :c].mean(dim=(-1, -2)), out[:, :, c:]                          # (B,T,C), (B,T,C,H',W')

    def fill(self, f: Feats, mask_a: torch.Tensor, mask_v: torch.Tensor, method: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replace absent segments by zeros (zero_fill), RMM pseudo features (rmm), or run AVR
        from zeros (avr) or from the pseudo features (rmm+avr)."""
        if method not in FILL_METHODS:
            raise ValueError(f"unknown method {method!r}")
        ma, mv = mask_a[..., None], mask_v[..., None, None, None]
        if method in ("rmm", "rmm+avr") and self.rmm is not None:
            pa, pv = self.pseudo(f)
            a, v = ma * f.a + (1 - ma) * pa, mv * f.v + (1 - mv) * pv
        else:
            a, v = f.a, f.v
        if method in ("avr", "rmm+avr") and self.denoiser is not None and bool(((mask_a < 1) | (mask_v < 1)).any()):
            a, v = self.enhance(a, v, mask_a, mask_v)
        return a, v

    def forward(self, batch: Dict[str, torch.Tensor], mask_a: Optional[torch.Tensor] = None,
                mask_v: Optional[torch.Tensor] = None, method: str = "rmm+avr") -> torch.Tensor:
        """-> answer logits (B, n_answers)."""
        f, mask_a, mask_v = self.encode(batch, mask_a, mask_v)
        a, v = self.fill(f, mask_a, mask_v, method)
        return self.answer(a, v, f.q, mask_a, mask_v)

    def answer(self, a: torch.Tensor, v: torch.Tensor, q: torch.Tensor, mask_a: torch.Tensor,
               mask_v: torch.Tensor) -> torch.Tensor:
        """-> logits (B, n_answers): the video expert for a question whose video is missing in
        all T segments (and audio is not), the shared backbone otherwise."""
        if self.video_expert is None:
            return self.backbone(a, v, q)
        rows = (mask_v.sum(1) == 0) & (mask_a.sum(1) > 0)                                  # (B,)
        if not bool(rows.any()):
            return self.backbone(a, v, q)
        if bool(rows.all()):
            return self.video_expert(a, v, q)
        logits = self.backbone(a, v, q)
        return logits.index_put((rows,), self.video_expert(a[rows], v[rows], q[rows]))

    def reset_backbones(self) -> None:
        """Fresh weights for the backbone and the video expert (training's stage 2)."""
        for net in (self.backbone, self.video_expert):
            if net is not None:
                net.reset_parameters()

    # ---- training losses (Eq. 8) -------------------------------------------------------------
    def denoise_loss(self, f: Feats, max_pairs: int = 0) -> torch.Tensor:
        """Eq. 7: E ||eps_theta(x_t, t) - eps||^2 on real pairs (detached: the denoiser learns
        the encoders' feature distribution without pulling the encoders toward it), on at most
        `max_pairs` random segment pairs (0 = all) to bound the cost per step."""
        b, t, c, h, w = f.v.shape
        x0 = torch.cat([f.a[..., None, None].expand(-1, -1, -1, h, w), f.v], dim=2).reshape(b * t, 2 * c, h, w).detach()
        if 0 < max_pairs < x0.shape[0]:
            x0 = x0[torch.randperm(x0.shape[0], device=x0.device)[:max_pairs]]
        steps = torch.randint(1, self.schedule.steps + 1, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        return F.mse_loss(self.denoiser(self.schedule.add_noise(x0, eps, steps), steps), eps)

    def losses(self, f: Feats, answers: torch.Tensor, mask_a: torch.Tensor, mask_v: torch.Tensor,
               use_avr_in_loss: bool, max_pairs: int = 0) -> Dict[str, torch.Tensor]:
        """Eq. 8: CE(f^a, f^v) + CE(f^ap_hat, f^v_hat) + CE(f^a_hat, f^vp_hat) + l1 L_rmmr + l2 L_ave.

        mask_a / mask_v: the segments treated as missing in the two pseudo terms. When
        use_avr_in_loss, the pseudo pairs go through the AVR sampler without gradient and a
        straight-through estimator passes the backbone's gradient to the RMM (backpropagating
        through all S sampler steps is ~20x slower per step)."""
        cfg = self.cfg
        out = {"ce_complete": F.cross_entropy(self.backbone(f.a, f.v, f.q), answers)}
        pa, pv = self.pseudo(f)
        out.update(self.pseudo_ce(f, pa, pv, answers, mask_a, mask_v, use_avr_in_loss))
        if self.rmm is not None:
            out["rmm"] = recall_loss(f.a.detach(), pa, cfg.recall_loss) + recall_loss(f.v.detach(), pv, cfg.recall_loss)
        if self.denoiser is not None:
            out["ave"] = self.denoise_loss(f, max_pairs)
        return out

    def pseudo_ce(self, f: Feats, pa: torch.Tensor, pv: torch.Tensor, answers: torch.Tensor, mask_a: torch.Tensor,
                  mask_v: torch.Tensor, through_avr: bool) -> Dict[str, torch.Tensor]:
        """Eq. 8's two pseudo terms: CE(f^ap_hat, f^v_hat) and CE(f^a_hat, f^vp_hat)."""
        ones = torch.ones_like(mask_a)
        ma, mv = mask_a[..., None], mask_v[..., None, None, None]
        a_hat, v_hat = ma * f.a + (1 - ma) * pa, mv * f.v + (1 - mv) * pv
        if through_avr and self.denoiser is not None:
            # the sampler from the schedule's last step (the most noise), whatever cfg.avr_start
            # says for inference: the runs the README reports were trained so (see its AVR notes)
            with torch.no_grad():
                ea, _ = self.enhance(a_hat, f.v, mask_a, ones, from_end=True)
                _, ev = self.enhance(f.a, v_hat, ones, mask_v, from_end=True)
            a_hat = a_hat + (ea - a_hat).detach()
            v_hat = v_hat + (ev - v_hat).detach()
        return {"ce_audio_pseudo": F.cross_entropy(self.backbone(a_hat, f.v, f.q), answers),
                "ce_visual_pseudo": F.cross_entropy(self.backbone(f.a, v_hat, f.q), answers)}


def _n_clips(batch: Dict[str, torch.Tensor]) -> int:
    for key in ("frames", "audio", "mel", "audio_feat", "visual_feat"):
        if key in batch:
            return batch[key].shape[0]
    raise ValueError("the batch holds no audio or visual input")


def _blank(batch: Dict[str, torch.Tensor], modality: str, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Blank the raw input of absent segments (mask (U, T), 1 = present): black frames, silent
    audio; a cached log-mel gets log(LOG_EPS), what silence gives."""
    if bool(mask.all()):
        return batch
    out = dict(batch)
    u, t = mask.shape
    for key in (("audio", "mel", "audio_feat") if modality == "audio" else ("frames", "visual_feat")):
        if key not in out:
            continue
        x = out[key]
        if key == "audio":
            m = mask.repeat_interleave(x.shape[1] // t, 1)                       # (U, T*S)
        else:
            m = mask.reshape(u, t, *([1] * (x.dim() - 2)))                       # (U, T, 1, ...)
        if key == "mel":
            out[key] = x * m + (1 - m) * math.log(LOG_EPS)
        else:
            out[key] = x * m.to(x.dtype)
    return out
