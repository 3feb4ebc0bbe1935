"""Ground truth of the synthetic world: load it, locate findings, measure them in an image.

``DIR/ground_truth.jsonl`` has one JSON object per study (for evaluation only;
curation never reads it), with these keys:

- ``dataset``: "mimic" | "chexpertplus"; ``split`` (MIMIC train/validate/test,
  CheXpert Plus train/valid); ``subject_id`` and ``study_id`` (for CheXpert Plus:
  ``deid_patient_id`` and ``str(patient_report_date_order)``);
- MIMIC ids: ``dicom_id_frontal``, ``dicom_id_lateral``, ``study_datetime``
  (ISO), ``StudyDate`` (YYYYMMDD), ``StudyTime`` (HHMMSS.fff, no leading zeros);
  CheXpert Plus ids: ``deid_patient_id``, ``patient_report_date_order``,
  ``path_to_image_frontal`` / ``path_to_image_lateral`` (the CSV's ``path_to_image``);
- ``frontal_image``, ``lateral_image``, ``report_path``: paths relative to DIR
  (``report_path`` null for CheXpert Plus and for a study without a report);
- ``study_order`` (1-based chronological), ``interval_days`` (from the previous
  study, null for the first), ``view`` PA/AP, ``pose`` / ``lateral_pose``
  (:class:`~progemu.synth.anatomy.Pose` fields), ``image_size`` (px),
  ``anatomy`` (:class:`~progemu.synth.anatomy.PatientAnatomy` fields; on the real-anatomy world
  :class:`~progemu.synth.real_anatomy.RealAnatomy` fields, which name the ``base_image``);
- real-anatomy world only: ``anatomy_id`` (the base radiograph's image id), ``anatomy_group``
  (``hannover:<patient id>``: patients of one group share a split) and ``base_findings``
  ("unknown, stable": whatever the base radiograph shows is present, unchanged, in every study of
  the patient; ``findings`` are the inserted ones);
- ``findings``: for every key of :data:`~progemu.synth.findings.FINDING_KEYS`,
  ``{present, severity 0-3, side, location, size_mm}``;
- ``labels``: the 14 CheXpert labels of the report text (1.0 / 0.0 / -1.0 / null);
  ``report_layout``; ``faults``: subset of
  :data:`~progemu.synth.writer.FAULT_KINDS`.

:func:`load_ground_truth` keys studies by ``(subject_id, study_id)`` for MIMIC and
``(deid_patient_id, str(patient_report_date_order))`` for CheXpert Plus.

:func:`finding_regions` gives, for every finding key, the box ``(x0, y0, x1, y1)``
in normalised [0, 1] coordinates of the study's FRONTAL image (x to the right,
y down; the patient's left is on the image right) where a radiologist would look,
after that study's pose. Boxes do not depend on severity, so the same box serves
a prior, a follow-up and a counterfactual in the follow-up's frame.
:func:`measure_finding` measures the rendered finding in such an image: the mean
brightness in the finding's region (lung pixels only for lung findings) minus that
of a control strip of chest wall that no finding touches; for a pneumothorax
the sign is flipped (it is a lucency); for support devices it is 10 x the mean
white top-hat (thin bright lines) in the region. The value rises with severity.
On the real-anatomy world the image is first normalised for exposure (its attenuation scaled so
that the control region's median is 1; that region, the liver under the right hemidiaphragm, gives
the reference level as its median); the cardiomegaly box ends where the widest heart border goes
(1.42 normal half-widths, :data:`~progemu.synth.real_findings.HEART_WIDENING`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .anatomy import PatientAnatomy, Pose, canonical_from_image, image_from_canonical, side_sign
from .findings import DEVICE_KINDS, FINDING_KEYS, Finding, StudyState, key_kind, key_side
from .real_anatomy import RealAnatomy
from .geometry import (
    atelectasis_bands,
    consolidation_ellipse,
    costophrenic_y,
    device_paths,
    heart_shape,
    hilum,
    lesion_center,
    lung_apex_x,
    lung_geometry,
    mm_to_units,
)

__all__ = ["StudyTruth", "load_ground_truth", "finding_regions", "measure_finding", "canonical_boxes"]


@dataclasses.dataclass
class StudyTruth:
    dataset: str
    subject_id: str
    study_id: str
    split: str
    study_order: int
    interval_days: float | None
    view: str
    pose: Pose
    lateral_pose: Pose
    image_size: int
    anatomy: PatientAnatomy
    state: StudyState
    labels: dict
    faults: list
    frontal_image: Path
    lateral_image: Path
    report_path: Path | None
    report_layout: str
    study_datetime: str | None = None
    dicom_id_frontal: str | None = None
    dicom_id_lateral: str | None = None
    deid_patient_id: str | None = None
    patient_report_date_order: int | None = None
    path_to_image_frontal: str | None = None
    raw: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.subject_id, self.study_id

    @classmethod
    def from_record(cls, rec: dict, root: Path) -> "StudyTruth":
        return cls(
            dataset=rec["dataset"], subject_id=str(rec["subject_id"]), study_id=str(rec["study_id"]), split=rec["split"],
            study_order=int(rec["study_order"]), interval_days=rec["interval_days"], view=rec["view"],
            pose=Pose(**rec["pose"]), lateral_pose=Pose(**rec["lateral_pose"]), image_size=int(rec["image_size"]),
            anatomy=_anatomy(rec["anatomy"]), state=StudyState.from_json(rec["findings"]),
            labels=rec["labels"], faults=list(rec["faults"]), frontal_image=root / rec["frontal_image"],
            lateral_image=root / rec["lateral_image"],
            report_path=root / rec["report_path"] if rec.get("report_path") else None,
            report_layout=rec["report_layout"], study_datetime=rec.get("study_datetime"),
            dicom_id_frontal=rec.get("dicom_id_frontal"), dicom_id_lateral=rec.get("dicom_id_lateral"),
            deid_patient_id=rec.get("deid_patient_id"), patient_report_date_order=rec.get("patient_report_date_order"),
            path_to_image_frontal=rec.get("path_to_image_frontal"), raw=rec,
        )


def _anatomy(data: dict) -> PatientAnatomy:
    """A phantom anatomy, or a real-anatomy one (it names its ``base_image``)."""
    if "base_image" in data:
        return RealAnatomy(**data)
    return PatientAnatomy(**data)


def load_ground_truth(world_dir: str | Path) -> dict[tuple[str, str], StudyTruth]:
    """Read ``world_dir/ground_truth.jsonl`` into ``{(subject_id, study_id): StudyTruth}``."""
    root = Path(world_dir)
    path = root / "ground_truth.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ground truth here; create a world with `progemu synth --out {root}`")
    out: dict[tuple[str, str], StudyTruth] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            truth = StudyTruth.from_record(json.loads(line), root)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: line {number} is not a valid study record ({error}); re-run `progemu synth`") from None
        out[truth.key] = truth
    return out


def _finding_for(key: str, truth: StudyTruth, reference: StudyTruth | None) -> Finding:
    """The finding's location from whichever study has it present (defaults otherwise)."""
    for source in (truth, reference):
        if source is not None and source.state[key].present:
            return source.state[key]
    defaults = {"consolidation": "lower", "lung_lesion": "middle", "support_devices": "+".join(DEVICE_KINDS)}
    return Finding(side=key_side(key), location=defaults.get(key_kind(key), ""), size_mm=None)


