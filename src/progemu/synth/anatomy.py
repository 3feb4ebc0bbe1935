"""Per-patient anatomy and per-study pose of the synthetic chest radiograph world.

Coordinates ("canonical" frame): ``x`` horizontal, ``y`` vertical, both in
``[-1, 1]`` over the image, ``(-1, -1)`` = top-left pixel corner. Radiological
convention: the **patient's right is on the image left** (``x < 0``), so
"right lung" lives at ``x < 0`` and "left lung" at ``x > 0``. ``side_sign('right')
== -1``.

A study image is the canonical anatomy seen through a :class:`Pose`
(rotation, scale, shift: the small positioning differences between studies that
make registration matter). :func:`canonical_from_image` maps image coordinates to
canonical ones (used by the renderer to sample analytic shapes), and
:func:`image_from_canonical` maps the other way (used by
:func:`progemu.synth.truth.finding_regions` to place boxes).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "PatientAnatomy",
    "Pose",
    "sample_anatomy",
    "sample_pose",
    "side_sign",
    "canonical_from_image",
    "image_from_canonical",
]


def side_sign(side: str) -> int:
    """-1 for the patient's right (image left), +1 for the patient's left."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return -1 if side == "right" else 1


@dataclasses.dataclass
class PatientAnatomy:
    """Fixed body of one patient, in canonical units (image half-width = 1).

    Lungs: apex at ``apex_y``; the lateral wall of each lung reaches
    ``thorax_half_width`` at its widest; the hemidiaphragm dome tops are at
    ``dome_y_right`` / ``dome_y_left`` and the costophrenic angles ``cp_depth``
    below them. ``heart_ctr`` is the normal cardiothoracic ratio of this patient
    (heart width / thorax width, dimensionless, 0.38-0.48).
    """

    sex: str  # "M" | "F"
    age: int  # years
    thorax_half_width: float
    apex_y: float
    dome_y_right: float
    dome_y_left: float
    cp_depth: float
    mediastinum_half_width: float
    heart_ctr: float
    heart_center_x: float
    heart_center_y: float
    body_half_width: float
    soft_tissue: float  # soft-tissue thickness factor (~0.8-1.2)
    rib_spacing: float
    rib_phase: float
    clavicle_y: float
    texture_seed: int

    def heart_half_width(self, ctr: float | None = None) -> float:
        """Half of the cardiac width (canonical units) for a cardiothoracic ratio ``ctr``."""
        return (self.heart_ctr if ctr is None else ctr) * self.thorax_half_width

    def dome_y(self, side: str) -> float:
        return self.dome_y_right if side == "right" else self.dome_y_left


@dataclasses.dataclass
class Pose:
    """Acquisition of one frontal image.

    ``rotation_deg`` (counter-clockwise, degrees), ``scale`` (dimensionless, ~1),
    ``shift_x``/``shift_y`` (canonical units), ``view`` "PA" | "AP",
    ``exposure`` (multiplies attenuation, ~1), ``inspiration`` (canonical units the
    domes move down; negative = poor inspiration).
    """

    rotation_deg: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    view: str = "PA"
    exposure: float = 1.0
    inspiration: float = 0.0


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    sex = "F" if rng.random() < 0.5 else "M"
    thorax = float(rng.uniform(0.70, 0.80))
    dome_r = float(rng.uniform(0.36, 0.46))
    return PatientAnatomy(
        sex=sex,
        age=int(rng.integers(25, 91)),
        thorax_half_width=thorax,
        apex_y=float(rng.uniform(-0.80, -0.72)),
        dome_y_right=dome_r,
        dome_y_left=dome_r + float(rng.uniform(0.02, 0.06)),
        cp_depth=float(rng.uniform(0.13, 0.19)),
        mediastinum_half_width=float(rng.uniform(0.085, 0.11)),
        heart_ctr=float(rng.uniform(0.40, 0.47)),
        heart_center_x=float(rng.uniform(0.10, 0.13)),
        heart_center_y=float(rng.uniform(0.20, 0.26)),
        body_half_width=float(rng.uniform(0.90, 1.02)) * (0.97 if sex == "F" else 1.0),
        soft_tissue=float(rng.uniform(0.85, 1.2)),
        rib_spacing=float(rng.uniform(0.150, 0.170)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        clavicle_y=float(rng.uniform(-0.74, -0.66)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_pose(rng: np.random.Generator, view: str) -> Pose:
    """A few degrees of rotation, a few percent of scale and shift (registration matters)."""
    return Pose(
        rotation_deg=float(rng.uniform(-4.0, 4.0)),
        scale=float(rng.uniform(0.94, 1.05)),
        shift_x=float(rng.uniform(-0.05, 0.05)),
        shift_y=float(rng.uniform(-0.05, 0.05)),
        view=view,
        exposure=float(rng.uniform(0.88, 1.12)),
        inspiration=float(rng.uniform(-0.04, 0.03)) - (0.03 if view == "AP" else 0.0),
    )


def canonical_from_image(xi: np.ndarray, yi: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Inverse pose: image coords (canonical units) -> anatomy coords.

    The forward map is ``p_img = scale * R(theta) @ p_can + shift``.
    """
    theta = math.radians(pose.rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    dx = (xi - pose.shift_x) / pose.scale
    dy = (yi - pose.shift_y) / pose.scale
    # R(-theta) applied to (dx, dy)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def image_from_canonical(x: np.ndarray | float, y: np.ndarray | float, pose: Pose):
    theta = math.radians(pose.rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    xi = pose.scale * (cos * x - sin * y) + pose.shift_x
    yi = pose.scale * (sin * x + cos * y) + pose.shift_y
    return xi, yi
