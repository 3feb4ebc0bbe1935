"""Reference rows measured in the same run: copy-prior and oracle.

- copy-prior: the counterfactual is the registered prior image (no change at all);
  the interpretation is retrieved: the interpretation of the training pair whose
  prompt is most similar to the test prompt (TF-IDF cosine, :class:`TfidfRetriever`).
  A generator that does not beat it has not learned the progression.
- oracle: the counterfactual is the real follow-up image (the ceiling of AUROC/F1
  and CLIP-I); it has no interpretation, so its text metrics are null.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

__all__ = ["TfidfRetriever", "retrieval_interpretations"]

_TOKEN_RE = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(str(text).lower())


class TfidfRetriever:
    """Nearest document by TF-IDF cosine (unigrams + bigrams, smooth idf, l2-normalised).

    ``idf(t) = ln((1 + n) / (1 + df(t))) + 1`` and raw term counts, as scikit-learn's
    ``TfidfVectorizer`` defaults; ties go to the earliest document.
    """

    def __init__(self, documents: Sequence[str]):
        if not documents:
            raise ValueError("TfidfRetriever needs at least one document")
        bags = [self._bag(d) for d in documents]
        df = Counter(term for bag in bags for term in bag)
        n = len(bags)
        self.vocabulary = {term: i for i, term in enumerate(sorted(df))}
        self.idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in sorted(df)])
        self.matrix = np.stack([self._vector(bag) for bag in bags])

    @staticmethod
    def _bag(text: str) -> Counter:
        words = _tokens(text)
        return Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:])])

    def _vector(self, bag: Counter) -> np.ndarray:
        vector = np.zeros(len(self.vocabulary))
        for term, count in bag.items():
            index = self.vocabulary.get(term)
            if index is not None:
                vector[index] = count * self.idf[index]
        norm = np.linalg.norm(vector)
        return vector / norm if norm > 0 else vector

    def similarities(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query`` to every document, ``float64 [n]`` in [0, 1]."""
        return self.matrix @ self._vector(self._bag(query))

    def nearest(self, query: str) -> int:
        return int(np.argmax(self.similarities(query)))


def retrieval_interpretations(train_pairs: Sequence, prompts: Sequence[str]) -> list[str]:
    """For each prompt, the interpretation of the training pair with the most similar prompt."""
    usable = [p for p in train_pairs if p.prompt and p.interpretation]
    if not usable:
        raise ValueError("the copy-prior baseline needs training pairs with prompt and interpretation; "
                         "the dataset has none in its training split")
    retriever = TfidfRetriever([p.prompt for p in usable])
    return [usable[retriever.nearest(prompt)].interpretation for prompt in prompts]
