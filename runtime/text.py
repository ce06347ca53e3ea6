"""Question tokenizer (torch-free; shared by training and the runtime)."""
import re
from typing import Dict, List, Sequence

from avqa_edge.errors import AvqaError

PAD, UNK = "<pad>", "<unk>"
MAX_QUESTION_TOKENS = 14   # MUSIC-AVQA questions are at most 14 tokens

_TOKEN_RE = re.compile(r"[a-z0-9_]+")


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

    def encode(self, question: str, length: int = MAX_QUESTION_TOKENS) -> List[int]:
        """Right-padded ids of length `length`. Raises AvqaError for unusable questions."""
        if not isinstance(question, str) or not question.strip():
            raise AvqaError("the question is empty")
        toks = tokenize(question)
        if len(toks) > length:
            raise AvqaError(f"the question has {len(toks)} words; at most {length} are supported")
        ids = [self.index.get(t, 1) for t in toks]
        if ids and all(i == 1 for i in ids):
            raise AvqaError("none of the question's words are known to the model")
        return ids + [0] * (length - len(ids))
