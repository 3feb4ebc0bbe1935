"""Findings of the real-anatomy world, inserted into a real radiograph where a radiologist looks.

Every finding is drawn at the canonical coordinates ``x, y`` of the output pixels (float32 [H, W],
see :mod:`progemu.synth.anatomy`) with the shared geometry of :mod:`progemu.synth.geometry`, so the
ground-truth boxes of :mod:`progemu.synth.truth` hold for both worlds. Opacities are *attenuation*
added to the image's attenuation map ``A = -ln(1 - I)``: fluid and tissue replace aerated lung and
whiten it (more where the lung was dark); they are restricted to the real lung mask ``lung``
(float32 [H, W] in [0, 1], as seen in the study). Geometric findings (cardiomegaly, the volume loss
of atelectasis) are coordinate warps, see :func:`finding_warps`.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from .anatomy import PatientAnatomy, side_sign
from .findings import StudyState
from .geometry import (
    atelectasis_bands,
    consolidation_ellipse,
    costophrenic_y,
    device_paths,
    effusion_height,
    heart_shape,
    hilum,
    lesion_center,
    lung_geometry,
    mm_to_units,
    step,
)
from .render import _band, _heart, _polyline_distance

__all__ = ["finding_warps", "opacity", "heart_attenuation", "device_attenuation", "pneumothorax_collapse"]


#: widening of the patient's own heart shadow by cardiomegaly grade
HEART_WIDENING = {0: 1.0, 1: 1.15, 2: 1.28, 3: 1.42}
_PUSH_DECAY = 0.25  # canonical units over which the push into the lung fades (> the largest push)


def _cardiomegaly_warp(x, y, an: PatientAnatomy, grade: int, insp: float):
    """Source x of a horizontal stretch about the heart centre that widens the heart shadow.

    The patient's normal half-width ``hw0`` becomes ``hw0 * HEART_WIDENING[grade]``; inside the new
    silhouette content is stretched, outside the displacement fades linearly to 0 over 0.25
    canonical units (the lung is pushed, not cut; monotonic). No extra AP magnification: the base
    radiograph already shows its own projection's, and a study's AP/PA label does not change it.
    """
    cx, cy, _, hh = heart_shape(an, 0, "PA", insp)
    hw0 = an.heart_half_width()
    hw = hw0 * HEART_WIDENING[int(grade)]
    if hw <= hw0 + 1e-4:
        return x
    d = x - cx
    ad = np.abs(d)
    push = hw - hw0
    inside = cx + d * (hw0 / hw)
    outside = x - np.sign(d) * push * np.clip(1.0 - (ad - hw) / _PUSH_DECAY, 0.0, 1.0)
    xs = np.where(ad < hw, inside, outside)
    window = step(y - (cy - hh), 0.12) * step(cy + 0.2 - y, 0.12)
    return x + window * (xs - x)


def finding_warps(x: np.ndarray, y: np.ndarray, an: PatientAnatomy, state: StudyState,
                  insp: float) -> tuple[np.ndarray, np.ndarray]:
    """Canonical source coordinates of every output pixel: inspiration, cardiomegaly, atelectatic volume loss.

    Inspiration moves both hemidiaphragms down by ``insp`` with a vertical stretch below the apex.
    """
    dome = 0.5 * (an.dome_y_right + an.dome_y_left)
    factor = (dome - an.apex_y) / max(dome + insp - an.apex_y, 0.2)
    ys = np.where(y > an.apex_y, an.apex_y + (y - an.apex_y) * factor, y)
    xs = _cardiomegaly_warp(x, y, an, state["cardiomegaly"].severity, insp)
    for side in ("right", "left"):
        atel = state[f"atelectasis_{side}"]
        if atel.present:  # volume loss: the hemidiaphragm rises (content comes from lower down)
            s = side_sign(side)
            lift = 0.014 * atel.severity
            near = step(s * x - an.mediastinum_half_width, 0.04) * step(an.thorax_half_width + 0.05 - s * x, 0.04)
            ys = ys + lift * near * np.exp(-(((y - an.dome_y(side) - insp) / 0.3) ** 2))
    return xs.astype(np.float32), ys.astype(np.float32)


def opacity(x, y, an: PatientAnatomy, state: StudyState, lung: np.ndarray, insp: float, vessels: np.ndarray,
            smooth: np.ndarray) -> np.ndarray:
    """Attenuation (float32 [H, W], >= 0) added by effusions, consolidation, edema, atelectasis and lesions.

    ``vessels`` / ``smooth``: per-patient textures sampled at ``x, y`` (see
    :func:`progemu.synth.render.patient_texture`).
    """
    added = np.zeros_like(x)
    f = state.findings
    # the lung with soft edges reaching a little beyond the drawn outline (fluid hides the hemidiaphragm)
    pleural = None
    for side in ("right", "left"):
        s = side_sign(side)
        half = step(s * x - 0.02, 0.01)
        eff = f[f"pleural_effusion_{side}"]
        if eff.present:
            if pleural is None:
                pleural = np.clip(1.6 * ndimage.gaussian_filter(lung, 0.02 * x.shape[1]), 0.0, 1.0)
            _, u_lat, _ = lung_geometry(x, y, an, side, insp, edge=0.03)
            level = costophrenic_y(an, side, insp) - effusion_height(eff.severity)
            surface = level + 0.15 * np.sqrt(u_lat)  # meniscus: higher along the lateral wall
            fluid = step(y - surface, 0.045) * pleural * half
            added += fluid * (0.4 + 0.5 * np.clip((y - surface) / 0.2, 0.0, 1.0)) * (1.0 + 0.05 * smooth)
        cons = f[f"consolidation_{side}"]
        if cons.present:
            cx, cy, rx, ry = consolidation_ellipse(an, side, cons.location, cons.severity, insp)
            r = np.hypot((x - cx) / rx, (y - cy) / ry) * (1.0 + 0.18 * smooth)
            bronchogram = 1.0 - 0.25 * vessels * step(0.7 - r, 0.1)
            fluffy = np.clip(0.75 + 0.25 * smooth, 0.3, 1.2)
            added += lung * half * step(1.0 - r, 0.3) * (0.4 + 0.12 * cons.severity) * bronchogram * fluffy
        les = f[f"lung_lesion_{side}"]
        if les.present:
            cx, cy = lesion_center(an, side, les.location, insp)
            radius = 0.5 * (les.size_mm or 10.0) * mm_to_units(an)
            r = np.hypot(x - cx, y - cy) * (1.0 + 0.08 * smooth)  # lobulated edge
            dome = np.sqrt(np.clip(1.0 - (r / max(radius, 1e-3)) ** 2, 0.0, 1.0))  # thicker in the middle
            added += (0.35 + 0.25 * dome) * step(radius - r, 0.012) * (1.0 + 0.1 * smooth)
        atel = f[f"atelectasis_{side}"]
        if atel.present:
            for x0, y0, x1, y1, thick in atelectasis_bands(an, side, atel.severity, insp):
                d = _polyline_distance(x, y, np.array([[x0, y0], [x1, y1]], dtype=np.float32))
                band = _band(d, thick / 2, 0.02) * 0.6 + 0.4 * np.exp(-((d / (thick * 1.8)) ** 2))
                added += 0.45 * lung * half * np.clip(band, 0.0, 1.0) * np.clip(0.8 + 0.3 * smooth, 0.4, 1.2)
    edema = f["edema"]
    if edema.present:
        g = edema.severity
        haze = 0.0
        for side in ("right", "left"):
            hx, hy = hilum(an, side)
            haze = haze + np.exp(-(((x - hx) / (0.20 + 0.06 * g)) ** 2 + ((y - hy - 0.05) / (0.26 + 0.06 * g)) ** 2))
        added += lung * np.clip(haze, 0.0, 1.0) * (0.10 + 0.09 * g) * (0.9 + 0.15 * vessels + 0.1 * smooth)
    return added.astype(np.float32)


def heart_attenuation(x, y, an: PatientAnatomy, state: StudyState, pose) -> np.ndarray:
    """Attenuation (float32 [H, W]) of the cardiac silhouette beyond the patient's normal one.

    The patient's normal silhouette (the phantom's shape at grade 0, PA) widened horizontally about
    the heart centre by the same factor as the warp (:data:`HEART_WIDENING`),
    minus the normal one: two crescents along the left and right heart borders, above the
    hemidiaphragms, with the density of water.
    """
    k = HEART_WIDENING[int(state["cardiomegaly"].severity)]
    if k <= 1.0:
        return np.zeros_like(x)
    cx, cy, _, hh = heart_shape(an, 0, "PA", pose.inspiration)
    normal = StudyState.empty()
    flat = dataclasses.replace(pose, view="PA")
    widened = _heart(cx + (x - cx) / k, y, an, normal, flat)
    crescent = np.clip(widened - _heart(x, y, an, normal, flat), 0.0, 1.0) * step(cy - y, 0.03)
    # soft inner edge: the heart fills out rather than growing a rim (sigma 0.025 canonical units)
    crescent = ndimage.gaussian_filter(crescent, 0.0125 * x.shape[1])
    return (0.45 * crescent).astype(np.float32)


def device_attenuation(x, y, an: PatientAnatomy, state: StudyState, insp: float) -> np.ndarray:
    """Attenuation (float32 [H, W]) of the support devices: dense tubes, lines and a pacemaker can."""
    out = np.zeros_like(x)
    devices = state["support_devices"]
    if not devices.present:
        return out
    for kind in [k for k in devices.location.split("+") if k]:
        for path in device_paths(an, kind, insp):
            d = _polyline_distance(x, y, path.astype(np.float32))
            if kind == "ett":
                out += 0.3 * _band(d, 0.02, 0.005) + 0.4 * _band(d, 0.005, 0.003)
            else:
                out += 0.7 * _band(d, 0.009, 0.004)
        if kind == "pacemaker":
            box = np.maximum(np.abs(x - 0.55) / 0.09, np.abs(y + 0.63) / 0.06)
            out += 2.0 * step(1.0 - box, 0.08)
    return out


def pneumothorax_collapse(x, y, an: PatientAnatomy, side: str, fraction: float):
    """Canonical coordinates at which to read the lung mask of a lung collapsed by ``fraction``.

    The lung shrinks towards its hilum, most at the apex (fading to none at mid-lung); returns
    ``(xs, ys, weight)`` with ``weight`` float32 [H, W] the local collapse fraction.
    """
    hx, hy = hilum(an, side)
    weight = fraction * step(-0.05 - y, 0.20) * step(side_sign(side) * x, 0.02)
    xs = hx + (x - hx) / (1.0 - weight)
    ys = hy + (y - hy) / (1.0 - weight)
    return xs.astype(np.float32), ys.astype(np.float32), weight.astype(np.float32)
