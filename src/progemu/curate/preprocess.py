"""Pure image transforms of curation: black-border removal, square resize, quality checks.

All functions take and return ``numpy.float32 [H, W]`` in ``[0, 1]`` (0 = black).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from progemu.data.images import SQUARE_POLICIES as RESIZE_MODES  # one policy list for every stage

__all__ = ["QualityConfig", "remove_black_border", "resize_square", "quality_problem", "structure_level", "prepare_image"]


@dataclasses.dataclass
class QualityConfig:
    """Limits under which an image is rejected as poor quality (reason recorded)."""

    min_source_px: int = 64  # shorter side of the file, before any crop (real CXRs are >= 1,000 px)
    min_std: float = 0.03  # contrast: standard deviation of the intensities
    max_extreme_fraction: float = 0.5  # fraction of pixels at pure black or pure white
    border_threshold: float = 10 / 255  # a row/column at the edge whose every pixel is darker is border
    max_border_fraction: float = 0.5  # more than half the width or height is black border: unusable
    min_structure: float = 0.03  # std left after removing the best-fitting plane (64 px copy): no anatomy


def remove_black_border(image: np.ndarray, threshold: float = 10 / 255) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop the contiguous all-dark rows/columns at the four edges (scanner letterboxing).

    A row or column is border when its *maximum* is below ``threshold``, so dark lung fields
    inside the body are never cut. Returns the cropped image and ``(top, bottom, left, right)``
    counts of removed rows/columns; an image that is all border is returned unchanged.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    rows = np.flatnonzero(image.max(axis=1) >= threshold)
    cols = np.flatnonzero(image.max(axis=0) >= threshold)
    if rows.size == 0 or cols.size == 0:
        return image, (0, 0, 0, 0)
    top, bottom = int(rows[0]), int(image.shape[0] - 1 - rows[-1])
    left, right = int(cols[0]), int(image.shape[1] - 1 - cols[-1])
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], (top, bottom, left, right)


def resize_square(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Square ``size x size`` copy by the project's one image path (:func:`progemu.data.images.model_input`).

    ``stretch`` resizes both axes (the official ICG-CXR scripts resize straight to 512x512);
    ``crop`` keeps the aspect ratio and cuts the longer axis centrally; ``pad`` keeps the aspect
    ratio and pads the shorter axis with black.
    """
    from progemu.data.images import model_input

    return model_input(image, size, mode)


def quality_problem(image: np.ndarray, config: QualityConfig, border: tuple[int, int, int, int] | None = None,
                    source_shape: tuple[int, int] | None = None) -> str | None:
    """A short reason why the image is unusable, or None when it passes."""
    if source_shape is not None and min(source_shape) < config.min_source_px:
        return f"image too small ({source_shape[1]}x{source_shape[0]} px < {config.min_source_px})"
    if border is not None and source_shape is not None:
        kept_h = source_shape[0] - border[0] - border[1]
        kept_w = source_shape[1] - border[2] - border[3]
        if kept_h < (1 - config.max_border_fraction) * source_shape[0] or kept_w < (1 - config.max_border_fraction) * source_shape[1]:
            return f"mostly black border (content {kept_w}x{kept_h} of {source_shape[1]}x{source_shape[0]} px)"
    std = float(image.std())
    if std < config.min_std:
        return f"low contrast (std {std:.3f} < {config.min_std})"
    extreme = float(np.mean((image <= 1 / 255) | (image >= 254 / 255)))
    if extreme > config.max_extreme_fraction:
        return f"saturated ({extreme:.0%} of pixels pure black or white)"
    structure = structure_level(image)
    if structure < config.min_structure:
        return f"no anatomy (only a flat or gradient image: structure {structure:.3f} < {config.min_structure})"
    return None


def structure_level(image: np.ndarray) -> float:
    """Standard deviation left after fitting a plane ``a + b*x + c*y`` to a 64 px copy.

    A radiograph has large-scale structure (lungs, mediastinum, diaphragm); a blank plate, a
    test ramp or pure noise leaves almost nothing once the plane and the fine noise (removed by
    the box downsampling) are gone.
    """
    from PIL import Image

    small = np.asarray(Image.fromarray(np.ascontiguousarray(image, np.float32), mode="F").resize((64, 64), Image.BOX),
                       np.float64)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    design = np.stack([np.ones(64 * 64), x.ravel(), y.ravel()], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, small.ravel(), rcond=None)
    return float((small.ravel() - design @ coefficients).std())


def prepare_image(image: np.ndarray, size: int, quality: QualityConfig, mode: str = "stretch") -> tuple[np.ndarray | None, str | None]:
    """Border removal + quality check + square resize: ``(image [size, size], None)`` or ``(None, reason)``."""
    cropped, border = remove_black_border(image, quality.border_threshold)
    problem = quality_problem(cropped, quality, border, image.shape)
    if problem is not None:
        return None, problem
    return resize_square(cropped, size, mode), None
