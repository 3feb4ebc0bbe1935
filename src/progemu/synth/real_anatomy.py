"""A patient of the real-anatomy world: a shipped radiograph, randomly deformed, seen in the canonical frame.

One base image (:mod:`progemu.synth.real_assets`) yields many patients. Each patient gets a smooth
random deformation of its base: an affine part (zoom = crop, anisotropic scale, rotation, shear)
plus a smooth displacement field, and a horizontal shift that puts the midline between the lungs
at ``x = 0``. The result is the patient's *canonical* frame, the same frame as the phantom world
(:mod:`progemu.synth.anatomy`: ``x, y`` in ``[-1, 1]``, patient right at ``x < 0``), so study poses,
finding geometry (:mod:`progemu.synth.geometry`) and ground-truth boxes (:mod:`progemu.synth.truth`)
work unchanged. The :class:`~progemu.synth.anatomy.PatientAnatomy` fields (thorax width, apex,
hemidiaphragm domes, costophrenic depth, mediastinum, heart) are measured on the deformed lung mask.

Base coordinates ``(u, v)`` are the base image's own normalised frame (``[-1, 1]``, pixel centres at
``(i + 0.5) / 256 * 2 - 1``). :func:`base_coords` maps canonical points to them.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import ndimage

from .anatomy import PatientAnatomy
from .real_assets import ASSET_SIZE, anatomy_record, load_base

__all__ = ["RealAnatomy", "sample_real_anatomy", "base_coords", "canonical_mask", "fit_landmarks", "sample_base"]

_FIELD_PX = 17  # side of the coarse displacement grid (covers canonical [-1.2, 1.2])
_FIELD_EXTENT = 1.2


@dataclasses.dataclass
class RealAnatomy(PatientAnatomy):
    """A :class:`PatientAnatomy` measured on a deformed real radiograph.

    ``base_image`` / ``base_patient`` / ``base_projection``: the Hannover image id, its patient id and
    projection ("PA" | "AP"); ``warp_seed``: seed of the smooth displacement field; ``zoom``,
    ``aspect``, ``rotation_deg``, ``shear``, ``center_u``, ``center_v``: the affine part (canonical
    -> base: ``u = center_u + A @ (x, y)``); ``warp_amplitude``: displacement rms (canonical units);
    ``brightness``, ``contrast``: the patient's exposure of the base (attenuation gain and offset).
    """

    base_image: str = ""
    base_patient: str = ""
    base_projection: str = ""
    warp_seed: int = 0
    zoom: float = 1.0
    aspect: float = 1.0
    rotation_deg: float = 0.0
    shear: float = 0.0
    center_u: float = 0.0
    center_v: float = 0.0
    warp_amplitude: float = 0.0
    contrast: float = 1.0
    brightness: float = 0.0


@functools.lru_cache(maxsize=256)
def _field(seed: int, amplitude: float) -> np.ndarray:
    """float32 [2, 17, 17]: smooth displacement (du, dv) on a coarse grid over canonical [-1.2, 1.2]^2."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((2, 5, 5))
    field = np.stack([ndimage.zoom(c, _FIELD_PX / 5, order=3, mode="nearest") for c in coarse])
    field /= field.std() + 1e-8
    return (field * amplitude).astype(np.float32)


