"""Figures in the style of the paper's Fig. 3 and Fig. 4, drawn with PIL (no plotting dependency).

- :func:`comparison_figure` (Fig. 3): per pair, prior | real follow-up | each model's
  counterfactual, then the same images zoomed on the region that changed most between
  prior and follow-up (outlined in yellow on the full images).
- :func:`attention_figure` (Fig. 4): the counterfactual, then one attention map per
  interpretation phrase overlaid on it, each in the phrase's colour (the HTML report
  colours the same phrases in the interpretation text with :data:`PHRASE_COLOURS`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from progemu.utils.atomic import atomic_write_bytes

__all__ = ["PHRASE_COLOURS", "change_box", "comparison_figure", "attention_figure"]

#: RGB colours of phrases 0, 1, 2, ... (blue, red, green, orange, purple, cyan)
PHRASE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (23, 190, 207))
_PANEL = 192  # px per panel
_LABEL = 18  # px of caption above each panel


def change_box(prior: np.ndarray, followup: np.ndarray, fraction: float = 0.35) -> tuple[int, int, int, int]:
    """Square box ``(x0, y0, x1, y1)`` (pixels of ``prior``) centred on the largest smoothed |follow-up - prior|."""
    from scipy.ndimage import uniform_filter

    size = prior.shape[0]
    side = max(4, int(round(size * fraction)))
    prior, followup = np.asarray(prior, float), np.asarray(followup, float)
    difference = np.abs(followup - prior)
    # registration leaves black fill at the borders: it is not a change of the patient
    difference[(prior < 0.02) | (followup < 0.02)] = 0.0
    difference = uniform_filter(difference, size=side)
    cy, cx = np.unravel_index(int(np.argmax(difference)), difference.shape)
    x0 = int(np.clip(cx - side // 2, 0, size - side))
    y0 = int(np.clip(cy - side // 2, 0, size - side))
    return x0, y0, x0 + side, y0 + side


def _square_box(box, size: int, minimum: float = 0.2) -> tuple[int, int, int, int]:
    """Pixel square (side >= ``minimum`` of the image) around a normalised box, kept inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = min(1.0, max(x1 - x0, y1 - y0, minimum))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - side / 2, 0.0), 1.0 - side)
    top = min(max(cy - side / 2, 0.0), 1.0 - side)
    return tuple(int(round(v * size)) for v in (left, top, left + side, top + side))


def _to_rgb(image: np.ndarray, size: int):
    from PIL import Image

    array = np.clip(np.rint(np.asarray(image, float) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB").resize((size, size), Image.BILINEAR)


def _save(image, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _caption(draw, x: int, y: int, text: str) -> None:
    draw.text((x + 3, y + 3), text if len(text) <= 60 else "..." + text[-57:], fill=(0, 0, 0))


def comparison_figure(cases: Sequence[dict], path: str | Path) -> Path:
    """Fig. 3 style PNG. ``cases[i]``: ``{"title", "prior", "followup", "rows": {name: image}, "box"}``.

    Images are float [H, W] in [0, 1]; ``box`` (optional) is the region to zoom on, normalised
    ``(x0, y0, x1, y1)`` (e.g. the synthetic world's region of the finding that changed);
    without it the zoom goes where prior and follow-up differ most.
    """
    from PIL import Image, ImageDraw

    if not cases:
        raise ValueError("comparison_figure needs at least one case")
    columns = 2 + max(len(case["rows"]) for case in cases)
    height = len(cases) * 2 * (_PANEL + _LABEL) + len(cases) * _LABEL
    canvas = Image.new("RGB", (columns * _PANEL, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for case in cases:
        _caption(draw, 0, y, case.get("title", ""))
        y += _LABEL
        panels = [("prior", case["prior"]), ("follow-up (real)", case["followup"]), *case["rows"].items()]
        if case.get("box") is not None:  # a finding region, normalised [0, 1] (x0, y0, x1, y1)
            zoom_box = _square_box(case["box"], _PANEL)
        else:
            scale = _PANEL / case["prior"].shape[0]
            zoom_box = tuple(int(round(v * scale)) for v in change_box(case["prior"], case["followup"]))
        for column, (name, image) in enumerate(panels):
            x = column * _PANEL
            _caption(draw, x, y, name)
            full = _to_rgb(image, _PANEL)
            crop = full.crop(zoom_box).resize((_PANEL, _PANEL), Image.BICUBIC)
            ImageDraw.Draw(full).rectangle(zoom_box, outline=(255, 215, 0), width=2)
            canvas.paste(full, (x, y + _LABEL))
            _caption(draw, x, y + _PANEL + _LABEL, f"{name} (zoom)")
            canvas.paste(crop, (x, y + _PANEL + 2 * _LABEL))
        y += 2 * (_PANEL + _LABEL)
    return _save(canvas, Path(path))


def attention_figure(counterfactual: np.ndarray, phrases: Sequence[str], attention: dict, path: str | Path,
                     alpha: float = 0.6) -> Path:
    """Fig. 4 style PNG: the counterfactual, then per phrase its attention map ``float [h, w]`` over it."""
    from PIL import Image, ImageDraw

    shown = [p for p in phrases if p in attention][: len(PHRASE_COLOURS)]
    canvas = Image.new("RGB", ((1 + len(shown)) * _PANEL, _PANEL + _LABEL), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    _caption(draw, 0, 0, "counterfactual")
    base = _to_rgb(counterfactual, _PANEL)
    canvas.paste(base, (0, _LABEL))
    grey = np.asarray(base, float)
    for index, phrase in enumerate(shown):
        colour = np.array(PHRASE_COLOURS[index], float)
        heat = np.asarray(attention[phrase], float)
        heat = heat - heat.min()
        heat = heat / heat.max() if heat.max() > 0 else heat
        heat_image = Image.fromarray(np.rint(heat * 255).astype(np.uint8)).resize((_PANEL, _PANEL), Image.BILINEAR)
        weight = (np.asarray(heat_image, float) / 255.0 * alpha)[..., None]
        overlay = Image.fromarray(np.rint(grey * (1 - weight) + colour * weight).astype(np.uint8))
        x = (1 + index) * _PANEL
        draw.rectangle((x, 0, x + _PANEL - 1, _LABEL - 1), fill=tuple(int(c) for c in colour))
        draw.text((x + 3, 3), phrase[:28], fill=(255, 255, 255))
        canvas.paste(overlay, (x, _LABEL))
    return _save(canvas, Path(path))
