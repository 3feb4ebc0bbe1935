"""Reader for CheXpert Plus (Stanford AIMI): the report CSV with PNG or DICOM images.

Expected layout (``shared/reference/formats.md`` §2)::

    ROOT/df_chexpert_plus_240401.csv            (any ``df_chexpert_plus*.csv``)
    ROOT/PNG/train/patient00001/study1/view1_frontal.png     (or the CSV path under ROOT)
    ROOT/DICOM/train/patient00001/study1/view1_frontal.dcm   (used when no PNG exists)
    ROOT/chexbert_labels/impression_fixed.json   (optional; JSON lines: path_to_image + 14 labels)

CheXpert Plus has **no study dates**: a patient's studies are ordered by
``patient_report_date_order`` and ``Study.when`` stays ``None`` (pairs get
``time-interval: null``, as in the official ICG-CXR JSONs). Study ids are the study folder
numbers zero-padded to four digits (``study1`` -> ``0001``), subject ids the patient folder
digits (``patient00023`` -> ``00023``), as in the official release (``p00023/i01s0001-...``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from progemu.data.labels import CHEXPERT_LABELS
from progemu.data.mimic import Study, StudyImage
from progemu.data.sections import clean_text

__all__ = ["load_chexpert_plus", "find_chexpert_csv"]

_PATH = re.compile(r"(?:^|/)patient(\d+)/study(\d+)/([^/]+?)(?:\.\w+)?$")
_DEMOGRAPHICS = ("age", "sex", "race", "ethnicity", "recent_bmi", "deceased")


def find_chexpert_csv(root: Path) -> Path:
    root = Path(root)
    candidates = sorted(root.glob("df_chexpert_plus*.csv")) + sorted(root.glob("df_chexpert_plus*.csv.gz"))
    if not candidates:
        raise FileNotFoundError(f"{root}: no df_chexpert_plus_*.csv found; download CheXpert Plus from Stanford AIMI")
    return candidates[-1]


def _resolve_image(root: Path, path_to_image: str, path_to_dcm: str) -> Path:
    relative = Path(path_to_image)
    candidates = [root / "PNG" / relative.with_suffix(".png"), root / relative.with_suffix(".png"), root / relative,
                  root / "PNG" / relative]
    if path_to_dcm:
        candidates += [root / "DICOM" / path_to_dcm, root / path_to_dcm]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]  # missing: the pipeline reports it by name when it reads the image


def _number(value: Any) -> Any:
    text = str(value).strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def _load_labels(root: Path) -> dict[str, dict[str, float | None]]:
    """path_to_image -> labels, from CheXbert's impression labels when present."""
    folder = root / "chexbert_labels"
    for name in ("impression_fixed.json", "report_fixed.json", "findings_fixed.json"):
        path = folder / name
        if path.is_file():
            out = {}
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}: line {number} is not JSON") from None
                values = {}
                for label in CHEXPERT_LABELS:
                    value = record.get(label)
                    values[label] = None if value is None or value == "" else float(value)
                out[str(record.get("path_to_image", ""))] = values
            return out
    return {}


def load_chexpert_plus(root: str | Path) -> list[Study]:
    """All studies of a CheXpert Plus tree; images of one study are its CSV rows.

    Study order comes from ``patient_report_date_order``; rows whose path does not look
    like ``.../patientN/studyM/view...`` are reported as a study with ``problem`` set.
    """
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CheXpert Plus directory not found")
    csv_path = find_chexpert_csv(root)
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as error:
        raise ValueError(f"{csv_path}: unreadable CSV ({type(error).__name__}: {error})") from None
    needed = ["path_to_image", "frontal_lateral", "ap_pa", "patient_report_date_order", "section_findings", "section_impression"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}; is this df_chexpert_plus_240401.csv?")
    labels = _load_labels(root)
    studies: dict[tuple[str, str], Study] = {}
    columns = list(table.columns)
    for row_number, row in enumerate(table.itertuples(index=False, name=None), start=2):
        values = dict(zip(columns, row))
        match = _PATH.search(values["path_to_image"].replace("\\", "/"))
        if match is None:
            key = ("?", f"row{row_number}")
            studies[key] = Study("chexpertplus", "?", f"row{row_number}", images=[],
                                 problem=f"{csv_path.name} row {row_number}: path_to_image {values['path_to_image']!r} "
                                         "is not .../patientN/studyM/viewK")
            continue
        subject, study_number, view_name = match.group(1), match.group(2), match.group(3)
        key = (subject, study_number)
        study = studies.get(key)
        if study is None:
            study = Study("chexpertplus", subject, study_number.zfill(4), images=[],
                          findings=clean_text(values["section_findings"]),
                          impression=clean_text(values["section_impression"]),
                          narrative=clean_text(values.get("section_narrative", "") or values.get("report", "")),
                          labels=labels.get(values["path_to_image"], {}),
                          split=values.get("split") or None,
                          demographics={k: _number(values.get(k, "")) for k in _DEMOGRAPHICS})
            order = _number(values["patient_report_date_order"])
            if isinstance(order, int):
                study.order = order
            else:
                study.problem = f"{csv_path.name} row {row_number}: patient_report_date_order {order!r} is not an integer"
            studies[key] = study
        frontal = values["frontal_lateral"].strip().lower()
        study.images.append(StudyImage(
            image_id=view_name,
            path=_resolve_image(root, values["path_to_image"], values.get("path_to_dcm", "")),
            view=(values["ap_pa"].strip().upper() if frontal == "frontal" else "LATERAL"),
            frontal=frontal == "frontal",
        ))
    return sorted(studies.values(), key=lambda s: (s.subject_id, s.order, s.study_id))
