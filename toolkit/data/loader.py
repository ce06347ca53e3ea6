"""Turn a split (raw clips or MUSIC-AVQA features) into torch batches.

A batch holds U clips and B questions about them: clip tensors (U, ...), "tokens" (B, L),
"clip_index" (B,) and "answers" (B,). Several questions share one clip encoding.
"""
import warnings
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from avqa_edge.errors import AvqaError, DataError
from avqa_edge.runtime.signal import SEGMENT_SAMPLES
from avqa_edge.runtime.text import Vocabulary

from .types import FeatureSplit, RawSplit


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def question_place(split: Union[RawSplit, FeatureSplit], n: int) -> str:
    """Where question n of a split comes from, for messages: its manifest file and line for custom
    data, else its 1-based number."""
    lines, manifest = split.meta.get("question_lines"), split.meta.get("manifest")
    if lines and manifest and n < len(lines):
        return f"{manifest}, line {lines[n]}"
    return f"question {n + 1}"


class UnknownAnswerWarning(UserWarning):
    """Evaluation answers outside the model's answer list (scored as wrong)."""


class SplitData:
    def __init__(self, split: Union[RawSplit, FeatureSplit], vocab: Vocabulary, answers: Sequence[str],
                 strict_answers: bool = True, name: str = "evaluation"):
        """`strict_answers`: an answer outside `answers` is an error (training); otherwise it is
        scored as always wrong, and one warning counts them and names their places."""
        self.split = split
        self.raw = isinstance(split, RawSplit)
        answer_index = {a: i for i, a in enumerate(answers)}
        tokens, labels, unknown = [], [], []
        for n, qa in enumerate(split.qa):
            try:
                tokens.append(vocab.encode(qa.question))
            except AvqaError as e:
                raise DataError(f"{question_place(split, n)} ({qa.question!r}): {e}") from None
            if qa.answer not in answer_index:
                if strict_answers:
                    raise DataError(f"{question_place(split, n)}: answer {qa.answer!r} is not in the answer list")
                unknown.append(n)
            labels.append(answer_index.get(qa.answer, -1))   # -1: unseen answer, always wrong
        self.unknown_answers = len(unknown)
        if unknown:
            shown = "; ".join(f"{question_place(split, n)}: {split.qa[n].answer!r}" for n in unknown[:5])
            warnings.warn(f"{len(unknown)} of {len(split.qa)} {name} answers are not in the answer list and count "
                          f"as wrong: {shown}" + (" ..." if len(unknown) > 5 else ""), UnknownAnswerWarning,
                          stacklevel=2)
        self.tokens = torch.tensor(tokens, dtype=torch.int64)              # (Q, L)
        self.answers = torch.tensor(labels, dtype=torch.int64)            # (Q,)
        self.clip = torch.tensor([qa.clip for qa in split.qa], dtype=torch.int64)
        self.qtypes: List[str] = [qa.qtype for qa in split.qa]
        self.mel: Optional[torch.Tensor] = None
        # the built-in benchmark's per-segment event labels, for the auxiliary tagging loss
        self.labels: Optional[Dict[str, torch.Tensor]] = None
        scenes = split.meta.get("scenes") if self.raw else None
        if scenes:
            from .synth import Scene, segment_labels
            per_clip = [segment_labels(Scene.from_dict(d)) for d in scenes]
            self.labels = {k: torch.from_numpy(np.stack([p[k] for p in per_clip])) for k in per_clip[0]}  # (N, T, ...)
        n_clips = int(self.clip.max()) + 1 if len(self.clip) else 0
        self.questions_of = [[] for _ in range(n_clips)]
        for i, c in enumerate(self.clip.tolist()):
            self.questions_of[c].append(i)

    def __len__(self) -> int:
        return len(self.tokens)

    def cache_mel(self, frontend: torch.nn.Module, chunk: int = 256) -> None:
        """Run the fixed log-mel front end once over all clips (training speed-up; the same
        module runs inside the exported audio encoder)."""
        audio = self.split.audio
        out = []
        with torch.no_grad():
            for i in range(0, len(audio), chunk):
                wave = torch.from_numpy(audio[i:i + chunk].astype(np.float32) / 32768.0)   # (u, T*S)
                u = wave.shape[0]
                mel = frontend(wave.reshape(-1, SEGMENT_SAMPLES))                          # (u*T, M, F)
                out.append(mel.reshape(u, -1, *mel.shape[1:]))
        self.mel = torch.cat(out)                                                          # (N, T, M, F)

    def clip_tensors(self, clips: Sequence[int]) -> Dict[str, torch.Tensor]:
        idx = np.asarray(clips)
        if not self.raw:
            return {"audio_feat": torch.from_numpy(np.asarray(self.split.audio[idx], dtype=np.float32)),
                    "visual_feat": torch.from_numpy(np.asarray(self.split.visual[idx], dtype=np.float32))}
        out = {"frames": torch.from_numpy(self.split.frames[idx])}
        if self.labels is not None:
            out.update({"label_" + k: v[torch.from_numpy(idx)] for k, v in self.labels.items()})
        if self.mel is not None:
            out["mel"] = self.mel[torch.from_numpy(idx)]
        else:
            out["audio"] = torch.from_numpy(self.split.audio[idx].astype(np.float32) / 32768.0)
        return out

    def batch(self, questions: Sequence[int]) -> Dict[str, torch.Tensor]:
        """Batch of the given question indices, each distinct clip encoded once."""
        q = torch.as_tensor(questions, dtype=torch.int64)
        clips, inverse = torch.unique(self.clip[q], return_inverse=True)
        out = self.clip_tensors(clips.tolist())
        out.update(tokens=self.tokens[q], clip_index=inverse, answers=self.answers[q], questions=q)
        return out

    def sample(self, rng: np.random.Generator, batch_size: int, per_clip: int = 4) -> List[int]:
        """batch_size questions from batch_size // per_clip random clips."""
        clips = rng.choice(len(self.questions_of), size=max(1, batch_size // per_clip), replace=False)
        out = []
        for c in clips:
            qs = self.questions_of[c]
            if qs:
                out.extend(rng.choice(qs, size=per_clip, replace=len(qs) < per_clip).tolist())
        return out

    def ordered_batches(self, batch_size: int, limit: int = 0) -> List[List[int]]:
        """Question indices in clip order, in batches (evaluation). limit > 0: first `limit`
        questions of a fixed shuffle (seed 0), for quick validation."""
        order = np.arange(len(self))
        if limit and limit < len(order):
            order = np.sort(np.random.default_rng(0).permutation(len(order))[:limit])
        order = order[np.argsort(self.clip[order].numpy(), kind="stable")]
        return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
