"""Shared frontal geometry: lung outlines and where each finding sits (canonical frame).

Used by the renderer (to draw) and by :mod:`progemu.synth.truth` (to place the
boxes a radiologist would look at), so both always agree. All lengths are in
canonical units (image half-width = 1); see :mod:`progemu.synth.anatomy` for the
frame and the side convention (patient right = image left = ``x < 0``).
"""
from __future__ import annotations

import numpy as np

from .anatomy import PatientAnatomy, side_sign
from .findings import cardiothoracic_ratio

__all__ = [
    "step",
    "lung_apex_x",
    "costophrenic_y",
    "lung_geometry",
    "effusion_height",
    "diaphragm_y",
    "heart_shape",
    "pneumothorax_fraction",
    "consolidation_ellipse",
    "lesion_center",
    "mm_to_units",
    "atelectasis_bands",
    "device_paths",
    "hilum",
]


def step(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth 0->1 step of signed distance ``d``: 0 below ``-2 width``, 1 above ``2 width``.

    A cubic smoothstep (cheaper than tanh and exactly flat outside the edge).
    """
    t = np.clip(d * (0.25 / width) + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def lung_apex_x(an: PatientAnatomy) -> float:
    """|x| of the lung apex (unsigned)."""
    return an.mediastinum_half_width + 0.42 * (an.thorax_half_width - an.mediastinum_half_width)


def costophrenic_y(an: PatientAnatomy, side: str, inspiration: float = 0.0) -> float:
    return an.dome_y(side) + inspiration + an.cp_depth


def hilum(an: PatientAnatomy, side: str) -> tuple[float, float]:
    return side_sign(side) * (an.mediastinum_half_width + 0.09), -0.08


def lung_geometry(x: np.ndarray, y: np.ndarray, an: PatientAnatomy, side: str, inspiration: float = 0.0,
                  edge: float = 0.012):
    """Soft mask of one lung and the lateral->medial coordinate inside it.

    Returns ``(mask, u_lat, t)``: ``mask`` float [..] in [0, 1]; ``u_lat`` 0 at the
    lateral chest wall, 1 at the mediastinum; ``t`` 0 at the apex, 1 at the
    costophrenic angle (vertical position inside the lung).
    """
    s = side_sign(side)
    ax = s * x
    xm = an.mediastinum_half_width + (0.015 if side == "left" else 0.0)
    tw = an.thorax_half_width
    xa = lung_apex_x(an)
    dome = an.dome_y(side) + inspiration
    cp_y = dome + an.cp_depth
    t = (y - an.apex_y) / (cp_y - an.apex_y)
    tc = np.clip(t, 0.0, 1.0)
    x_out = xa + (tw - xa) * np.sqrt(1.0 - (1.0 - np.clip(t / 0.8, 0.0, 1.0)) ** 3)
    x_in = xa - (xa - xm) * np.sqrt(1.0 - (1.0 - np.clip(t / 0.30, 0.0, 1.0)) ** 2)
    peak = xm + 0.45 * (tw - xm)
    # hemidiaphragm: highest at `peak`, down to the costophrenic angle laterally
    lateral = np.clip((ax - peak) / (tw - peak), 0.0, None)
    medial = np.clip((peak - ax) / (peak - xm), 0.0, None)
    y_dome = dome + an.cp_depth * lateral**2 + 0.25 * an.cp_depth * medial**2
    mask = step(ax - x_in, edge) * step(x_out - ax, edge) * step(y_dome - y, edge) * step(t + 0.002, 0.004)
    width = np.maximum(x_out - x_in, 1e-3)
    u_lat = np.clip((x_out - ax) / width, 0.0, 1.0)
    return mask, u_lat, tc


def diaphragm_y(x: np.ndarray, an: PatientAnatomy, inspiration: float = 0.0) -> np.ndarray:
    """Height of the hemidiaphragm under every ``x`` (both sides; flat under the mediastinum)."""
    out = np.empty_like(x)
    for side, sel in (("right", x < 0), ("left", x >= 0)):
        ax = np.abs(x[sel])
        xm, tw = an.mediastinum_half_width, an.thorax_half_width
        peak = xm + 0.45 * (tw - xm)
        lateral = np.clip((ax - peak) / (tw - peak), 0.0, None)
        medial = np.clip((peak - ax) / (peak - xm), 0.0, 1.0)
        out[sel] = an.dome_y(side) + inspiration + an.cp_depth * lateral**2 + 0.25 * an.cp_depth * medial**2
    return out


def heart_shape(an: PatientAnatomy, grade: int, view: str = "PA", inspiration: float = 0.0):
    """(cx, cy, half_width, half_height) of the cardiac silhouette; widest at the diaphragm."""
    ctr = cardiothoracic_ratio(an.heart_ctr, grade)
    if view == "AP":  # AP projection magnifies the heart
        ctr *= 1.08
    hw = an.heart_half_width(ctr)
    grow = hw - an.heart_half_width()
    cx = an.heart_center_x + 0.35 * grow
    cy = 0.5 * (an.dome_y_right + an.dome_y_left) + inspiration - 0.02
    hh = 0.36 + 0.25 * hw + 0.3 * grow
    return cx, cy, hw, hh


def effusion_height(grade: int) -> float:
    """Height of the fluid level above the costophrenic angle (canonical units)."""
    return {0: 0.0, 1: 0.22, 2: 0.34, 3: 0.52}[int(grade)]


def pneumothorax_fraction(grade: int) -> float:
    """Fraction by which the lung collapses towards the hilum (apical / lateral)."""
    return {0: 0.0, 1: 0.16, 2: 0.28, 3: 0.42}[int(grade)]


def consolidation_ellipse(an: PatientAnatomy, side: str, lobe: str, grade: int, inspiration: float = 0.0):
    """(cx, cy, rx, ry) of a lobar consolidation patch."""
    s = side_sign(side)
    tw = an.thorax_half_width
    if lobe == "upper":
        cx, cy = s * 0.50 * tw, an.apex_y + 0.36
    elif lobe == "middle":
        cx, cy = s * (an.mediastinum_half_width + 0.20), an.dome_y(side) + inspiration - 0.17
    elif lobe == "lower":
        cx, cy = s * 0.62 * tw, an.dome_y(side) + inspiration - 0.10
    else:
        raise ValueError(f"unknown lobe {lobe!r}")
    return cx, cy, 0.10 + 0.045 * grade, 0.08 + 0.035 * grade


def mm_to_units(an: PatientAnatomy) -> float:
    """Canonical units per millimetre: the thorax is taken as 300 mm wide."""
    return 2.0 * an.thorax_half_width / 300.0


def lesion_center(an: PatientAnatomy, side: str, zone: str, inspiration: float = 0.0) -> tuple[float, float]:
    s = side_sign(side)
    tw = an.thorax_half_width
    if zone == "upper":
        return s * 0.48 * tw, an.apex_y + 0.30
    if zone == "middle":
        return s * 0.58 * tw, -0.08
    if zone == "lower":
        return s * 0.55 * tw, an.dome_y(side) + inspiration - 0.20
    raise ValueError(f"unknown zone {zone!r}")


def atelectasis_bands(an: PatientAnatomy, side: str, grade: int, inspiration: float = 0.0):
    """List of (x0, y0, x1, y1, thickness) plate-like bands at the lung base."""
    s = side_sign(side)
    tw = an.thorax_half_width
    base = an.dome_y(side) + inspiration
    thick = {1: 0.035, 2: 0.05, 3: 0.065}[int(grade)]
    bands = [(s * 0.30 * tw, base - 0.14, s * 0.82 * tw, base - 0.19, thick)]
    if grade >= 2:
        bands.append((s * 0.36 * tw, base - 0.28, s * 0.78 * tw, base - 0.30, thick * 0.8))
    return bands


def device_paths(an: PatientAnatomy, kind: str, inspiration: float = 0.0) -> list[np.ndarray]:
    """Polylines (N, 2) of a device, canonical (x, y)."""
    if kind == "ett":
        return [np.array([[0.0, -1.2], [0.0, -0.75], [0.005, -0.42]])]
    if kind == "cvc":
        return [np.array([[-0.30, -1.2], [-0.22, -0.85], [-0.12, -0.58], [-0.07, -0.40], [-0.06, -0.22]])]
    if kind == "ngt":
        dome = an.dome_y("left") + inspiration
        return [np.array([[0.01, -1.2], [0.0, -0.6], [0.03, 0.0], [0.10, dome], [0.28, dome + 0.12], [0.36, dome + 0.10]])]
    if kind == "pacemaker":
        return [
            np.array([[0.52, -0.62], [0.35, -0.58], [0.12, -0.48], [0.03, -0.25], [0.08, 0.05], [0.20, 0.22]]),
            np.array([[0.52, -0.62], [0.36, -0.62], [0.10, -0.50], [0.0, -0.25], [-0.02, 0.02]]),
        ]
    raise ValueError(f"unknown device kind {kind!r}")
