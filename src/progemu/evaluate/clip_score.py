"""CLIP-I: 100 x cosine similarity of CLIP embeddings (image-prompt and image-image).

The paper measures "alignment with the prompt" with BiomedCLIP; progemu reports
both variants: ``CLIP-I`` = counterfactual image vs prompt text, and
``CLIP-I-followup`` = counterfactual image vs the real follow-up image. Values are
means over pairs of ``100 * cos(a, b)``, in [-100, 100].
"""
from __future__ import annotations

import numpy as np

__all__ = ["cosine_rows", "clip_i"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``a`` and ``b`` ``[N, D]`` -> ``float64 [N]`` in [-1, 1]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embedding matrices must both be [N, D], got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def clip_i(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean ``100 * cos`` over rows (``None`` for no rows)."""
    if len(a) == 0:
        return None
    return float(100.0 * cosine_rows(a, b).mean())