def canonical_boxes(truth: StudyTruth, reference: StudyTruth | None = None) -> dict[str, tuple[float, float, float, float]]:
    """Per finding key, the region in canonical anatomy coordinates ``(x0, y0, x1, y1)`` (x0 < x1, y0 < y1)."""
    an, insp = truth.anatomy, truth.pose.inspiration
    tw, xm = an.thorax_half_width, an.mediastinum_half_width
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for key in FINDING_KEYS:
        kind, side = key_kind(key), key_side(key)
        s = side_sign(side) if side else 1
        f = _finding_for(key, truth, reference)
        if kind == "pleural_effusion":
            cp = costophrenic_y(an, side, insp)
            xs = sorted([s * (tw + 0.01), s * (xm + 0.40 * (tw - xm))])
            box = (xs[0], cp - 0.36, xs[1], cp + 0.01)
        elif kind == "cardiomegaly" and isinstance(an, RealAnatomy):  # where the widened border goes
            cx, cy, hw0, _ = heart_shape(an, 0, "PA", insp)
            box = (cx + 0.92 * hw0, cy - 0.30, cx + 1.42 * hw0 + 0.04, cy - 0.02)
        elif kind == "cardiomegaly":
            cx, cy, hw0, hh = heart_shape(an, 0, truth.view, insp)
            _, _, hw3, _ = heart_shape(an, 3, truth.view, insp)
            box = (cx + 0.92 * hw0, cy - 0.30, cx + hw3 + 0.12, cy - 0.02)
        elif kind == "edema":
            hx, hy = hilum(an, "left")
            box = (-hx - 0.32, hy - 0.32, hx + 0.32, hy + 0.30)
        elif kind == "consolidation":
            cx, cy, rx, ry = consolidation_ellipse(an, side, f.location or "lower", 3, insp)
            box = (cx - 0.8 * rx, cy - 0.8 * ry, cx + 0.8 * rx, cy + 0.8 * ry)
        elif kind == "pneumothorax":
            xa = lung_apex_x(an)
            xs = sorted([s * (tw + 0.01), s * (xa - 0.12)])
            box = (xs[0], an.apex_y - 0.02, xs[1], an.apex_y + 0.40)
        elif kind == "atelectasis":
            pts = np.array([(b[0], b[1]) for b in atelectasis_bands(an, side, 3, insp)] +
                           [(b[2], b[3]) for b in atelectasis_bands(an, side, 3, insp)])
            box = (pts[:, 0].min() - 0.02, pts[:, 1].min() - 0.06, pts[:, 0].max() + 0.02, pts[:, 1].max() + 0.06)
        elif kind == "lung_lesion":
            cx, cy = lesion_center(an, side, f.location or "middle", insp)
            r = 0.5 * max(f.size_mm or 0.0, 20.0) * mm_to_units(an) + 0.02
            box = (cx - r, cy - r, cx + r, cy + r)
        else:  # support devices
            kinds = [k for k in (f.location or "+".join(DEVICE_KINDS)).split("+") if k]
            pts = np.concatenate([p for k in kinds for p in device_paths(an, k, insp)])
            pts = pts[(pts[:, 1] > -1.0)]
            box = (pts[:, 0].min() - 0.05, max(pts[:, 1].min(), -0.95), pts[:, 0].max() + 0.05, pts[:, 1].max() + 0.05)
        boxes[key] = tuple(float(v) for v in box)
    return boxes


