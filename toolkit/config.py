"""Model and training configuration.

The model config travels with the weights (config.json beside model.safetensors) and
rebuilds the model, vocabulary and answer list included (nanoGPT's `model_args` habit).
"""
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from avqa_edge.errors import AvqaError

ADDRESSING = ("logspace", "paper")
# what `avqa-edge train --method` trains (prompt learning is its own trainer, toolkit/prompt_train.py)
METHODS = ("rmm_avr", "baseline", "dropout", "retrofit")
# Bumped whenever a change to the model code makes older weights unloadable; part of the
# config (and so of its hash). Runs written before the field existed count as version 1.
ARCH_VERSION = 3
# Fields added to ModelConfig after runs were first written, with the value that those runs
# implied: configs without the field load with it, and a config at that value hashes without
# the field, so older runs, bundles and results keep their hash.
LEGACY_DEFAULTS = {"audio_heads": 1, "avr_start": None, "video_expert": False}
# The same for TrainConfig: runs saved before stage 2 existed trained in one stage.
LEGACY_TRAIN_DEFAULTS = {"refit_steps": 0}
# runs whose stage 1 is another finished run's (--from): only stage 2 trains. retrofit needs one
BASE_RUN_METHODS = ("rmm_avr", "baseline", "dropout", "retrofit")


