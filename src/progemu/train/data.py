"""Training examples for ProgEmu: curated pairs + cached image codes -> (input_ids, labels).

Every random decision (prompt dropout, prompt / interpretation sentence shuffle, drop-negative, the
epoch's order) is a pure function of ``(seed, epoch, pair index)`` through ``numpy.random.default_rng``;
nothing depends on global RNG state or on which process builds an example. That is what makes ``--resume``
reproduce the uninterrupted loss curve and makes N processes see the same global batch
as one process.

Batches are length-bucketed: the epoch's permutation is cut into chunks of
``bucket_batches`` global batches, each chunk is sorted by length and cut into global batches,
and the batch order is shuffled again; padding inside a batch is right padding (the model is
causal, so pads after a sequence never influence its tokens; they carry label -100).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progemu.model.layout import IGNORE_INDEX, TokenLayout

__all__ = ["DataConfig", "ProgEmuExamples", "epoch_batches", "collate", "load_codes", "shuffle_sentences", "identity_texts",
           "prompt_sentences", "NEGATIVE_OPENINGS"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclasses.dataclass
class DataConfig:
    """How pairs become training sequences."""

    split: str = "train"
    mode: str = "joint"  # joint | image | text
    loss_on: str = "target"  # target (paper) | all (released code)
    visual_loss_weight: float = 1.0  # weight of image-code labels in the optimised loss (see train/objective.py)
    prompt_dropout: float = 0.01  # official null_prompt_prob; probability that prior image + prompt are blanked
    # the official augmentation of the progression prompt (its shuffle_sentence_prob / dropneg_sentence_prob):
    # shuffle the prompt's sentences, drop one "No / Unchanged / Persistent ..." sentence (prompt_sentences)
    prompt_shuffle: float = 0.05
    drop_negative: float = 0.05
    # progemu's own option, not in the official code: shuffle the interpretation's sentences (off by default)
    sentence_shuffle: float = 0.0
    pairs_list: str | None = None  # JSON list of pair JSON paths to train on (replaces split); see load_pairs
    bucket_batches: int = 8  # global batches per length-sorted chunk (1 = no bucketing)
    # identity pairs: with this probability an example becomes prior -> prior with a "no change" prompt
    # and interpretation, which teaches the model that what the prompt does not name stays as it was
    identity_pairs: float = 0.0
    identity_prompt: str = "No interval change."
    identity_interpretation: str = "No interval change: the follow-up radiograph is unchanged from the prior."
    # probability that only the prompt is removed (the prior image stays): trains the prior-only branch that
    # dual guidance (SamplingSettings.cfg_prompt_scale) contrasts with the full condition
    prompt_only_dropout: float = 0.0


def identity_texts(config: DataConfig) -> list[str]:
    """The identity pairs' texts when they are used (the text tokenizer must know them), else ``[]``."""
    return [config.identity_prompt, config.identity_interpretation] if config.identity_pairs > 0 else []


#: sentence openings the official drop-negative step removes (a plain prefix test, as there: "Normal ..." and
#: "Nodular ..." start with "No" too)
NEGATIVE_OPENINGS = ("No", "Unchanged", "Persistent")


def prompt_sentences(text: str, rng: np.random.Generator, shuffle: float, drop_negative: float) -> str:
    """The official augmentation of a progression prompt (``augment_sentences`` of the released dataset code).

    The prompt is split on ``". "``; a one-sentence prompt comes back unchanged. Otherwise the final
    full stop is removed, then with probability ``shuffle`` the sentences are permuted and, independently,
    with probability ``drop_negative`` the first sentence opening with one of :data:`NEGATIVE_OPENINGS`
    is removed, never the last one left. The sentences are re-joined with ``". "`` plus a final ``"."``.
    Both random draws are always made, so the stream does not depend on the text.
    """
    if not text:
        return text
    sentences = text.strip().split(". ")
    if len(sentences) == 1:
        return text
    if sentences[-1].endswith("."):
        sentences[-1] = sentences[-1][:-1]
    else:
        sentences = [s for s in sentences if s]
    do_shuffle, do_drop = rng.random() < shuffle, rng.random() < drop_negative
    if do_shuffle:
        sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    if do_drop and len(sentences) > 1:
        for i, sentence in enumerate(sentences):
            if sentence.startswith(NEGATIVE_OPENINGS):
                del sentences[i]
                break
    return ". ".join(sentences) + "."


