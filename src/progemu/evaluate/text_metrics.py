"""Text metrics of the interpretation: BLEU-3, METEOR and ROUGE-L with ``pycocoevalcap``.

Tokenisation (documented because every number depends on it): lower-case, the
punctuation marks removed by pycocoevalcap's ``PTBTokenizer`` are dropped, and
the text is split on whitespace; tokens are re-joined with single spaces, which
is what pycocoevalcap's scorers split on. (``PTBTokenizer`` itself starts a
CoreNLP JVM per call; this is the same normalisation without it.)

- BLEU-3: corpus-level (pycocoevalcap ``Bleu(3)``, "closest" reference length), in [0, 1].
- METEOR: METEOR 1.5 through pycocoevalcap's bundled Java jar (``-norm``), in [0, 1].
  The JVM takes ~15 s to start, so :class:`TextScorer` starts it once and reuses it.
- ROUGE-L: mean over pairs of the sentence-level LCS F-measure with beta = 1.2
  (pycocoevalcap ``Rouge``), in [0, 1].
"""
from __future__ import annotations

import re
import shutil
from typing import Sequence

__all__ = ["normalize_text", "TextScorer", "text_scores"]

# The marks pycocoevalcap's PTBTokenizer removes (its PUNCTUATIONS list), plus the
# characters that would break METEOR's line protocol.
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_SPLIT_RE = re.compile(r"([.,!?;:()\[\]{}\"`]|--|\.\.\.|\s'|'\s)")


def normalize_text(text: str) -> str:
    """Lower-cased, punctuation-free, single-space-joined tokens of ``text`` ("" for empty)."""
    text = str(text or "").replace("|||", " ").lower()
    spaced = _SPLIT_RE.sub(r" \1 ", text)
    tokens = [t for t in spaced.split() if t not in _PUNCTUATION and t.strip("()[]{}\"") != ""]
    return " ".join(tokens)


class TextScorer:
    """Scores candidate interpretations against references; holds one METEOR JVM.

    Use as a context manager (or call :meth:`close`) so the JVM ends with the run.
    ``meteor=False`` skips METEOR (its value is then ``None``).
    """

    def __init__(self, meteor: bool = True):
        self._meteor = None
        if meteor:
            if shutil.which("java") is None:
                raise RuntimeError("METEOR needs Java: install it (`apt-get install -y default-jre-headless`) "
                                   "or pass meteor=False / --no-meteor")
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()

    def __enter__(self) -> "TextScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            meteor, self._meteor = self._meteor, None
            with meteor.lock:
                meteor.meteor_p.stdin.close()
                meteor.meteor_p.kill()
                meteor.meteor_p.wait()
            # pycocoevalcap's __del__ would close the (already closed) pipe again
            meteor.__class__ = type("_ClosedMeteor", (), {})

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
        """``{"BLEU-3", "METEOR", "ROUGE-L"}`` of ``candidates[i]`` vs ``references[i]``.

        Pairs whose reference is empty are skipped (nothing to compare with); an empty
        candidate scores 0. Returns ``None`` values when no pair is left.
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        gts: dict[int, list[str]] = {}
        res: dict[int, list[str]] = {}
        for index, (candidate, reference) in enumerate(zip(candidates, references)):
            reference = normalize_text(reference)
            if not reference:
                continue
            gts[index] = [reference]
            # pycocoevalcap divides by the candidate length; an empty candidate is one
            # token that matches nothing, which scores 0 everywhere.
            res[index] = [normalize_text(candidate) or "<empty>"]
        if not gts:
            return {"BLEU-3": None, "METEOR": None, "ROUGE-L": None}
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge

        bleu, _ = Bleu(3).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        meteor = None
        if self._meteor is not None:
            meteor, _ = self._meteor.compute_score(gts, res)
        return {"BLEU-3": float(bleu[2]), "METEOR": None if meteor is None else float(meteor), "ROUGE-L": float(rouge)}


def text_scores(candidates: Sequence[str], references: Sequence[str], meteor: bool = True) -> dict[str, float | None]:
    """One-shot convenience wrapper around :class:`TextScorer` (starts and stops a JVM)."""
    with TextScorer(meteor=meteor) as scorer:
        return scorer.score(candidates, references)