@dataclass
class ModelConfig:
    preset: str = "edge"
    arch: int = ARCH_VERSION
    inputs: str = "raw"              # "raw": frames + waveform encoders; "features": MUSIC-AVQA features
    dim: int = 64                    # C, the shared feature width
    map_h: int = 4                   # visual map H' (raw: 32 px / 8)
    map_w: int = 6                   # visual map W' (raw: 48 px / 8)
    t_segments: int = 10             # T
    audio_in: int = 128              # features only: VGGish width
    visual_in: int = 512             # features only: ResNet-18 channels
    vocab: List[str] = field(default_factory=list)      # question words, without <pad>=0 and <unk>=1
    answers: List[str] = field(default_factory=list)
    q_len: int = 14
    heads: int = 4
    fusion_layers: int = 1           # audio<->visual attention blocks in the backbone
    # a second backbone that answers when the video is missing in all T segments
    # (model/avqa.py: AVQAModel.answer; the bundle's `video_expert` graph). On in the `edge`
    # preset; False here is what runs written before the field existed imply (LEGACY_DEFAULTS)
    video_expert: bool = False
    # RMM (Eq. 1-4)
    use_rmm: bool = True
    n_slots: int = 75                # L
    addressing: str = "logspace"     # "paper": softmax(a^v * a^t); "logspace": softmax(log a^v + log a^t)
    learn_temperature: bool = True   # per-modality addressing temperature (paper: sqrt(c) for all)
    audio_heads: int = 4             # heads of the audio recall (1: Eq. 1-2 as written; see rmm.py)
    recall_loss: str = "element_mean"  # or "sample_sum" (Eq. 3 literally: squared L2 per sample)
    # AVR (Eq. 5-7)
    use_avr: bool = True
    diffusion_steps: int = 10        # T_diff, also the number of reverse steps
    alpha_bar_end: float = 0.25      # signal fraction at the schedule's last step S (see diffusion.py)
    avr_start: Optional[float] = 0.75  # signal fraction where the reverse process starts (None: alpha_bar_end)
    unet_base: int = 16
    unet_mults: Tuple[int, ...] = (1, 2)

    def __post_init__(self):
        self.unet_mults = tuple(self.unet_mults)
        if self.addressing not in ADDRESSING:
            raise AvqaError(f"addressing must be one of {ADDRESSING}, got {self.addressing!r}")
        if self.audio_heads < 1 or self.dim % self.audio_heads:
            raise AvqaError(f"audio_heads must divide dim ({self.dim}), got {self.audio_heads}")
        if self.inputs not in ("raw", "features"):
            raise AvqaError(f"inputs must be 'raw' or 'features', got {self.inputs!r}")
        if self.recall_loss not in ("element_mean", "sample_sum"):
            raise AvqaError(f"recall_loss must be 'element_mean' or 'sample_sum', got {self.recall_loss!r}")
        if self.diffusion_steps < 1 or not 0.0 < self.alpha_bar_end < 1.0:
            raise AvqaError("diffusion_steps must be >= 1 and alpha_bar_end in (0, 1)")
        if self.avr_start is not None and not self.alpha_bar_end <= self.avr_start < 1.0:
            raise AvqaError(f"avr_start must be in [alpha_bar_end, 1) = [{self.alpha_bar_end}, 1), got {self.avr_start}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["unet_mults"] = list(self.unet_mults)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = {"arch": 1, **LEGACY_DEFAULTS, **d}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise AvqaError(f"unknown model config keys {sorted(unknown)}: was this run made by a newer avqa-edge?")
        return cls(**d)

    def hash(self) -> str:
        """Short stable hash of the config (recorded in runs, results and bundles)."""
        d = {k: v for k, v in self.to_dict().items() if LEGACY_DEFAULTS.get(k, object()) != v}
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def preset(name: str, **overrides) -> ModelConfig:
    """`edge` (default; raw signals, CPU / Jetson sized) or `paper` (MUSIC-AVQA features)."""
    if name == "edge":
        base = dict(preset="edge", video_expert=True)
    elif name == "paper":
        # C = 512, 14x14 maps, L = 75, 10 steps; the released U-Net: base 64, mults (1, 2).
        base = dict(preset="paper", inputs="features", dim=512, map_h=14, map_w=14,
                    heads=8, unet_base=64, unet_mults=(1, 2))
    else:
        raise AvqaError(f"unknown preset {name!r}: choose 'edge' or 'paper'")
    base.update(overrides)
    return ModelConfig(**base)


PRESET_LR = {"edge": 2e-3, "paper": 1e-4}


@dataclass
class TrainConfig:
    # rmm_avr | baseline (complete data only) | dropout (modality dropout) | retrofit (RMM and AVR
    # trained on top of base_run's frozen backbone)
    method: str = "rmm_avr"
    # 1500 + 1500 (sessions 12-16: 3000 + 3000) so that training fits the 15-minute budget on the
    # slower of the 2-core machines measured (an Intel Xeon VM: 10 min against 22.9 for 3000 + 3000)
    steps: int = 1500                # stage 1: everything end to end
    # stage 2 (toolkit/refit.py): encoders frozen and their features cached, the backbone re-initialized
    # and refit with RMM and AVR; 0 turns it off (then L_ave and the AVR phase run in stage 1)
    refit_steps: int = 1500
    batch_size: int = 64
    lr: float = 0.0                  # 0 -> the preset's learning rate
    seed: int = 0
    device: str = "auto"
    lambda_rmm: float = 1.0          # lambda_1 of Eq. 8
    lambda_ave: float = 1.0          # lambda_2 of Eq. 8
    # last fraction of the last stage's steps whose pseudo terms also go through the AVR sampler (no
    # gradient through it), so the backbone learns to read AVR's output: without it rmm+avr fell below rmm
    avr_finetune_frac: float = 0.2
    # weight of the auxiliary event-tagging loss on the encoders (model/tagger.py); used only where
    # the data has per-segment ground truth (the built-in benchmark); 0 turns it off
    tag_weight: float = 1.0
    p_full_missing: float = 0.5      # pseudo terms: chance that all T segments are missing (else a random subset)
    # rmm_avr: weight of modality-dropout terms beside Eq. 8's pseudo terms (the same masks, the
    # missing parts zero-filled instead of recalled; the video expert sees zeros as well as the
    # recall), so that one model serves both fills; 0 is Eq. 8 alone
    dropout_weight: float = 0.0
    # a finished run whose stage 1 this run takes (its encoders, frozen) instead of training its
    # own: only stage 2 trains; retrofit also keeps its backbone, frozen (None: train stage 1)
    base_run: Optional[str] = None
    eval_every: int = 250
    val_samples: int = 512
    threads: int = 0                 # 0 -> torch default

    def __post_init__(self):
        if self.method not in METHODS:
            raise AvqaError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.refit_steps < 0:
            raise AvqaError("steps and batch size must be positive, refit steps not negative")
        if self.method == "retrofit" and not self.base_run:
            raise AvqaError("retrofit trains RMM and AVR on a finished run's frozen backbone: give that run (--from)")
        if self.base_run and not self.refit_steps:
            raise AvqaError("a run on another run's encoders (--from) trains stage 2 only: --refit-steps must be positive")
        if self.dropout_weight < 0 or (self.dropout_weight and self.method != "rmm_avr"):
            raise AvqaError("--dropout-weight is a non-negative weight of the rmm_avr method")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{**LEGACY_TRAIN_DEFAULTS, **d})