def finding_regions(truth: StudyTruth, reference: StudyTruth | None = None) -> dict[str, tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, x1, y1)`` in [0, 1] of the frontal image of ``truth`` for every finding key.

    ``reference`` (e.g. the prior study of a pair) supplies the location of a
    finding that is absent in ``truth`` (a resolved consolidation, a lesion);
    the pose is always ``truth``'s.
    """
    out = {}
    for key, (x0, y0, x1, y1) in canonical_boxes(truth, reference).items():
        xs, ys = image_from_canonical(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]), truth.pose)
        box = ((xs.min() + 1) / 2, (ys.min() + 1) / 2, (xs.max() + 1) / 2, (ys.max() + 1) / 2)
        out[key] = tuple(float(np.clip(v, 0.0, 1.0)) for v in box)
    return out


def _canonical_grid(shape: tuple[int, int], pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    xi = (np.arange(w) + 0.5) / w * 2 - 1
    yi = (np.arange(h) + 0.5) / h * 2 - 1
    return canonical_from_image(*np.meshgrid(xi, yi), pose)


_CONTROL_ATTENUATION = 1.0  # the chest wall's attenuation after exposure normalisation (real anatomy)


def _real_control(x: np.ndarray, y: np.ndarray, an: PatientAnatomy, insp: float) -> np.ndarray:
    """Real anatomy's control region (bool, like ``x``): the liver under the right hemidiaphragm.

    Homogeneous soft tissue that no inserted finding touches, well inside the body (a chest-wall
    strip can cross the plate edge of a real radiograph and jump between poses).
    """
    tw, dome = an.thorax_half_width, an.dome_y_right + insp
    return (x >= -0.7 * tw) & (x <= -0.25 * tw) & (y >= dome + 0.12) & (y <= dome + 0.30)


def _exposure_normalised(image: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Undo a study's exposure (real anatomy): scale attenuation so that the control strip's mean is 1.

    The real-anatomy renderer scales attenuation ``-ln(1 - 0.98 I)`` by the study's exposure; the
    ratio to the chest wall removes that, so stable anatomy measures the same in every study.
    """
    from .render import _FOG
    from .real_render import to_attenuation, to_brightness

    attenuation = to_attenuation((image - _FOG) / (1.0 - _FOG))
    level = float(np.median(attenuation[control]))
    return to_brightness(attenuation * (_CONTROL_ATTENUATION / max(level, 1e-3)))