def shuffle_sentences(text: str, rng: np.random.Generator) -> str:
    """The interpretation with its sentences in a random order (split after . ! ?)."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    if len(sentences) < 2:
        return text
    order = rng.permutation(len(sentences))
    return " ".join(sentences[i] for i in order)


def load_codes(data_dir: str | Path, pairs: Sequence[Any], image_tokenizer, *, encode_missing: bool = True,
               progress: bool = True) -> dict[str, np.ndarray]:
    """``{image path: int32 [h, w]}`` for the prior and follow-up of every pair.

    Reads ``DATA/codes/<identity>/`` (``progemu tokenize``); images not yet cached are encoded
    into the cache first with :func:`progemu.tokenizer.cache.ensure_codes` (resumable) when
    ``encode_missing``, otherwise a ``KeyError`` names the image and the command to run.
    """
    from progemu.tokenizer.cache import CodeCache, ensure_codes

    data_dir = Path(data_dir)
    paths = sorted({str(p.prior_image) for p in pairs} | {str(p.followup_image) for p in pairs})
    try:
        cache = CodeCache(data_dir, image_tokenizer.identity)
        missing = [path for path in paths if not cache.has(path)]
    except FileNotFoundError:
        cache, missing = None, paths
    if missing:
        if not encode_missing:
            raise KeyError(f"{len(missing)} images have no cached codes (e.g. {missing[0]}); run "
                           f"`progemu tokenize --data {data_dir} --tokenizer TOKENIZER_DIR`")
        cache = ensure_codes(data_dir, image_tokenizer, progress=progress)
    codes = {}
    for path in paths:
        array = cache.get(path)
        if tuple(array.shape) != tuple(image_tokenizer.grid):
            raise ValueError(f"{path}: cached codes have shape {array.shape}, tokenizer grid is {image_tokenizer.grid}")
        codes[path] = array
    return codes


class ProgEmuExamples:
    """Indexable training examples; ``example(i, epoch)`` -> ``(input_ids, labels)`` lists of ints.

    ``pairs``: :class:`progemu.data.icgcxr.Pair` objects; ``codes``: from :func:`load_codes`.
    Prompts and unshuffled interpretations are tokenised once (without special tokens).
    """

    def __init__(self, pairs: Sequence[Any], codes: dict[str, np.ndarray], text_tokenizer, layout: TokenLayout,
                 config: DataConfig, seed: int = 0, max_length: int | None = None):
        if not pairs:
            raise ValueError("ProgEmuExamples: no pairs to train on")
        self.pairs = list(pairs)
        self.codes = codes
        self.text_tokenizer = text_tokenizer
        self.layout = layout
        self.config = config
        self.seed = int(seed)
        self.prompt_ids = [self._encode(p.prompt) for p in self.pairs]
        self.interpretation_ids = [self._encode(p.interpretation) for p in self.pairs]
        self.identity_ids = (self._encode(config.identity_prompt), self._encode(config.identity_interpretation))
        # lengths of the conditional sequence (the bucketing key; shuffling changes them slightly)
        self.lengths = np.array([len(self._build(i, False, self.interpretation_ids[i])[0]) for i in range(len(self.pairs))])
        # the positions a sequence reaches (aligned layouts jump to the follow-up's fixed position)
        extents = [int(layout.position_ids(self._build(i, False, self.interpretation_ids[i])[0])[-1]) + 1
                   for i in range(len(self.pairs))] if layout.aligned else self.lengths
        if max_length is not None and int(np.max(extents)) > max_length:
            worst = int(np.argmax(extents))
            raise ValueError(f"pair {self.pairs[worst].pair_id}: sequence reaching position {int(extents[worst])} exceeds the "
                             f"model's max_position_embeddings={max_length}; use a larger preset or shorter texts")

    def __len__(self) -> int:
        return len(self.pairs)

    def _encode(self, text: str) -> list[int]:
        return list(self.text_tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _build(self, index: int, null: bool, interpretation_ids: list[int], prompt_ids: list[int] | None = None):
        pair = self.pairs[index]
        prompt_ids = self.prompt_ids[index] if prompt_ids is None else prompt_ids
        return self.layout.build(self.codes[str(pair.prior_image)], prompt_ids, self.codes[str(pair.followup_image)],
                                 interpretation_ids, mode=self.config.mode, loss_on=self.config.loss_on, null_condition=null)

    def example(self, index: int, epoch: int) -> tuple[list[int], list[int]]:
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 1])
        null = bool(rng.random() < self.config.prompt_dropout)
        interpretation = self.interpretation_ids[index]
        if self.config.mode != "image" and rng.random() < self.config.sentence_shuffle:
            interpretation = self._encode(shuffle_sentences(self.pairs[index].interpretation, rng))
        prompt_only = not null and self._drop_prompt_only(index, epoch)
        if self.config.identity_pairs > 0 and rng.random() < self.config.identity_pairs:
            prior = self.codes[str(self.pairs[index].prior_image)]
            prompt, interpretation = self.identity_ids
            return self.layout.build(prior, [] if prompt_only else prompt, prior, interpretation, mode=self.config.mode,
                                     loss_on=self.config.loss_on, null_condition=null)
        if prompt_only:
            pair = self.pairs[index]
            return self.layout.build(self.codes[str(pair.prior_image)], [], self.codes[str(pair.followup_image)],
                                     interpretation, mode=self.config.mode, loss_on=self.config.loss_on)
        return self._build(index, null, interpretation, self._prompt(index, epoch))

    def _prompt(self, index: int, epoch: int) -> list[int]:
        """The prompt's ids after the official sentence shuffle / drop-negative (own random stream)."""
        if self.config.prompt_shuffle <= 0 and self.config.drop_negative <= 0:
            return self.prompt_ids[index]
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 3])
        text = self.pairs[index].prompt
        augmented = prompt_sentences(text, rng, self.config.prompt_shuffle, self.config.drop_negative)
        return self.prompt_ids[index] if augmented == text else self._encode(augmented)

    def _drop_prompt_only(self, index: int, epoch: int) -> bool:
        """Whether this example loses its prompt alone; its own random stream leaves every other draw unchanged."""
        if self.config.prompt_only_dropout <= 0:
            return False
        return bool(np.random.default_rng([self.seed, int(epoch), int(index), 2]).random() < self.config.prompt_only_dropout)


