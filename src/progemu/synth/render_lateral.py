"""Render the lateral view of a synthetic study (patient facing the image left).

Simpler than the frontal view (evaluation uses frontal images only) but with the
landmarks a reader expects: retrosternal and retrocardiac clear spaces, the
heart anteriorly, the thoracic spine posteriorly, the domes with the deep
posterior costophrenic sulci, and the findings that show on a lateral film
(effusion fills the posterior sulcus, consolidation and masses, edema, tubes).

``render_lateral(anatomy, state, pose, size, rng) -> float32 [size, size] in [0, 1]``.
"""
from __future__ import annotations

import numpy as np

from .anatomy import PatientAnatomy, Pose, canonical_from_image
from .findings import StudyState, cardiothoracic_ratio
from .geometry import effusion_height, mm_to_units, step
from .render import _FOG, _POSTERIOR_RIB, _band, _periodic, _polyline_distance, _sample_texture, patient_texture, pixel_grid

__all__ = ["render_lateral"]


def render_lateral(anatomy: PatientAnatomy, state: StudyState, pose: Pose, size: int,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """float32 [size, size] in [0, 1]; anterior is the image left (``x < 0``)."""
    an = anatomy
    xi, yi = pixel_grid(size)
    x, y = canonical_from_image(xi, yi, pose)
    vessels, smooth = _sample_texture(patient_texture(an.texture_seed), -y, x)  # the frontal texture, turned
    insp = pose.inspiration
    dome = 0.5 * (an.dome_y_right + an.dome_y_left) + insp
    f = state.findings

    front, back = -0.74, 0.80
    body = step(x - front + 0.08 * np.clip(y + 0.6, None, 0), 0.02) * step(back - x, 0.02)
    A = (0.62 + 0.55 * an.soft_tissue) * body * step(y + 1.1, 0.05)
    # arms in front of the upper chest
    A = A + 0.22 * step(-0.35 - y, 0.15) * step(0.28 - np.abs(x + 0.15), 0.12)
    # lungs: one rounded outline from the retrosternal space to the paraspinal gutter, cut by the domes,
    # which run lower posteriorly (the deep posterior costophrenic sulcus)
    u = np.clip((x + 0.56) / 1.16, 0.0, 1.0)  # 0 anterior, 1 posterior
    # superellipse: flatter retrosternal and posterior borders than an ellipse
    ellipse = np.abs((x - 0.03) / 0.58) ** 2.6 + np.abs((y + 0.02) / 0.80) ** 2
    floor = dome - 0.06 + 0.36 * np.clip((x - 0.05) / 0.5, 0.0, 1.0) ** 2 - 0.06 * np.clip((-0.2 - x) / 0.4, 0.0, 1.0)
    lung = step(1.0 - ellipse, 0.03) * step(floor - y, 0.012)
    fill = np.zeros_like(x)
    ctr = cardiothoracic_ratio(an.heart_ctr, f["cardiomegaly"].severity)
    grow = ctr - an.heart_ctr
    heart = np.hypot((x + 0.22 + 0.25 * grow) / (0.27 + 0.8 * grow), (y - dome + 0.16) / (0.26 + 0.3 * grow))
    fill = np.maximum(fill, 0.8 * step(1.0 - heart, 0.07))
    effusion = max(f["pleural_effusion_left"].severity, f["pleural_effusion_right"].severity)
    if effusion:
        level = dome + 0.25 - effusion_height(effusion) * 1.1
        fill = np.maximum(fill, step(y - (level + 0.15 * (1 - u)), 0.02) * step(u - 0.35, 0.05))
    for side in ("left", "right"):
        c = f[f"consolidation_{side}"]
        if c.present:
            cy = {"upper": -0.40, "middle": 0.05, "lower": dome - 0.12}[c.location]
            cx = {"upper": 0.15, "middle": -0.25, "lower": 0.35}[c.location]
            r = np.hypot((x - cx) / (0.12 + 0.04 * c.severity), (y - cy) / (0.09 + 0.03 * c.severity)) * (1 + 0.2 * smooth)
            fill = np.maximum(fill, 0.6 * step(1.0 - r, 0.12))
        les = f[f"lung_lesion_{side}"]
        if les.present:
            cy = {"upper": -0.40, "middle": -0.05, "lower": dome - 0.2}[les.location]
            r = np.hypot(x - 0.2, y - cy)
            fill = np.maximum(fill, 0.9 * step(0.5 * (les.size_mm or 10) * mm_to_units(an) - r, 0.006))
        atel = f[f"atelectasis_{side}"]
        if atel.present:
            d = _polyline_distance(x, y, np.array([[-0.1, dome - 0.12], [0.45, dome - 0.02]]))
            fill = np.maximum(fill, 0.8 * _band(d, 0.015 + 0.01 * atel.severity, 0.008))
    # ribs: both hemithoraces superimposed, oblique bands running down towards the front
    ribs = _periodic((y + 0.45 * (x - 0.6)) / (an.rib_spacing * 1.1) + an.rib_phase, _POSTERIOR_RIB)
    A = A + 0.05 * ribs * step(0.62 - x, 0.05) * step(x + 0.2, 0.1) * step(dome + 0.2 - y, 0.05)
    A = A - 0.48 * lung * (1.0 - fill) * (0.7 + 0.3 * np.sqrt(np.clip(1.0 - ellipse, 0.0, 1.0)))
    hilar = np.exp(-(((x - 0.02) / 0.25) ** 2 + ((y + 0.10) / 0.30) ** 2))
    A = A + lung * (0.05 * vessels * (0.3 + hilar) + 0.10 * np.exp(-(((x - 0.02) / 0.08) ** 2 + ((y + 0.12) / 0.12) ** 2)))
    if f["edema"].present:
        A = A + lung * (0.06 + 0.06 * f["edema"].severity) * np.exp(-(((x - 0.05) / 0.35) ** 2 + ((y + 0.0) / 0.4) ** 2))
    # spine: vertebral bodies with disc spaces, posterior elements behind
    period = 0.12
    frac = (y + 1.0) / period - np.floor((y + 1.0) / period)
    vert = _band(x - 0.64 - 0.06 * y, 0.075, 0.01) * (0.25 - 0.12 * np.exp(-(((frac - 0.92) / 0.06) ** 2)))
    A = A + vert * step(dome + 0.5 - y, 0.05)
    A = A + 0.18 * _band(x - (front + 0.07) - 0.05 * y, 0.018, 0.006) * step(y + 0.75, 0.03) * step(0.2 - y, 0.03)  # sternum
    trachea = _polyline_distance(x, y, np.array([[-0.08, -1.2], [0.02, -0.25]]))
    A = A - 0.14 * _band(trachea, 0.035, 0.008)
    if f["support_devices"].present:
        kinds = f["support_devices"].location.split("+")
        if "ett" in kinds:
            A = A + 0.3 * _band(_polyline_distance(x, y, np.array([[-0.09, -1.2], [-0.02, -0.45]])), 0.012, 0.004)
        if "ngt" in kinds:
            A = A + 0.4 * _band(_polyline_distance(x, y, np.array([[-0.06, -1.2], [0.30, -0.2], [0.25, dome + 0.1], [0.0, dome + 0.2]])), 0.006, 0.003)
        if "pacemaker" in kinds:
            A = A + 1.2 * step(1.0 - np.maximum(np.abs(x + 0.55) / 0.05, np.abs(y + 0.6) / 0.08), 0.05)
    A = np.clip(A, 0.0, None) * pose.exposure
    image = (1.0 - np.exp(-1.1 * A) - 0.10) / 0.72
    # scatter / detector fog: air is dark grey, never pure black, so no edge row or column is an
    # all-black "border" that curation would crop (which would shift the image frame of the ground truth)
    image = _FOG + (1.0 - _FOG) * np.clip(image, 0.0, 1.0)
    if rng is not None:
        image = image + rng.normal(0.0, 0.014, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)
