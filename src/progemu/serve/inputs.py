"""Reading and checking a prior radiograph uploaded to the web page.

The page accepts any file (DICOM files from a PACS often have no extension), so everything is
checked here, server-side, before the model sees it:

1. size on disk (``ServeLimits.max_upload_mb``), before anything is decoded;
2. dimensions from the header only (PIL's lazy open, pydicom's ``stop_before_pixels``), so a
   decompression bomb is refused before its pixels are decoded;
3. decoding through :func:`progemu.data.images.read_image` (the same pixels every stage sees);
4. a plausibility check that catches obvious mistakes -- a colour photograph, a blank image, a
   CT/MR/ultrasound DICOM, a panorama-shaped picture. It is a guard against wrong files, not a
   classifier: a greyscale photograph of a cat passes.

Every refusal raises :class:`PriorError` whose message names the file by its *original base name*
only (never the server's temp path) and says what to do. Nothing here logs file names or pixels.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

__all__ = ["ServeLimits", "PriorError", "ImageTooLarge", "load_prior", "probe_dimensions"]

# DICOM modalities that are projection radiographs (CR/DX/DR), or that carry no modality-specific
# meaning (OT other, SC secondary capture, empty). Anything else (CT, MR, US, NM, PT, MG, XA...)
# is refused: the model was trained on chest radiographs only.
_RADIOGRAPH_MODALITIES = {"", "CR", "DX", "DR", "RG", "OT", "SC"}


@dataclasses.dataclass(frozen=True)
class ServeLimits:
    """Limits that keep one user's request from exhausting the server.

    ``max_upload_mb``: file size on disk (MiB); also given to Gradio's own upload limit.
    ``max_side`` / ``min_side``: image width and height in pixels.
    ``max_aspect``: longest / shortest side; chest radiographs are close to square (about 0.8-1.25).
    ``max_samples``: counterfactuals per request (each costs one full image generation).
    ``queue_size``: requests waiting in the queue before new ones are refused.
    ``max_prompt_chars``: length of the hypothesis text.
    """

    max_upload_mb: float = 32.0
    max_side: int = 4096
    min_side: int = 64
    max_aspect: float = 2.5
    max_samples: int = 4
    queue_size: int = 16
    max_prompt_chars: int = 300

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class PriorError(ValueError):
    """A prior the page cannot use; ``str(error)`` is a message meant for the user."""


class ImageTooLarge(ValueError):
    """Raised by :func:`probe_dimensions` when PIL refuses to even open a file as a decompression bomb."""


def _display_name(path: Path, name: str | None) -> str:
    return name if name else path.name


def probe_dimensions(path: str | os.PathLike) -> tuple[int, int, dict]:
    """Width and height of an image from its header only (no pixel decoding).

    Returns ``(width, height, info)``; ``info`` has ``format`` ("dicom" or PIL's format name),
    ``mode`` (PIL mode or DICOM photometric interpretation), ``modality`` (DICOM only).
    Raises ``ValueError`` if the file is neither a raster image PIL can open nor a DICOM file.
    """
    from progemu.data.images import is_dicom

    path = Path(path)
    if is_dicom(path):
        import pydicom

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types for a damaged header
            raise ValueError(f"unreadable DICOM header ({type(error).__name__})") from None
        if "Rows" not in header or "Columns" not in header:
            raise ValueError("DICOM file has no image (no Rows/Columns); is it a report or a structured document?")
        info = {
            "format": "dicom",
            "mode": str(header.get("PhotometricInterpretation", "")).upper(),
            "modality": str(header.get("Modality", "")).upper().strip(),
        }
        return int(header.Columns), int(header.Rows), info
    from PIL import Image, UnidentifiedImageError

    try:
        # Image.open reads the header only; pixels are decoded later by read_image.
        with Image.open(path) as opened:
            return int(opened.width), int(opened.height), {"format": opened.format or "", "mode": opened.mode}
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} million pixels") from None
    except UnidentifiedImageError:
        raise ValueError("not a PNG, JPG or DICOM image") from None
    except OSError as error:
        raise ValueError(f"unreadable image ({error})") from None


def _colourfulness(path: Path) -> float:
    """Mean absolute difference between colour channels, in [0, 1] (0 for any greyscale image).

    A radiograph saved as RGB has R == G == B; a photograph or a coloured drawing does not.
    Computed on a thumbnail (at most 256 px) because only the average matters.
    """
    from PIL import Image

    with Image.open(path) as opened:
        if opened.mode in {"L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"}:
            return 0.0
        rgb = opened.convert("RGB")
        rgb.thumbnail((256, 256))
        array = np.asarray(rgb, dtype=np.float32) / 255.0
    return float((np.abs(array[..., 0] - array[..., 1]) + np.abs(array[..., 1] - array[..., 2])).mean() / 2.0)


def load_prior(path: str | os.PathLike, limits: ServeLimits = ServeLimits(), *, name: str | None = None) -> np.ndarray:
    """Read and check one uploaded prior.

    ``path``: the file on the server; ``name``: the name to show the user (defaults to the base
    name of ``path``). Returns ``numpy.float32 [H, W]`` in ``[0, 1]`` (0 = black).
    Raises :class:`PriorError` with a message for the user if the file is too big, not an image,
    outside the dimension limits or not plausibly a radiograph.
    """
    from progemu.data.images import read_image

    path = Path(path)
    shown = _display_name(path, name)
    what = "Upload a chest radiograph as PNG, JPG or DICOM."
    if not path.is_file():
        raise PriorError(f"'{shown}' could not be found on the server (the upload may have expired); upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise PriorError(f"'{shown}' is empty (0 bytes). {what}")
    if size > limits.max_upload_bytes:
        raise PriorError(
            f"'{shown}' is {size / 1024 / 1024:.1f} MB; the limit is {limits.max_upload_mb:g} MB. "
            "Export a smaller PNG or JPG (for example 1024 px wide)."
        )
    try:
        width, height, info = probe_dimensions(path)
    except ImageTooLarge as error:
        raise PriorError(
            f"'{shown}' is too large to open safely ({error}); the limit is {limits.max_side} px per side. "
            "Downscale the image."
        ) from None
    except ValueError as error:
        raise PriorError(f"'{shown}' is not a readable image: {error}. {what}") from None
    if max(width, height) > limits.max_side:
        raise PriorError(
            f"'{shown}' is {width} x {height} px; the limit is {limits.max_side} px per side. "
            "Downscale the image (the model works at a few hundred pixels anyway)."
        )
    if min(width, height) < limits.min_side:
        raise PriorError(
            f"'{shown}' is only {width} x {height} px; at least {limits.min_side} px per side is needed "
            "to see anything. Upload the full-resolution radiograph."
        )
    if max(width, height) / min(width, height) > limits.max_aspect:
        raise PriorError(
            f"'{shown}' is {width} x {height} px, which is not the shape of a chest radiograph "
            f"(longest / shortest side > {limits.max_aspect:g}). {what}"
        )
    modality = info.get("modality", "")
    if info["format"] == "dicom" and modality not in _RADIOGRAPH_MODALITIES:
        raise PriorError(
            f"'{shown}' is a DICOM file of modality {modality}, not a projection radiograph (CR/DX). "
            "Upload a frontal chest radiograph."
        )
    if info["format"] != "dicom" and _colourfulness(path) > 0.04:
        raise PriorError(
            f"'{shown}' is a colour picture, not a radiograph (radiographs are greyscale). {what}"
        )
    try:
        image = read_image(path)
    except (ValueError, OSError) as error:
        # read_image names the server-side temp path; show the user's file name and the reason only.
        reason = str(error).split(": ", 1)[-1]
        raise PriorError(f"'{shown}' could not be decoded: {reason}. {what}") from None
    if float(image.std()) < 0.02:
        raise PriorError(f"'{shown}' is blank or nearly uniform (no anatomy visible). {what}")
    return image
