"""Inputs of the generation pipeline: the prior radiograph (path, PIL, array) and the prompt, checked.

Images follow the project convention: ``float32 [H, W]`` in [0, 1] (0 = black).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["load_prior", "check_prompt", "resize_image"]


def load_prior(prior: Any) -> np.ndarray:
    """A prior radiograph as ``float32 [H, W]`` in [0, 1].

    Accepts a path (PNG / JPG / DICOM, read by :func:`progemu.data.images.read_image`), a PIL
    image, or an array / tensor ``[H, W]`` (also ``[1, H, W]`` / ``[H, W, 1]``): uint8 is divided by
    255, uint16 by 65535, floats must already lie in [0, 1].
    """
    if isinstance(prior, (str, os.PathLike)):
        from progemu.data.images import read_image

        return read_image(prior)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(prior, Image.Image):
        if prior.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale (Pillow opens 16-bit PNGs as I;16 or I): the bit depth's maximum, as read_image does
            return (np.asarray(prior, dtype=np.float32) / 65535.0).clip(0, 1)
        if prior.mode == "F":
            return _check_float(np.asarray(prior, dtype=np.float32), "PIL image")
        return np.asarray(prior.convert("L"), dtype=np.float32) / 255.0
    if hasattr(prior, "detach"):
        prior = prior.detach().cpu().numpy()
    if not isinstance(prior, np.ndarray):
        raise ValueError(f"prior must be an image path, a PIL image or an array [H, W]; got {type(prior).__name__}")
    array = np.squeeze(prior) if prior.ndim == 3 and 1 in (prior.shape[0], prior.shape[-1]) else prior
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"prior array must be greyscale [H, W]; got shape {tuple(prior.shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"prior array must be uint8, uint16 or float in [0, 1]; got dtype {array.dtype}")
    return _check_float(array.astype(np.float32), "prior array")


def _check_float(array: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    if array.size and (array.min() < -1e-3 or array.max() > 1 + 1e-3):
        raise ValueError(f"{what} must be in [0, 1] (0 = black); got range [{array.min():.3g}, {array.max():.3g}]. "
                         "Divide 8-bit data by 255")
    return np.clip(array, 0.0, 1.0)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float [H, W]`` -> ``float32 [H', W']`` for ``size = (H', W')`` by the project's one resize."""
    from progemu.data.images import resize

    return resize(image, size)


def check_prompt(prompt: Any, where: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"{where} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where} is empty; describe the hypothesised progression, e.g. "
                         "'New small left pleural effusion.'")
    return prompt.strip()


