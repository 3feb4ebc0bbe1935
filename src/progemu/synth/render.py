"""Render a frontal chest radiograph of a synthetic patient, with its findings.

The image is built as a map of X-ray attenuation ``A`` (arbitrary units, 0 = air)
from analytic shapes evaluated at the canonical coordinates of every output pixel
(so a study's pose is exact, with no resampling), then converted to brightness
``1 - exp(-k A)``, windowed, and given quantum noise. Findings add or remove
attenuation where a radiologist would look for them (see
:mod:`progemu.synth.geometry`): fluid and consolidation put back the attenuation
that the aerated lung had removed, a pneumothorax removes lung markings and adds
a pleural line, devices are dense thin lines.

``render_frontal(anatomy, state, pose, size, rng) -> float32 [size, size] in [0, 1]``.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from .anatomy import PatientAnatomy, Pose, canonical_from_image, side_sign
from .findings import StudyState
from .geometry import (
    atelectasis_bands,
    consolidation_ellipse,
    device_paths,
    diaphragm_y,
    heart_shape,
    effusion_height,
    hilum,
    lesion_center,
    lung_geometry,
    mm_to_units,
    pneumothorax_fraction,
    step,
)

__all__ = ["render_frontal", "patient_texture", "pixel_grid", "TEXTURE_EXTENT"]

#: the per-patient texture covers canonical [-TEXTURE_EXTENT, TEXTURE_EXTENT]^2
TEXTURE_EXTENT = 1.3
_TEXTURE_PX = 256
_LUNG_AIR = 0.62  # attenuation removed by fully aerated lung
_FOG = 0.07  # brightness of air outside the body (> the 10/255 black-border threshold of curation)


@functools.lru_cache(maxsize=16)
def patient_texture(seed: int) -> np.ndarray:
    """float32 [2, 256, 256]: channel 0 vessel-like lung markings in [0, 1], channel 1 smooth noise ~N(0, 1).

    Independent of the output size, so a patient looks the same at 128 and 256 px.
    """
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((_TEXTURE_PX, _TEXTURE_PX))
    low = ndimage.gaussian_filter(white, 5.0)
    band = ndimage.gaussian_filter(white, 2.2) - low
    band /= band.std() + 1e-8
    # zero-crossings of band-passed noise form a branching network of thin curvy lines
    vessels = np.exp(-((band / 0.35) ** 2))
    smooth = low / (low.std() + 1e-8)
    return np.stack([vessels, smooth]).astype(np.float32)


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (canonical units) of pixel centres: ``xi, yi`` float32 [size, size]."""
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return np.meshgrid(c, c)


