"""Training data of the diffusion baselines: ICG-CXR pairs as image tensors, batches, condition dropout.

The pairs are the ones ``progemu train`` reads (``progemu.data.icgcxr.load_pairs``); every image
goes through the project's one image path (``progemu.data.images.model_input``), so a baseline
sees a prior exactly as the tokenizer, ProgEmu and the evaluators do. The demo world's 830
training pairs at 128 px are 109 MB as float32: they are held in memory.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

__all__ = ["PairImages", "load_pair_images", "epoch_batches", "condition_masks"]


@dataclasses.dataclass
class PairImages:
    """``priors`` / ``followups``: ``float32 [N, 1, S, S]`` in [0, 1]; ``prompts``: N strings; ``pair_ids``."""

    priors: torch.Tensor
    followups: torch.Tensor
    prompts: list[str]
    pair_ids: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def load_pair_images(data: str, split: str, image_size: int, progress: bool = False) -> PairImages:
    """Every pair of ``split`` in ``data``; raises ``ValueError`` naming the dataset when the split is empty
    (an unreadable image raises ``ValueError`` naming the file, from ``model_input``)."""
    from tqdm.auto import tqdm

    from progemu.data.icgcxr import load_pairs
    from progemu.data.images import model_input

    pairs = load_pairs(data, split=split)
    if not pairs:
        raise ValueError(f"{data}: split {split!r} has no pairs; check --data and --split")
    priors = np.zeros((len(pairs), 1, image_size, image_size), np.float32)
    followups = np.zeros_like(priors)
    for i, pair in enumerate(tqdm(pairs, desc="load pairs", disable=not progress, mininterval=2.0)):
        priors[i, 0] = model_input(pair.prior_image, image_size)
        followups[i, 0] = model_input(pair.followup_image, image_size)
    return PairImages(torch.from_numpy(priors), torch.from_numpy(followups), [p.prompt or "" for p in pairs],
                      [p.pair_id for p in pairs])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of example indices, a pure function of ``(seed, epoch)`` (so a resumed run
    continues with the same data); the incomplete last batch is dropped."""
    if n < batch_size:
        raise ValueError(f"{n} training pairs are fewer than one batch of {batch_size}; lower --batch-size")
    order = np.random.default_rng([int(seed), int(epoch), 15]).permutation(n)
    usable = (n // batch_size) * batch_size
    return [order[i:i + batch_size].tolist() for i in range(0, usable, batch_size)]


def condition_masks(draws: torch.Tensor, text_dropout: float, image_dropout: float,
                    both_dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructPix2Pix's conditioning dropout from uniform ``draws [B]`` in [0, 1).

    ``[0, t)``: the prompt is dropped; ``[t, t + b)``: both are dropped; ``[t + b, t + b + i)``: the
    prior is dropped (``t``, ``b``, ``i``: text / both / image shares). Returns ``(keep_text, keep_image)``,
    boolean ``[B]`` each.
    """
    t, b, i = text_dropout, both_dropout, image_dropout
    drop_text = draws < t + b
    drop_image = (draws >= t) & (draws < t + b + i)
    return ~drop_text, ~drop_image


def prompts_with_dropout(prompts: Sequence[str], keep_text: torch.Tensor) -> list[str]:
    """The batch's prompts with dropped ones replaced by the empty prompt (the null text)."""
    return [p if bool(k) else "" for p, k in zip(prompts, keep_text)]