def epoch_batches(lengths: Sequence[int], global_batch: int, seed: int, epoch: int, bucket_batches: int = 8) -> list[list[int]]:
    """The epoch's global batches (lists of example indices); the incomplete last batch is dropped.

    Deterministic in ``(seed, epoch)``. Raises ``ValueError`` when there are fewer examples than
    one global batch.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if n < global_batch:
        raise ValueError(f"{n} training pairs are fewer than one global batch of {global_batch}; lower --batch-size")
    rng = np.random.default_rng([int(seed), int(epoch), 0])
    order = rng.permutation(n)
    usable = (n // global_batch) * global_batch
    order = order[:usable]
    chunk = max(1, int(bucket_batches)) * global_batch
    batches: list[list[int]] = []
    for start in range(0, usable, chunk):
        part = order[start:start + chunk]
        if bucket_batches > 1:
            part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + global_batch].tolist() for i in range(0, len(part), global_batch)]
    if bucket_batches > 1:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int, layout: TokenLayout | None = None):
    """Right-pad ``(input_ids, labels)`` pairs -> dict of ``long [B, T]`` tensors.

    ``input_ids`` padded with ``pad_id``, ``labels`` with -100, ``attention_mask`` 1 on real tokens.
    With an aligned ``layout`` a ``position_ids`` tensor is added (pads continue counting; they
    are masked and unlabelled, so their positions never matter).
    """
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        mask[row, : len(ids)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    if layout is not None and layout.aligned:
        positions = torch.arange(width, dtype=torch.long).repeat(len(examples), 1)
        for row, (ids, _) in enumerate(examples):
            aligned = torch.from_numpy(layout.position_ids(ids))
            positions[row, : len(ids)] = aligned
            positions[row, len(ids):] = aligned[-1] + 1 + torch.arange(width - len(ids))
        batch["position_ids"] = positions
    return batch