def _sample_texture(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # nearest-neighbour lookup: the texture is smooth at its own scale, and a gather
    # is several times cheaper than ndimage.map_coordinates
    scale = _TEXTURE_PX / (2 * TEXTURE_EXTENT)
    ix = np.clip(((x + TEXTURE_EXTENT) * scale).astype(np.int32), 0, _TEXTURE_PX - 1)
    iy = np.clip(((y + TEXTURE_EXTENT) * scale).astype(np.int32), 0, _TEXTURE_PX - 1)
    flat = iy * _TEXTURE_PX + ix
    return texture[0].ravel()[flat], texture[1].ravel()[flat]


def _periodic(phase: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Look up a periodic profile: ``table`` sampled on [0, 1) at ``len(table)`` points."""
    n = table.shape[0]
    index = ((phase - np.floor(phase)) * n).astype(np.int32) % n
    return table[index]


_F = (np.arange(512, dtype=np.float32) + 0.5) / 512
_POSTERIOR_RIB = (0.8 * np.exp(-(((_F - 0.22) / 0.16) ** 4)) + 0.6 * np.exp(-(((_F - 0.40) / 0.03) ** 2))).astype(np.float32)
_ANTERIOR_RIB = np.exp(-(((_F - 0.2) / 0.14) ** 4)).astype(np.float32)
_ENDPLATE = np.exp(-(((_F - 0.5) / 0.06) ** 2)).astype(np.float32)


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    best = np.full(x.shape, np.inf, dtype=x.dtype)
    for (x0, y0), (x1, y1) in zip(points[:-1].tolist(), points[1:].tolist()):
        dx, dy = x1 - x0, y1 - y0
        h = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        best = np.minimum(best, np.hypot(x - x0 - h * dx, y - y0 - h * dy))
    return best


def _band(d: np.ndarray, half: float, edge: float) -> np.ndarray:
    """1 inside |d| < half, smooth to 0 outside."""
    return step(half - np.abs(d), edge)


def _body(x, y, an: PatientAnatomy, pose: Pose):
    neck = 0.32
    # rounded shoulders: the image top is at the lower neck
    half = neck + (an.body_half_width + 0.1 - neck) * np.sqrt(np.clip((y + 1.12) / 0.32, 0.0, 1.0))
    half = np.minimum(half, an.body_half_width + 0.1 - 0.08 * np.clip(y + 0.6, 0.0, None))
    thickness = np.sqrt(np.clip(1.0 - (x / half) ** 2, 0.0, None))
    body = an.soft_tissue * (0.25 + 0.58 * thickness) * step(half - np.abs(x), 0.015)
    # humeral heads at the upper corners
    for s in (-1, 1):
        r = np.hypot((x - s * (an.thorax_half_width + 0.30)) / 0.14, (y + 0.80) / 0.16)
        body = body + 0.10 * step(1.0 - r, 0.08)
    if an.sex == "F":
        for s in (-1, 1):
            r = np.hypot((x - s * 0.50) / 0.38, (y - 0.48) / 0.30)
            body = body + 0.12 * step(1.0 - r, 0.15) * step(y - 0.18, 0.08)
    # liver / spleen / abdominal soft tissue below the diaphragm
    # (soft-edged under the mediastinum, where no lung outlines the diaphragm)
    edge = 0.015 + 0.08 * np.exp(-((x / 0.22) ** 2))
    body = body + 0.10 * step(y - diaphragm_y(x, an, pose.inspiration), edge) * step(half - np.abs(x), 0.05)
    return body


def _ribs(x, y, an: PatientAnatomy, inspiration: float):
    ax = np.abs(x) / an.thorax_half_width
    bottom = max(an.dome_y_right, an.dome_y_left) + inspiration + an.cp_depth + 0.15
    inside = step(1.04 - ax, 0.03) * step(ax - 0.07, 0.02) * step(bottom - y, 0.05) * step(y + 0.95, 0.05)
    # posterior ribs: near-horizontal at the spine, arching down along the lateral wall
    yw = y - (-0.05 * ax + 0.30 * ax**2.5)
    r = (yw + 1.0) / an.rib_spacing * (1.0 - 0.12 * (yw + 1.0) / 2.0) + an.rib_phase
    posterior = _periodic(r, _POSTERIOR_RIB)
    # anterior ribs: fainter, descending medially, gone medial to the costal cartilage
    ya = y + 0.38 * ax - 0.15
    ra = (ya + 1.0) / (an.rib_spacing * 1.15) + an.rib_phase * 0.7
    anterior = _periodic(ra, _ANTERIOR_RIB) * step(ax - 0.35, 0.05)
    return inside * (0.10 * posterior + 0.05 * anterior)


def _clavicles(x, y, an: PatientAnatomy):
    ax = np.abs(x)
    # S-shaped: from the sternoclavicular joint up and out to the acromion
    centre = an.clavicle_y + 0.07 - 0.30 * ax + 0.18 * ax**2 + 0.03 * np.sin(np.pi * ax / 0.66)
    along = step(ax - 0.07, 0.015) * step(0.68 - ax, 0.03)
    d = y - centre
    half = 0.036 - 0.012 * np.clip(ax / 0.66, 0.0, 1.0)
    shaft = _band(d / half, 1.0, 0.2)
    cortex = _band(np.abs(d) / half - 0.8, 0.2, 0.08)
    return along * (0.28 * shaft + 0.06 * cortex)


def _spine(x, y, an: PatientAnatomy):
    column = _band(x, 0.055, 0.008)
    period = 0.115
    f = (y + 1.0) / period
    frac = f - np.floor(f)
    endplates = _periodic(f, _ENDPLATE)
    pedicles = 0.0
    for s in (-1, 1):
        r = np.hypot((x - s * 0.038) / 0.014, (frac - 0.25) * period / 0.018)
        pedicles = pedicles + step(1.0 - r, 0.2)
    spinous = np.exp(-((x / 0.012) ** 2)) * np.exp(-(((frac - 0.7) / 0.12) ** 2))
    return column * (0.12 + 0.05 * endplates) + 0.05 * pedicles * column + 0.01 * spinous


def _heart(x, y, an: PatientAnatomy, state: StudyState, pose: Pose):
    cx, cy, hw, hh = heart_shape(an, state["cardiomegaly"].severity, pose.view, pose.inspiration)
    # narrower towards the great vessels, widest at the diaphragm
    taper = 0.72 + 0.28 * np.clip((y - (cy - hh)) / hh, 0.0, 1.0) ** 0.5
    r = np.sqrt(((x - cx) / (hw * taper)) ** 2 + ((y - cy) / hh) ** 2)
    # the upper contour fades into the hila and great vessels; the lateral borders stay sharp
    upper = np.clip((cy - 0.35 * hh - y) / (0.65 * hh), 0.0, 1.0)
    return step(1.0 - r, 0.025 + 0.10 * upper)


def _lung_side(x, y, an: PatientAnatomy, side: str, mask, u_lat, t, vessels, smooth, texture, heart,
               findings: dict, insp: float):
    """Markings and findings of one lung on (a crop of) the pixel grid.

    Returns ``(added attenuation, aerated fraction left after fluid / tissue)``, both shaped like ``x``.
    """
    s = side_sign(side)
    A = np.zeros_like(x)
    # lung thickness: thinner at the edges, so the lung is darkest centrally
    depth = np.sqrt(np.clip(np.sin(np.pi * np.clip(u_lat * 0.9 + 0.05, 0, 1)), 0, 1)) * (0.55 + 0.45 * np.sqrt(t))
    aerated = mask * (0.35 + 0.65 * depth)
    hx, hy = hilum(an, side)
    near_hilum = np.exp(-(((x - hx) / 0.35) ** 2 + ((y - hy) / 0.45) ** 2))
    # vessels radiate from the hilum: sample the texture in (angle, log radius) about it
    dx, dy = x - hx, y - hy
    radius = np.sqrt(dx * dx + dy * dy) + 0.02
    angle = np.arctan2(dy, s * dx)
    radial, _ = _sample_texture(texture, angle * 0.30 - 0.6 * s, np.log(radius) * 0.12 + 0.3)
    markings = (0.8 * radial * np.exp(-radius / 0.40) + 0.2 * vessels * (0.3 + near_hilum)) * 0.20
    fill = np.zeros_like(x)  # fraction of the aerated lung replaced by fluid / tissue

    ptx = findings[f"pneumothorax_{side}"]
    visible_lung = mask
    if ptx.present:
        f = pneumothorax_fraction(ptx.severity)
        weight = f * step(-0.05 - y, 0.20)  # apical, fading towards mid-lung
        xs = hx + (x - hx) / (1.0 - weight)
        ys = hy + (y - hy) / (1.0 - weight)
        collapsed, _, _ = lung_geometry(xs, ys, an, side, insp, edge=0.006)
        collapsed = collapsed * mask
        gap = np.clip(mask - collapsed, 0.0, 1.0)
        visible_lung = collapsed
        aerated = aerated + 0.22 * gap  # no lung tissue: darker than lung
        # the pleural line shows only where the gap is wide enough to separate it from the chest wall
        line = 4.0 * collapsed * (1.0 - collapsed) * mask * np.clip((weight - 0.03) / 0.05, 0.0, 1.0)
        A = A + 0.22 * line
    A = A + markings * visible_lung

    eff = findings[f"pleural_effusion_{side}"]
    if eff.present:
        cp_y = an.dome_y(side) + insp + an.cp_depth
        level = cp_y - effusion_height(eff.severity)
        # meniscus: the fluid climbs higher along the lateral chest wall
        surface = level + 0.15 * np.sqrt(u_lat)
        fluid = step(y - surface, 0.018) * mask
        fill = np.maximum(fill, fluid)
        A = A + 0.10 * fluid * np.clip((y - surface) / 0.12, 0, 1)  # fluid is thicker than the lung it replaces

    cons = findings[f"consolidation_{side}"]
    if cons.present:
        cx, cy, rx, ry = consolidation_ellipse(an, side, cons.location, cons.severity, insp)
        r = np.hypot((x - cx) / rx, (y - cy) / ry) * (1.0 + 0.18 * smooth)
        # ill-defined, fluffy edge; air bronchograms: the vessel network shows dark inside the patch
        patch = step(1.0 - r, 0.16) * (0.50 + 0.10 * cons.severity) * (1.0 - 0.35 * vessels * step(0.7 - r, 0.1))
        fill = np.maximum(fill, patch)

    les = findings[f"lung_lesion_{side}"]
    if les.present:
        cx, cy = lesion_center(an, side, les.location, insp)
        radius = 0.5 * (les.size_mm or 10.0) * mm_to_units(an)
        r = np.hypot(x - cx, y - cy) * (1.0 + 0.06 * smooth)
        fill = np.maximum(fill, 0.95 * step(radius - r, 0.006))

    atel = findings[f"atelectasis_{side}"]
    if atel.present:
        for x0, y0, x1, y1, thick in atelectasis_bands(an, side, atel.severity, insp):
            d = _polyline_distance(x, y, np.array([[x0, y0], [x1, y1]]))
            band = _band(d, thick / 2, 0.008) * 0.85 + 0.25 * np.exp(-((d / (thick * 1.5)) ** 2))
            fill = np.maximum(fill, np.clip(band, 0, 1))

    # the heart displaces lung: replace aerated lung inside the cardiac silhouette
    fill = np.maximum(fill, heart * 0.92)
    return A, aerated * (1.0 - fill)


def render_frontal(anatomy: PatientAnatomy, state: StudyState, pose: Pose, size: int,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Render one frontal radiograph.

    anatomy: the patient; state: the finding states of this study; pose: the
    acquisition (view PA/AP, rotation, shift, scale, exposure, inspiration);
    size: output side in pixels; rng: quantum noise (``None`` = noiseless).
    Returns float32 [size, size] in [0, 1] (0 = black).
    """
    an = anatomy
    xi, yi = pixel_grid(size)
    x, y = canonical_from_image(xi, yi, pose)
    insp = pose.inspiration
    texture = patient_texture(an.texture_seed)
    vessels, smooth = _sample_texture(texture, x, y)

    A = _body(x, y, an, pose)
    heart = _heart(x, y, an, state, pose)
    lungs = {}
    air_total = np.zeros_like(x)
    for side in ("right", "left"):
        mask, u_lat, t = lung_geometry(x, y, an, side, insp)
        lungs[side] = (mask, u_lat, t)
    mediastinum = _band(x - 0.01, an.mediastinum_half_width, 0.01) * step(y + 1.0, 0.02)
    A = A + 0.14 * mediastinum
    # aortic knob on the patient's left, above the heart
    knob = np.hypot((x - an.mediastinum_half_width - 0.01) / 0.06, (y + 0.30) / 0.06)
    A = A + 0.18 * step(1.0 - knob, 0.15)

    findings = state.findings
    for side in ("right", "left"):
        mask, u_lat, t = lungs[side]
        # work on the lung's bounding box only: everything below is zero outside the lung
        rows = np.flatnonzero(mask.max(axis=1) > 0)
        cols = np.flatnonzero(mask.max(axis=0) > 0)
        if rows.size == 0 or cols.size == 0:
            continue
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        added, air = _lung_side(x[box], y[box], an, side, mask[box], u_lat[box], t[box], vessels[box], smooth[box],
                                texture, heart[box], findings, insp)
        A[box] += added
        air_total[box] += air

    A = A - _LUNG_AIR * air_total
    A = A + 0.07 * heart

    edema = findings["edema"]
    if edema.present:
        g = edema.severity
        lungmask = lungs["right"][0] + lungs["left"][0]
        haze = 0.0
        for side in ("right", "left"):
            hx, hy = hilum(an, side)
            haze = haze + np.exp(-(((x - hx) / (0.20 + 0.06 * g)) ** 2 + ((y - hy - 0.05) / (0.26 + 0.06 * g)) ** 2))
        A = A + lungmask * np.clip(haze, 0, 1) * (0.07 + 0.07 * g) * (0.8 + 0.4 * vessels)

    # hila, trachea, spine, bones
    for side in ("right", "left"):
        hx, hy = hilum(an, side)
        A = A + 0.10 * np.exp(-(((x - hx) / 0.06) ** 2 + ((y - hy) / 0.10) ** 2))
    trachea = _band(x, 0.028, 0.006) * step(-0.32 - y, 0.02)
    A = A - 0.16 * trachea
    A = A + _spine(x, y, an) * (0.6 + 0.4 * step(-0.05 - y, 0.2))
    lung_total = lungs['right'][0] + lungs['left'][0]
    A = A + _ribs(x, y, an, insp) * (0.35 + 0.65 * lung_total) + _clavicles(x, y, an)
    if pose.view == "AP":  # scapulae project over the lungs on AP films
        for s in (-1, 1):
            d = np.abs(x - s * (0.62 + 0.25 * (y + 0.7))) - 0.02
            A = A + 0.07 * step(-d, 0.03) * step(y + 0.72, 0.03) * step(-0.15 - y, 0.04)
    # gastric air bubble under the left hemidiaphragm
    bubble = np.hypot((x - 0.33) / 0.11, (y - (an.dome_y_left + insp + 0.12)) / 0.055)
    A = A - 0.22 * step(1.0 - bubble, 0.15)

    devices = findings["support_devices"]
    if devices.present:
        for kind in [k for k in devices.location.split("+") if k]:
            for path in device_paths(an, kind, insp):
                d = _polyline_distance(x, y, path)
                if kind == "ett":
                    A = A + 0.25 * _band(d, 0.022, 0.004) + 0.35 * _band(d, 0.006, 0.003)
                else:
                    A = A + 0.50 * _band(d, 0.013, 0.003)
            if kind == "pacemaker":
                box = np.maximum(np.abs(x - 0.55) / 0.09, np.abs(y + 0.63) / 0.06)
                A = A + 1.4 * step(1.0 - box, 0.04)

    A = np.clip(A, 0.0, None) * pose.exposure
    image = 1.0 - np.exp(-1.1 * A)
    image = (image - 0.10) / 0.72
    # scatter / detector fog: air is dark grey, never pure black, so no edge row or column is an
    # all-black "border" that curation would crop (which would shift the image frame of the ground truth)
    image = _FOG + (1.0 - _FOG) * np.clip(image, 0.0, 1.0)
    if rng is not None:
        image = image + rng.normal(0.0, 0.012, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)