def _affine(an: RealAnatomy) -> np.ndarray:
    t = math.radians(an.rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    scale = np.diag([1.0 / (an.zoom * an.aspect), an.aspect / an.zoom])
    shear = np.array([[1.0, an.shear], [0.0, 1.0]])
    return rot @ shear @ scale


def base_coords(x: np.ndarray, y: np.ndarray, an: RealAnatomy) -> tuple[np.ndarray, np.ndarray]:
    """Canonical points -> base-image coordinates ``(u, v)`` (same shapes, float32)."""
    a = _affine(an)
    u = an.center_u + a[0, 0] * x + a[0, 1] * y
    v = an.center_v + a[1, 0] * x + a[1, 1] * y
    if an.warp_amplitude > 0:
        field = _field(an.warp_seed, round(an.warp_amplitude, 6))
        scale = (_FIELD_PX - 1) / (2 * _FIELD_EXTENT)
        rows = ((np.asarray(y) + _FIELD_EXTENT) * scale).ravel()
        cols = ((np.asarray(x) + _FIELD_EXTENT) * scale).ravel()
        du = ndimage.map_coordinates(field[0], [rows, cols], order=1, mode="nearest").reshape(np.shape(x))
        dv = ndimage.map_coordinates(field[1], [rows, cols], order=1, mode="nearest").reshape(np.shape(x))
        u, v = u + du, v + dv
    return np.asarray(u, np.float32), np.asarray(v, np.float32)


def sample_base(array: np.ndarray, u: np.ndarray, v: np.ndarray, order: int = 1, mode: str = "mirror") -> np.ndarray:
    """Sample a base-frame array [256, 256] at base coordinates (``mode`` outside: "mirror" | "constant" 0)."""
    n = array.shape[0]
    rows = ((v + 1.0) * 0.5 * n - 0.5).ravel()
    cols = ((u + 1.0) * 0.5 * n - 0.5).ravel()
    out = ndimage.map_coordinates(array, [rows, cols], order=order, mode=mode)
    return out.reshape(np.shape(u)).astype(np.float32)


def canonical_mask(an: RealAnatomy, size: int = ASSET_SIZE) -> np.ndarray:
    """The patient's lung mask (float32 [size, size], soft 0..1) on the canonical pixel grid."""
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    x, y = np.meshgrid(c, c)
    u, v = base_coords(x, y, an)
    return sample_base(load_base(an.base_image)[1], u, v, mode="constant")


def _lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a binary two-lung mask at its middle gap into (image-left = right lung, image-right = left lung)."""
    cols = mask.sum(axis=0)
    n = mask.shape[1]
    lo, hi = n // 4, 3 * n // 4
    split = lo + int(np.argmin(ndimage.uniform_filter1d(cols[lo:hi].astype(np.float32), 5)))
    right, left = mask.copy(), mask.copy()
    right[:, split:] = False
    left[:, :split] = False
    return right, left


def fit_landmarks(mask: np.ndarray) -> dict:
    """Landmarks (canonical units) of a binary lung mask [N, N] on the canonical grid.

    Returns ``{midline, thorax_half_width, apex_y, dome_y_right, dome_y_left, cp_depth,
    mediastinum_half_width}``; ``midline`` is the x of the point halfway between the lungs'
    lateral edges. Raises ``ValueError`` when either lung is missing.
    """
    n = mask.shape[0]
    coord = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    right, left = _lungs(mask > 0.5)
    out = {}
    edges = {}
    for name, lung in (("right", right), ("left", left)):
        cols = np.flatnonzero(lung.any(axis=0))
        rows = np.flatnonzero(lung.any(axis=1))
        if cols.size < n // 16 or rows.size < n // 8:
            raise ValueError(f"the {name} lung of the mask is missing or tiny")
        lowest = np.array([np.flatnonzero(lung[:, c]).max() for c in cols])
        width = cols.size
        # dome: the highest point of the lower border over the medial-central half of the lung
        central = slice(width // 4, 3 * width // 4)
        edges[name] = dict(x0=coord[cols[0]], x1=coord[cols[-1]], apex=coord[rows[0]],
                           dome=coord[int(lowest[central].min())], cp=coord[int(lowest.max())])
    midline = 0.5 * (edges["right"]["x0"] + edges["left"]["x1"])
    half = 0.5 * (edges["left"]["x1"] - edges["right"]["x0"])
    mid_rows = slice(int(0.35 * n), int(0.55 * n))
    gap = []
    for row in range(n)[mid_rows]:
        r = np.flatnonzero(right[row])
        l_ = np.flatnonzero(left[row])
        if r.size and l_.size:
            gap.append(coord[l_[0]] - coord[r[-1]])
    out.update(
        midline=float(midline), thorax_half_width=float(half),
        apex_y=float(0.5 * (edges["right"]["apex"] + edges["left"]["apex"])),
        dome_y_right=float(edges["right"]["dome"]), dome_y_left=float(edges["left"]["dome"]),
        cp_depth=float(np.clip(0.5 * (edges["right"]["cp"] - edges["right"]["dome"] + edges["left"]["cp"]
                                      - edges["left"]["dome"]), 0.06, 0.25)),
        mediastinum_half_width=float(np.clip(0.5 * np.median(gap) if gap else 0.1, 0.05, 0.2)),
    )
    return out


def _heart_border(image: np.ndarray, an: PatientAnatomy) -> float:
    """x (canonical) of the left heart border on the canonical image [N, N].

    Rows just above the left dome; the border is where the smoothed brightness profile first falls
    halfway from the heart's level (next to the midline) to the lung's (mid left lung). (The lung
    masks include most of the heart shadow, so they cannot give the border.)
    """
    n = image.shape[0]
    coord = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    rows = (coord > an.dome_y_left - 0.28) & (coord < an.dome_y_left - 0.06)
    profile = ndimage.gaussian_filter1d(image[rows].mean(axis=0), 2.0) if rows.any() else None
    tw = an.thorax_half_width
    heart = (coord > 0.0) & (coord < 0.12)
    lung = (coord > 0.55 * tw) & (coord < 0.75 * tw)
    if profile is None or not heart.any() or not lung.any():
        return 0.45 * tw
    high, low = np.median(profile[heart]), np.median(profile[lung])
    search = np.flatnonzero((coord > 0.12) & (coord < 0.75 * tw))
    below = search[profile[search] < 0.5 * (high + low)]
    return float(coord[below[0]]) if high > low and below.size else 0.45 * tw


def sample_real_anatomy(rng: np.random.Generator, base_image: str) -> RealAnatomy:
    """Deform base image ``base_image`` into a new patient (draws from ``rng``; deterministic).

    The thorax fields start as placeholders and are measured on the deformed mask
    (:func:`_measure`); rib, clavicle and soft-tissue fields only serve the (phantom) lateral view.
    """
    rec = anatomy_record(base_image)
    base_marks = fit_landmarks(load_base(base_image)[1])
    sex = "F" if rng.random() < 0.5 else "M"
    an = RealAnatomy(
        sex=sex, age=int(rng.integers(25, 91)), thorax_half_width=0.75, apex_y=-0.76, dome_y_right=0.4,
        dome_y_left=0.44, cp_depth=0.16, mediastinum_half_width=0.1, heart_ctr=0.44, heart_center_x=0.11,
        heart_center_y=0.23, body_half_width=0.95, soft_tissue=float(rng.uniform(0.85, 1.2)),
        rib_spacing=float(rng.uniform(0.150, 0.170)), rib_phase=float(rng.uniform(0.0, 1.0)),
        clavicle_y=-0.7, texture_seed=int(rng.integers(0, 2**31 - 1)),
        base_image=base_image, base_patient=rec["patient_id"], base_projection=rec["projection"],
        warp_seed=int(rng.integers(0, 2**31 - 1)), zoom=1.0,
        aspect=float(rng.uniform(0.96, 1.04)), rotation_deg=float(rng.uniform(-3.0, 3.0)),
        shear=float(rng.uniform(-0.03, 0.03)), center_u=float(base_marks["midline"]),
        center_v=0.0, warp_amplitude=float(rng.uniform(0.012, 0.025)),
        contrast=float(rng.uniform(0.9, 1.1)), brightness=float(rng.uniform(-0.08, 0.08)),
    )
    # crop / zoom: zoom out only as far as needed for the thorax to fill at most 90 % of the width
    # (room for the chest-wall control strip of the measurements); the base keeps its vertical framing
    an.zoom = float(min(1.0, 0.9 / base_marks["thorax_half_width"]) * rng.uniform(0.96, 1.02))
    an.center_v = float(rng.uniform(-0.03, 0.03))
    return _measure(an)


def _measure(an: RealAnatomy) -> RealAnatomy:
    """Re-centre the deformed patient on its midline and fill in the thorax and heart fields (in place)."""
    marks = fit_landmarks(canonical_mask(an) > 0.5)
    an.center_u += float(_affine(an)[0, 0] * marks["midline"])  # the deformation moved the midline slightly
    mask = canonical_mask(an)
    marks = fit_landmarks(mask > 0.5)
    for key in ("thorax_half_width", "apex_y", "dome_y_right", "dome_y_left", "cp_depth", "mediastinum_half_width"):
        setattr(an, key, marks[key])
    an.body_half_width = min(1.0, an.thorax_half_width + 0.2)
    an.clavicle_y = an.apex_y + 0.06
    c = ((np.arange(ASSET_SIZE) + 0.5) / ASSET_SIZE * 2.0 - 1.0).astype(np.float32)
    u, v = base_coords(*np.meshgrid(c, c), an)
    border = _heart_border(sample_base(load_base(an.base_image)[0], u, v), an)
    an.heart_center_x = float(np.clip(0.6 * an.mediastinum_half_width + 0.02, 0.04, 0.14))
    an.heart_ctr = float(np.clip((border - an.heart_center_x) / an.thorax_half_width, 0.36, 0.52))
    an.heart_center_y = float(0.5 * (an.dome_y_right + an.dome_y_left) - 0.2)
    return an
