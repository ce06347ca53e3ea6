"""Question tokenizer (torch-free; shared by training and the runtime).

Words the model's vocabulary lacks become <unk>: the model answers as if they were not
there. The runtime says so (`unknown_words` in every answer, the confidence scaled by the
known fraction) and refuses a question whose words are mostly unknown:
`check_known` raises QuestionError when more than MAX_UNKNOWN_FRACTION (one half) of its
words are unknown.
"""
import re
from typing import Dict, List, Sequence

from avqa_edge.errors import QuestionError

PAD, UNK = "<pad>", "<unk>"
MAX_QUESTION_TOKENS = 14   # MUSIC-AVQA questions are at most 14 tokens
MAX_UNKNOWN_FRACTION = 0.5  # more of a question's words unknown than this: refused

_TOKEN_RE = re.compile(r"[a-z0-9_]+")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")   # valid as a JSON escape ("\\ud800"), not a character


def tokenize(question: str) -> List[str]:
    """Lower-case word tokens (MUSIC-AVQA names such as acoustic_guitar stay one token); punctuation is dropped."""
    return _TOKEN_RE.findall(question.lower())


class Vocabulary:
    """Word <-> id map with <pad> = 0 and <unk> = 1."""

    def __init__(self, words: Sequence[str]):
        self.words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        self.index: Dict[str, int] = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, questions: Sequence[str]) -> "Vocabulary":
        return cls(sorted({tok for q in questions for tok in tokenize(q)}))

    def __len__(self) -> int:
        return len(self.words)

    def unknown(self, question: str) -> List[str]:
        """The question's words the vocabulary lacks, in order (repeats kept)."""
        return [t for t in tokenize(question) if t not in self.index]

    def check_known(self, question: str) -> List[str]:
        """The unknown words of a question; QuestionError when more than
        MAX_UNKNOWN_FRACTION of its words are unknown (the answer would be a guess)."""
        toks, unknown = tokenize(question), self.unknown(question)
        if toks and len(unknown) == len(toks):
            raise QuestionError("none of the question's words are known to the model")
        if len(unknown) > MAX_UNKNOWN_FRACTION * len(toks):
            raise QuestionError(f"{len(unknown)} of the question's {len(toks)} words are unknown to the model "
                                f"({', '.join(sorted(set(unknown))[:5])}{', ...' if len(set(unknown)) > 5 else ''}): "
                                "at most half may be")
        return unknown

    def encode(self, question: str, length: int = MAX_QUESTION_TOKENS) -> List[int]:
        """Right-padded ids of length `length`. Raises QuestionError for unusable questions."""
        if not isinstance(question, str) or not question.strip():
            raise QuestionError("the question is empty")
        toks = tokenize(question)
        if len(toks) > length:
            raise QuestionError(f"the question has {len(toks)} words; at most {length} are supported")
        ids = [self.index.get(t, 1) for t in toks]
        if ids and all(i == 1 for i in ids):
            raise QuestionError("none of the question's words are known to the model")
        return ids + [0] * (length - len(ids))
