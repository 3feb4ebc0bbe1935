"""Reading images for evaluation: float32 [H, W] in [0, 1], stacked to [B, 1, S, S]."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["load_image", "load_stack", "resize"]


def load_image(path: str | Path) -> np.ndarray:
    """``float32 [H, W]`` in [0, 1] from PNG / JPG (or DICOM through ``progemu.data.images`` when present)."""
    path = Path(path)
    try:  # curation owns the reader for every format; use it when it exists
        from progemu.data.images import read_image
    except ImportError:
        read_image = None
    if read_image is not None:
        return np.asarray(read_image(path), dtype=np.float32)
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read image ({error}); re-create the file") from None
    return array


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square bilinear (antialiased) resize of ``float [H, W]`` to ``float32 [size, size]``."""
    image = np.asarray(image, np.float32)
    if image.shape == (size, size):
        return image
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def load_stack(images: Sequence, size: int) -> np.ndarray:
    """``float32 [B, 1, size, size]`` from paths or arrays."""
    arrays = [resize(load_image(item) if isinstance(item, (str, Path)) else item, size) for item in images]
    if not arrays:
        return np.zeros((0, 1, size, size), np.float32)
    return np.clip(np.stack(arrays)[:, None], 0.0, 1.0).astype(np.float32)
