"""Render a frontal study of a real-anatomy patient: its deformed base radiograph seen through the pose, with findings.

Per output pixel: canonical coordinates from the pose (as the phantom renderer), then the finding
warps (inspiration, cardiomegaly, atelectatic volume loss; :func:`~progemu.synth.real_findings.finding_warps`),
then the patient's deformation into the base image (:func:`~progemu.synth.real_anatomy.base_coords`),
one bilinear read of the base image and its lung mask. Brightness ``I`` becomes attenuation
``A = -ln(1 - 0.98 I)``; the patient's contrast / brightness change it and the study's exposure
scales it (``A' = (c A + b) e``); findings add to it inside the body (a pneumothorax replaces the
lung markings in the gap by a smoothed, 35 % less attenuating copy and draws the pleural line), and
``I = (1 - exp(-A)) / 0.98`` with detector fog and quantum noise.

``render_real_frontal(anatomy, state, pose, size, rng) -> float32 [size, size] in [0, 1]``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import Pose, canonical_from_image
from .findings import StudyState
from .geometry import pneumothorax_fraction
from .real_anatomy import RealAnatomy, base_coords, sample_base
from .real_assets import load_base
from .real_findings import device_attenuation, finding_warps, heart_attenuation, opacity, pneumothorax_collapse
from .render import _FOG, _sample_texture, patient_texture, pixel_grid

__all__ = ["render_real_frontal", "to_attenuation", "to_brightness"]

_GAIN = 0.98  # keeps A finite for white pixels


def to_attenuation(image: np.ndarray) -> np.ndarray:
    """Brightness [0, 1] -> attenuation (0 = air, ~3.9 = white)."""
    return -np.log1p(-_GAIN * np.clip(image, 0.0, 1.0))


def to_brightness(attenuation: np.ndarray) -> np.ndarray:
    return -np.expm1(-np.clip(attenuation, 0.0, None)) / _GAIN


def _pneumothorax(A, xs, ys, an: RealAnatomy, state: StudyState, lung, base_mask, size: int):
    """Apply both sides' pneumothoraces to attenuation ``A`` (float32 [H, W]; returns a new array).

    ``xs, ys``: canonical source coordinates of the pixels [H, W]; ``lung``: the lung mask as seen
    [H, W]; ``base_mask``: the base image's mask [256, 256]. The collapsed lung is the mask read at
    coordinates pulled towards the hilum; the gap between it and the chest wall loses its markings.
    """
    smooth_a = None
    for side in ("right", "left"):
        ptx = state[f"pneumothorax_{side}"]
        if not ptx.present:
            continue
        cx, cy, weight = pneumothorax_collapse(xs, ys, an, side, pneumothorax_fraction(ptx.severity))
        collapsed = sample_base(base_mask, *base_coords(cx, cy, an), mode="constant") * lung
        gap = np.clip(lung - collapsed, 0.0, 1.0) * (weight > 0.005)
        gap = ndimage.gaussian_filter(gap, size / 256.0)  # the visceral pleura is thin but not a cut
        if smooth_a is None:
            smooth_a = ndimage.gaussian_filter(A, size / 48.0)
        # no lung markings and no lung tissue in the gap: the smoothed image, 35 % less attenuating
        A = A * (1.0 - gap) + gap * 0.65 * smooth_a
        line = 4.0 * collapsed * (1.0 - collapsed) * np.clip((weight - 0.03) / 0.05, 0.0, 1.0)
        A = A + 0.25 * line
    return A


def render_real_frontal(anatomy: RealAnatomy, state: StudyState, pose: Pose, size: int,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Render one frontal study.

    anatomy: the patient (:func:`~progemu.synth.real_anatomy.sample_real_anatomy`); state: the
    inserted findings; pose: the acquisition; size: output side in px; rng: quantum noise
    (``None`` = noiseless). Returns float32 [size, size] in [0, 1].
    """
    an = anatomy
    base_image, base_mask = load_base(an.base_image)
    if size < base_image.shape[0]:  # anti-alias before a bilinear read at a coarser grid
        base_image = ndimage.gaussian_filter(base_image, 0.4 * base_image.shape[0] / size)
    xi, yi = pixel_grid(size)
    x, y = canonical_from_image(xi, yi, pose)
    insp = pose.inspiration
    xs, ys = finding_warps(x, y, an, state, insp)
    u, v = base_coords(xs, ys, an)
    image = sample_base(base_image, u, v)
    lung = sample_base(base_mask, u, v, mode="constant")
    A = (to_attenuation(image) * an.contrast + an.brightness) * pose.exposure
    A = _pneumothorax(A, xs, ys, an, state, lung, base_mask, size)
    vessels, smooth = _sample_texture(patient_texture(an.texture_seed), x, y)
    # findings are inside the patient: none on the detector's unexposed (black) margins
    body = np.clip((image - 0.06) / 0.1, 0.0, 1.0)
    A = A + body * (opacity(x, y, an, state, lung, insp, vessels, smooth) + heart_attenuation(x, y, an, state, pose))
    A = A + device_attenuation(x, y, an, state, insp)
    out = _FOG + (1.0 - _FOG) * np.clip(to_brightness(A), 0.0, 1.0)
    if rng is not None:
        out = out + rng.normal(0.0, 0.01, out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