def measure_finding(image: np.ndarray, truth: StudyTruth, key: str, reference: StudyTruth | None = None) -> float:
    """Direct measurement of finding ``key`` in ``image`` (float [H, W] in [0, 1], in ``truth``'s frame).

    Returns a brightness difference (image units, roughly -1..1) that rises with
    severity and is ~0 change between two renders that both lack the finding.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"measure_finding expects a [H, W] image, got shape {image.shape}")
    if key not in FINDING_KEYS:
        raise ValueError(f"unknown finding key {key!r}; known: {FINDING_KEYS}")
    an, insp = truth.anatomy, truth.pose.inspiration
    x, y = _canonical_grid(image.shape, truth.pose)
    x0, y0, x1, y1 = canonical_boxes(truth, reference)[key]
    region = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    kind, side = key_kind(key), key_side(key)
    if kind in ("consolidation", "pneumothorax", "atelectasis", "lung_lesion", "pleural_effusion"):
        lung, _, _ = lung_geometry(x, y, an, side, insp)
        region &= lung > 0.5
    elif kind == "edema":
        lung = lung_geometry(x, y, an, "left", insp)[0] + lung_geometry(x, y, an, "right", insp)[0]
        region &= lung > 0.5
    tw = an.thorax_half_width
    if isinstance(an, RealAnatomy):
        control = _real_control(x, y, an, insp)
    else:
        control = (np.abs(x) >= tw + 0.02) & (np.abs(x) <= tw + 0.07) & (y >= -0.35) & (y <= -0.05)
    if not region.any() or not control.any():
        raise ValueError(f"region of {key} or the control strip falls outside the {image.shape} image of "
                         f"{truth.subject_id}/{truth.study_id}")
    if kind == "support_devices":
        # thin bright lines: white top-hat (image minus its grey opening) keeps structures narrower than ~3 % of
        # the image and removes the broad anatomy (spine, heart, clavicles)
        from scipy import ndimage

        width = max(3, int(round(0.03 * image.shape[1])))
        lines = ndimage.white_tophat(image, size=(width, width))
        return float(lines[region].mean()) * 10.0
    if isinstance(an, RealAnatomy):  # median: robust to a plate edge or a tube crossing the strip
        image = _exposure_normalised(image, control)
        reference_level = float(np.median(image[control]))
    else:
        reference_level = float(image[control].mean())
    values = image[region]
    level = float(values.mean()) - reference_level
    return -level if kind == "pneumothorax" else level
