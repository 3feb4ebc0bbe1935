"""Turning a generation result into what the page shows and what the user downloads.

Pure functions on numpy arrays (no gradio import), so they are tested on their numbers:

- :func:`grey_to_rgb`, :func:`resize_grey` -- display copies of greyscale images;
- :func:`colorize_difference` -- counterfactual minus prior on a blue-white-red scale;
- :func:`colorize_spread` -- per-pixel standard deviation over samples on a black-to-yellow scale;
- :func:`overlay_attention` -- one phrase's attention map blended in the phrase's colour;
- :func:`phrase_spans` -- the interpretation cut into (text, phrase label) pieces for highlighting;
- :func:`write_bundle` -- a zip of PNGs + JSON for the download button.

Colour scales are linear interpolations between a few anchor colours: enough for a teaching page
and no plotting library needed at serve time.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PHRASE_COLORS",
    "phrase_color",
    "grey_to_rgb",
    "resize_grey",
    "colorize",
    "colorize_difference",
    "colorize_spread",
    "overlay_attention",
    "phrase_spans",
    "write_bundle",
]

#: distinct, colour-blind-friendly colours (Okabe-Ito) for the phrases of an interpretation
PHRASE_COLORS: tuple[str, ...] = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#F0E442")

# Anchor colours (RGB in [0, 1]) at evenly spaced positions of the scale.
_DIVERGING = np.array([[0.13, 0.40, 0.67], [1.0, 1.0, 1.0], [0.70, 0.09, 0.17]])  # darker / none / brighter
_SEQUENTIAL = np.array([[0.0, 0.0, 0.0], [0.55, 0.0, 0.45], [0.95, 0.35, 0.0], [1.0, 0.95, 0.35]])


def phrase_color(index: int) -> str:
    """Hex colour of the ``index``-th phrase (cycles through :data:`PHRASE_COLORS`)."""
    return PHRASE_COLORS[index % len(PHRASE_COLORS)]


def _hex_to_rgb(color: str) -> np.ndarray:
    color = color.lstrip("#")
    return np.array([int(color[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float32) / 255.0


def _as_grey(image: Any, what: str) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:  # [1, H, W] from a torch batch
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a greyscale image [H, W], got shape {array.shape}")
    return array


def grey_to_rgb(image: Any) -> np.ndarray:
    """``float[H, W]`` in [0, 1] -> ``uint8[H, W, 3]`` (values clipped to [0, 1] first)."""
    grey = np.clip(_as_grey(image, "image"), 0.0, 1.0)
    return np.repeat(np.rint(grey * 255.0).astype(np.uint8)[..., None], 3, axis=2)


def resize_grey(image: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``float[H, W]`` to ``size = (height, width)``; returns float32."""
    from PIL import Image

    grey = _as_grey(image, "image")
    if grey.shape == tuple(size):
        return grey.astype(np.float32, copy=False)
    resized = Image.fromarray(grey.astype(np.float32), mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def colorize(values: Any, anchors: np.ndarray) -> np.ndarray:
    """Map ``float[H, W]`` in [0, 1] to ``uint8[H, W, 3]`` by linear interpolation between ``anchors``.

    ``anchors``: ``float[K, 3]`` RGB in [0, 1] placed at 0, 1/(K-1), ..., 1. NaN maps to 0.
    """
    values = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0))
    positions = np.linspace(0.0, 1.0, len(anchors))
    channels = [np.interp(values, positions, anchors[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def colorize_difference(difference: Any, scale: float | None = None) -> tuple[np.ndarray, float]:
    """Counterfactual minus prior, ``float[H, W]`` (intensity units, about [-1, 1]), as a colour map.

    Blue = darker than the prior (less dense), white = unchanged, red = brighter (denser, e.g. new
    fluid). ``scale``: the absolute difference shown at full colour; by default the 99th percentile
    of ``|difference|`` (so one extreme pixel does not wash out the map), at least 1e-3.
    Returns ``(uint8[H, W, 3], scale)``.
    """
    difference = _as_grey(difference, "difference")
    if scale is None:
        scale = float(np.percentile(np.abs(difference), 99)) if difference.size else 0.0
    scale = max(float(scale), 1e-3)
    return colorize(0.5 + 0.5 * np.clip(difference / scale, -1.0, 1.0), _DIVERGING), scale


def colorize_spread(spread: Any, scale: float | None = None) -> tuple[np.ndarray, float]:
    """Per-pixel standard deviation over samples, ``float[H, W]`` >= 0, as a black-to-yellow map.

    ``scale``: the value shown at full colour; by default the maximum (at least 1e-3).
    Returns ``(uint8[H, W, 3], scale)``.
    """
    spread = _as_grey(spread, "spread")
    if scale is None:
        scale = float(spread.max()) if spread.size else 0.0
    scale = max(float(scale), 1e-3)
    return colorize(spread / scale, _SEQUENTIAL), scale


def overlay_attention(image: Any, attention: Any, color: str, strength: float = 0.7) -> np.ndarray:
    """Blend one phrase's attention map over a greyscale image, in the phrase's colour.

    ``image``: ``float[H, W]`` in [0, 1]; ``attention``: ``float[h, w]`` >= 0 on the image-token
    grid (any size; upsampled bilinearly to ``[H, W]`` and divided by its maximum);
    ``color``: hex "#RRGGBB"; ``strength``: opacity where attention is highest.
    Returns ``uint8[H, W, 3]``: ``(1 - a) * grey + a * color`` with ``a = strength * attention / max``.
    """
    grey = np.clip(_as_grey(image, "image"), 0.0, 1.0)
    weights = resize_grey(np.clip(_as_grey(attention, "attention"), 0.0, None), grey.shape)
    peak = float(weights.max())
    alpha = (strength * weights / peak if peak > 0 else np.zeros_like(weights))[..., None]
    blended = (1.0 - alpha) * grey[..., None] + alpha * _hex_to_rgb(color)[None, None, :]
    return np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def phrase_spans(interpretation: str, phrases: list[str]) -> list[tuple[str, str | None]]:
    """Cut ``interpretation`` into ``(text, label)`` pieces; label ``"1"``, ``"2"``... marks phrase k.

    Phrases are searched in order (case-insensitive), each after the previous one, so repeated
    words land on the right occurrence. A phrase not found in the text (a model may paraphrase)
    is appended after the text as its own labelled piece, so every phrase stays selectable.
    Joining the texts of the pieces that came from the interpretation gives it back unchanged.
    """
    pieces: list[tuple[str, str | None]] = []
    lowered = interpretation.lower()
    cursor = 0
    missing: list[tuple[str, str]] = []
    for index, phrase in enumerate(phrases):
        label = str(index + 1)
        start = lowered.find(phrase.lower(), cursor) if phrase else -1
        if start < 0:
            missing.append((phrase, label))
            continue
        if start > cursor:
            pieces.append((interpretation[cursor:start], None))
        end = start + len(phrase)
        pieces.append((interpretation[start:end], label))
        cursor = end
    if cursor < len(interpretation):
        pieces.append((interpretation[cursor:], None))
    for phrase, label in missing:
        pieces.append((" " + phrase, label))
    return pieces


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_bundle(
    path: str | os.PathLike,
    *,
    prior: np.ndarray,
    pipeline_dir: str | os.PathLike | None,
    pictures: dict[str, np.ndarray],
    summary: dict[str, Any],
) -> Path:
    """Write the download: a zip with everything the page showed.

    - ``prior.png``: the prior as the model saw it (``float[H, W]`` in [0, 1]);
    - ``result/...``: whatever the pipeline's ``GenerationResult.save`` wrote (``pipeline_dir``);
    - ``views/<name>.png`` for each ``pictures`` entry (colour maps and overlays, ``uint8[H, W, 3]``);
    - ``summary.json``: ``summary`` (prompt, interpretation, phrases, settings, timings, scales).
    Written to a temporary name and renamed, so a half-written zip is never offered.
    """
    from progemu.utils.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("prior.png", _png_bytes(prior))
        if pipeline_dir is not None:
            root = Path(pipeline_dir)
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                archive.write(file, f"result/{file.relative_to(root).as_posix()}")
        for name, picture in pictures.items():
            archive.writestr(f"views/{name}.png", _png_bytes(picture))
        archive.writestr("summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=_json_default) + "\n")
    return atomic_write_bytes(path, buffer.getvalue())


def _json_default(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
