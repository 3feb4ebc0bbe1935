"""Does the counterfactual keep the patient? Prior-preservation measures and the reconstructed-prior row.

- :func:`ncc`: zero-mean normalised cross-correlation of two images (1 = same picture up to
  brightness and contrast, 0 = unrelated). Registered real follow-ups of the same patient
  reach about 0.6 on real radiographs; a different chest much less.
- :func:`mean_prior_ncc`: the mean NCC between each prior and its counterfactual, at one size.
- :func:`reconstructed_priors`: ``decode(encode(prior))`` with the model's own image tokenizer,
  the best a token model can do at keeping the prior (the ``reconstructed-prior`` reference row).

Written here rather than taken from a library because NCC is two lines of numpy and the row
needs our own tokenizer; images go through the project's one image path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["ncc", "mean_prior_ncc", "reconstructed_priors"]


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two ``float [H, W]`` images of equal shape, in [-1, 1].

    Two constant images give 1 when equal and 0 otherwise (no variance to correlate).
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"ncc: images have {a.size} and {b.size} pixels; resize them to one shape first")
    same = np.array_equal(a, b)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0:
        return 1.0 if same else 0.0
    return float((a * b).sum() / denominator)


def _as_image(item, size: int) -> np.ndarray:
    from progemu.data.images import model_input

    return model_input(str(item) if isinstance(item, Path) else item, size)


def mean_prior_ncc(priors: Sequence, images: Sequence, size: int = 128) -> float:
    """Mean :func:`ncc` of ``(prior, image)`` pairs (paths or ``float [H, W]``), both brought to ``size`` px."""
    if len(priors) != len(images) or not priors:
        raise ValueError(f"mean_prior_ncc: {len(priors)} priors for {len(images)} images")
    return float(np.mean([ncc(_as_image(p, size), _as_image(i, size)) for p, i in zip(priors, images)]))


def reconstructed_priors(tokenizer_dir: str | Path, priors: Sequence, batch_size: int = 16) -> list[np.ndarray]:
    """``decode(encode(prior))`` of each prior (path or ``float [H, W]``), back at the prior's own shape."""
    import torch

    from progemu.data.images import read_image, resize
    from progemu.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.from_pretrained(tokenizer_dir)
    arrays = [read_image(p) if isinstance(p, (str, Path)) else np.asarray(p, np.float32) for p in priors]
    out: list[np.ndarray] = []
    for start in range(0, len(arrays), batch_size):
        chunk = arrays[start:start + batch_size]
        batch = torch.from_numpy(np.stack([_as_image(a, tokenizer.image_size) for a in chunk]))[:, None]
        decoded = tokenizer.decode(tokenizer.encode(batch)).numpy()[:, 0]
        out += [resize(image, original.shape) for image, original in zip(decoded, chunk)]
    return out
