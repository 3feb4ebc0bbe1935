"""Read a chest radiograph (PNG, JPG or DICOM) as one greyscale float image.

:func:`read_image` is the single entry point every stage uses, so that all of them
see the same pixels:

- PNG / JPG (8 or 16 bit, greyscale, RGB(A), palette): divided by the bit depth's
  maximum (255 or 65535), RGB converted to grey with ITU-R 601 luma weights (PIL "L").
- DICOM (8/12/16 bit, JPEG-compressed via pylibjpeg): Modality LUT (rescale slope /
  intercept), then the VOI LUT or window centre/width when the file has one (pydicom's
  ``apply_voi_lut``), then min-max normalised to [0, 1]; MONOCHROME1 (white = low values)
  is inverted so that 0 is always black. Multi-frame files use the first frame.

Every failure (truncated, not an image, unsupported DICOM) raises ``ValueError``
naming the file, so a curation run can record the reason and move on.

The same module owns the one way an image becomes a model input: :func:`make_square` (one
policy, ``stretch`` by default as the official ICG-CXR scripts: both axes resized, so a
counterfactual can be stretched back onto the prior's own shape) and :func:`resize` (PIL's
antialiased bicubic filter on 32-bit floats, clipped to [0, 1]). :func:`model_input` chains
reading, squaring and resizing; curation, tokenizer training, the code cache, generation,
evaluation and the web page all call it, so one file gives one model input everywhere.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["read_image", "is_dicom", "make_square", "resize", "model_input", "SQUARE_POLICIES", "DEFAULT_SQUARE"]

#: how a non-square radiograph becomes square (see :func:`make_square`)
SQUARE_POLICIES = ("stretch", "crop", "pad")
DEFAULT_SQUARE = "stretch"

_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


def is_dicom(path: str | os.PathLike) -> bool:
    """True if the file carries the DICOM magic ``DICM`` at byte 128, or a DICOM suffix."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                return True
    except OSError:
        return False
    return path.suffix.lower() in _DICOM_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one radiograph.

    Returns ``numpy.float32 [H, W]`` in ``[0, 1]`` (0 = black, i.e. air is dark).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    for anything unreadable (truncated, not an image, empty, unsupported encoding).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file; expected a PNG, JPG or DICOM image")
    image = _read_dicom(path) if is_dicom(path) else _read_raster(path)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"{path}: image has shape {image.shape}; expected a 2-D greyscale radiograph")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{path}: image contains NaN or infinite values; re-export the file")
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def make_square(image: np.ndarray, policy: str = DEFAULT_SQUARE) -> np.ndarray:
    """``float32 [H, W]`` -> a square ``[S, S]`` view of it (no resampling except for ``stretch``).

    ``stretch``: returned unchanged (the later :func:`resize` to a square stretches the shorter
    axis, which :func:`resize` back to ``[H, W]`` undoes); ``crop``: the central ``min(H, W)``
    square; ``pad``: the image centred on a black ``max(H, W)`` square.
    """
    if policy not in SQUARE_POLICIES:
        raise ValueError(f"square policy {policy!r}; choose one of {SQUARE_POLICIES}")
    height, width = image.shape
    if policy == "stretch" or height == width:
        return image
    if policy == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return image[top:top + side, left:left + side]
    side = max(height, width)
    canvas = np.zeros((side, side), np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top:top + height, left:left + width] = image
    return canvas


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """``float [H, W]`` -> ``float32 [h, w]`` in [0, 1] (``size``: an int for a square or ``(h, w)``).

    PIL's bicubic filter in 32-bit float mode, antialiased when shrinking; unchanged when the
    size already matches.
    """
    from PIL import Image

    height, width = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    image = np.asarray(image, dtype=np.float32)
    if image.shape == (height, width):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image), mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def model_input(image: np.ndarray | str | os.PathLike, size: int, square: str = DEFAULT_SQUARE) -> np.ndarray:
    """A radiograph (path or ``float [H, W]`` in [0, 1]) as the ``float32 [size, size]`` a model sees."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    return resize(make_square(np.asarray(image, dtype=np.float32), square), size)


def _read_raster(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            # load() is where PIL notices truncation; without it the error would surface
            # later, far from the file name.
            opened.load()
            return _pil_to_float(opened)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a PNG/JPG/DICOM image (unrecognised format); check the file") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: unreadable or truncated image ({error}); re-download or re-export it") from None


def _pil_to_float(image) -> np.ndarray:
    mode = image.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N"}:
        return np.asarray(image, dtype=np.float64) / 65535.0
    if mode == "I":
        # PIL opens 16-bit greyscale PNGs as 32-bit "I"; values are still 0..65535.
        array = np.asarray(image, dtype=np.float64)
        maximum = 65535.0 if array.max(initial=0) <= 65535 else float(array.max())
        return array / maximum
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return _min_max(array)
    if mode != "L":
        image = image.convert("L")  # RGB(A), palette, 1-bit, LA -> luma
    return np.asarray(image, dtype=np.float64) / 255.0


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable DICOM file ({error}); re-download or re-export it") from None
    if "PixelData" not in dataset:
        raise ValueError(f"{path}: DICOM file has no pixel data (not an image object)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = dataset.pixel_array
    except Exception as error:  # decoders raise many types (RuntimeError, NotImplementedError, ...)
        raise ValueError(
            f"{path}: cannot decode DICOM pixel data ({type(error).__name__}: {error}); "
            "for compressed transfer syntaxes install pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg"
        ) from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(dataset.get("SamplesPerPixel", 1))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples > 1 or pixels.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        rgb = pixels.astype(np.float64)
        weights = np.array([0.299, 0.587, 0.114])
        return _min_max(rgb[..., :3] @ weights)
    array = apply_modality_lut(pixels, dataset)
    if "VOILUTSequence" in dataset or "WindowCenter" in dataset:
        # The VOI LUT / window is the radiologist's intended display range: values outside
        # it are clipped, which is what makes bone and lung readable on a 12/16-bit image.
        array = apply_voi_lut(np.asarray(array), dataset, prefer_lut=True)
    array = _min_max(np.asarray(array, dtype=np.float64))
    if photometric == "MONOCHROME1":
        array = 1.0 - array
    return array


def _min_max(array: np.ndarray) -> np.ndarray:
    low, high = float(np.min(array)), float(np.max(array))
    if high <= low:
        return np.zeros_like(array, dtype=np.float64)
    return (array - low) / (high - low)
