"""Reading images for evaluation: float32 [H, W] in [0, 1], stacked to [B, 1, S, S].

Reading and resizing are the project's one image path (:mod:`progemu.data.images`), so an
evaluator sees a prior exactly as the tokenizer and the generator do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["load_image", "load_stack", "resize"]


def load_image(path: str | Path) -> np.ndarray:
    """``float32 [H, W]`` in [0, 1] from PNG / JPG / DICOM (:func:`progemu.data.images.read_image`)."""
    from progemu.data.images import read_image

    return np.asarray(read_image(Path(path)), dtype=np.float32)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``float32 [size, size]`` copy of ``float [H, W]`` (:func:`progemu.data.images.model_input`)."""
    from progemu.data.images import model_input

    return model_input(np.asarray(image, np.float32), size)


def load_stack(images: Sequence, size: int) -> np.ndarray:
    """``float32 [B, 1, size, size]`` from paths or arrays."""
    arrays = [resize(load_image(item) if isinstance(item, (str, Path)) else item, size) for item in images]
    if not arrays:
        return np.zeros((0, 1, size, size), np.float32)
    return np.clip(np.stack(arrays)[:, None], 0.0, 1.0).astype(np.float32)
