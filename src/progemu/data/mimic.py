"""Reader for MIMIC-CXR-JPG v2 (images, metadata, CheXpert labels, split) plus the MIMIC-CXR reports.

Expected layout (``shared/reference/formats.md`` §1)::

    ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]
    ROOT/mimic-cxr-2.0.0-chexpert.csv[.gz]      (optional: labels become missing)
    ROOT/mimic-cxr-2.0.0-split.csv[.gz]         (optional: split becomes None)
    ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg
    reports: ROOT/reports/files/p10/p10000032/s50414267.txt  (folder tree)
          or ROOT/mimic-cxr-reports.zip                       (the original zip, read in place)
          or ROOT/files/p10/p10000032/s50414267.txt           (reports unpacked beside the images)

This module also defines the source-independent records :class:`StudyImage` and
:class:`Study` that the CheXpert Plus reader returns too.

Time: ``StudyDate`` is parsed as the *string* ``%Y%m%d`` (``pd.to_datetime`` on the integer
would read nanoseconds since 1970) and ``StudyTime`` (HHMMSS.fff with leading zeros dropped
by the float column) is zero-padded to six digits; see :func:`parse_study_datetime`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

from progemu.data.labels import CHEXPERT_LABELS
from progemu.data.sections import clean_text, findings_and_impression

__all__ = [
    "StudyImage",
    "Study",
    "parse_study_date",
    "parse_study_time",
    "parse_study_datetime",
    "MimicReports",
    "load_mimic",
    "find_table",
]

_REPORT_NAME = re.compile(r"(?:^|/)p(\d+)/s(\d+)\.txt$")


@dataclasses.dataclass
class StudyImage:
    """One image of a study: ``image_id`` (MIMIC dicom_id / CheXpert Plus view name), its
    file, its view (``PA``, ``AP``, ``LATERAL``, ``LL``, ... or ``""``) and size in pixels."""

    image_id: str
    path: Path
    view: str
    rows: int | None = None
    columns: int | None = None
    frontal: bool | None = None  # CheXpert Plus' frontal_lateral column; None when unknown


@dataclasses.dataclass
class Study:
    """One imaging study with its report, labels and images (any source).

    ``order``: 1-based position of the study in the patient's chronological series (all the
    patient's studies, before any filter). ``when``: StudyDate + StudyTime (None for CheXpert
    Plus, which only has an order). ``labels``: 14 CheXpert names -> 1.0 / 0.0 / -1.0 / None.
    """

    source: str  # "mimic_cxr" | "chexpertplus"
    subject_id: str
    study_id: str
    images: list[StudyImage]
    order: int = 0
    when: dt.datetime | None = None
    findings: str = ""
    impression: str = ""
    narrative: str = ""
    labels: dict[str, float | None] = dataclasses.field(default_factory=dict)
    split: str | None = None
    demographics: dict[str, Any] = dataclasses.field(default_factory=dict)
    problem: str | None = None  # why the study cannot be used (e.g. "report missing"), set by the reader

    @property
    def key(self) -> str:
        return f"{self.source}/p{self.subject_id}/s{self.study_id}"


# ---------------------------------------------------------------------------------------- time
def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in {"", "nan", "NaN", "None"}


def parse_study_date(value: Any) -> dt.date:
    """``StudyDate`` (int 21800506, float 21800506.0 or str "21800506") -> ``datetime.date``.

    Raises ``ValueError`` for blank or malformed values (e.g. "2180-05-06", 2180056).
    """
    if _is_blank(value):
        raise ValueError("StudyDate is blank")
    text = str(value).strip()
    if re.fullmatch(r"\d{8}\.0*", text):  # a float column: "21800506.0"
        text = text.split(".")[0]
    if not re.fullmatch(r"\d{8}", text):
        raise ValueError(f"StudyDate {value!r} is not YYYYMMDD")
    return dt.datetime.strptime(text, "%Y%m%d").date()


def parse_study_time(value: Any) -> dt.time:
    """``StudyTime`` (HHMMSS.fff with leading zeros dropped, as float or str) -> ``datetime.time``.

    ``94512.5`` -> 09:45:12.500, ``5`` -> 00:00:05, blank -> midnight (MIMIC has studies
    without a time; they sort before the same day's timed studies). Raises ``ValueError``
    for impossible times (e.g. 246000) or non-numbers.
    """
    if _is_blank(value):
        return dt.time(0, 0, 0)
    text = str(value).strip()
    if not re.fullmatch(r"\d+(\.\d*)?", text):
        raise ValueError(f"StudyTime {value!r} is not HHMMSS[.fff]")
    whole, _, fraction = text.partition(".")
    if len(whole) > 6:
        raise ValueError(f"StudyTime {value!r} has more than six digits before the decimal point")
    whole = whole.zfill(6)
    micro = int((fraction + "000000")[:6]) if fraction else 0
    try:
        return dt.time(int(whole[:2]), int(whole[2:4]), int(whole[4:6]), micro)
    except ValueError as error:
        raise ValueError(f"StudyTime {value!r} is not a valid time of day ({error})") from None


def parse_study_datetime(date: Any, time: Any) -> dt.datetime:
    """``StudyDate`` + ``StudyTime`` -> naive ``datetime`` (dates are shifted into the 2100s)."""
    return dt.datetime.combine(parse_study_date(date), parse_study_time(time))


# ------------------------------------------------------------------------------------- reports
class MimicReports:
    """Find the raw report of ``(subject_id, study_id)`` in a folder tree or the original zip."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.zip_path: Path | None = None
        self.folder: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[tuple[str, str], str] = {}
        for candidate in (self.root / "mimic-cxr-reports.zip", self.root / "reports" / "mimic-cxr-reports.zip",
                          self.root.parent / "mimic-cxr-reports.zip"):
            if candidate.is_file():
                self.zip_path = candidate
                break
        for candidate in (self.root / "reports" / "files", self.root / "reports", self.root / "files"):
            if candidate.is_dir() and self.zip_path is None:
                self.folder = candidate
                break

    def describe(self) -> str:
        return str(self.zip_path or self.folder or f"{self.root} (no reports found)")

    def _open_zip(self) -> None:
        if self._zip is None and self.zip_path is not None:
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except zipfile.BadZipFile as error:
                raise ValueError(f"{self.zip_path}: not a valid zip ({error}); re-download mimic-cxr-reports.zip") from None
            for name in self._zip.namelist():
                match = _REPORT_NAME.search(name)
                if match:
                    self._names[(match.group(1), match.group(2))] = name

    def read(self, subject_id: str, study_id: str) -> str | None:
        """Raw report text, or None when the study has no report file."""
        if self.zip_path is not None:
            self._open_zip()
            name = self._names.get((subject_id, study_id))
            return None if name is None else self._zip.read(name).decode("utf-8", errors="replace")
        if self.folder is None:
            return None
        relative = Path(f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}.txt")
        for base in (self.folder, self.folder / "files"):
            path = base / relative
            if path.is_file():
                return path.read_text(encoding="utf-8", errors="replace")
        return None


# -------------------------------------------------------------------------------------- tables
def find_table(root: Path, stem: str, required: bool = True) -> Path | None:
    """``ROOT/<stem>.csv.gz`` or ``ROOT/<stem>.csv``; a clear error when required and absent."""
    for suffix in (".csv.gz", ".csv"):
        path = Path(root) / f"{stem}{suffix}"
        if path.is_file():
            return path
    if required:
        raise FileNotFoundError(f"{root}: {stem}.csv.gz not found; download it from PhysioNet MIMIC-CXR-JPG v2")
    return None


def _read_csv(path: Path):
    import pandas as pd

    try:
        # Everything as strings: StudyDate must stay "21800506" and ids keep their digits.
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas raises many parser errors
        raise ValueError(f"{path}: unreadable CSV ({type(error).__name__}: {error})") from None


def _label_value(text: str, where: str) -> float | None:
    text = str(text).strip()
    if text == "" or text.lower() == "nan":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: label value {text!r} is not 1.0 / 0.0 / -1.0 / blank") from None
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"{where}: label value {text!r} is not 1.0 / 0.0 / -1.0 / blank")
    return value


def _load_labels(path: Path | None) -> dict[tuple[str, str], dict[str, float | None]]:
    if path is None:
        return {}
    table = _read_csv(path)
    missing = [c for c in ("subject_id", "study_id", *CHEXPERT_LABELS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    out = {}
    columns = list(table.columns)
    for row in table.itertuples(index=False, name=None):
        values = dict(zip(columns, row))
        key = (str(values["subject_id"]), str(values["study_id"]))
        out[key] = {name: _label_value(values[name], f"{path} study {key[1]}") for name in CHEXPERT_LABELS}
    return out


def _iter_metadata(path: Path) -> Iterator[dict[str, str]]:
    table = _read_csv(path)
    needed = ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; is this mimic-cxr-2.0.0-metadata.csv.gz?")
    columns = list(table.columns)
    for row in table.itertuples(index=False, name=None):
        yield dict(zip(columns, row))


def _int_or_none(text: str) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def load_mimic(root: str | Path) -> list[Study]:
    """All studies of a MIMIC-CXR-JPG tree, each with its images, report sections, labels, split.

    Studies are ordered per patient by StudyDate + StudyTime (``order`` is 1-based); a study
    whose date cannot be parsed, or whose report is missing, carries ``problem`` (and order 0)
    instead of raising, so the pipeline can report it by name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: MIMIC-CXR-JPG directory not found")
    metadata = find_table(root, "mimic-cxr-2.0.0-metadata")
    labels = _load_labels(find_table(root, "mimic-cxr-2.0.0-chexpert", required=False))
    split_path = find_table(root, "mimic-cxr-2.0.0-split", required=False)
    splits: dict[str, str] = {}
    if split_path is not None:
        table = _read_csv(split_path)
        if "dicom_id" not in table.columns or "split" not in table.columns:
            raise ValueError(f"{split_path}: needs columns dicom_id and split")
        splits = dict(zip(table["dicom_id"].astype(str), table["split"].astype(str)))
    reports = MimicReports(root)

    studies: dict[tuple[str, str], Study] = {}
    for row in _iter_metadata(metadata):
        subject, study_id = str(row["subject_id"]), str(row["study_id"])
        key = (subject, study_id)
        study = studies.get(key)
        if study is None:
            study = Study("mimic_cxr", subject, study_id, images=[], labels=labels.get(key, {}))
            try:
                study.when = parse_study_datetime(row["StudyDate"], row["StudyTime"])
            except ValueError as error:
                study.problem = f"bad date/time in {metadata.name} ({error})"
            studies[key] = study
        if any(image.image_id == str(row["dicom_id"]) for image in study.images):
            continue  # a duplicated metadata row: the image is already listed
        image_path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}" / f"{row['dicom_id']}.jpg"
        study.images.append(StudyImage(str(row["dicom_id"]), image_path, str(row.get("ViewPosition", "")).strip().upper(),
                                       _int_or_none(row.get("Rows")), _int_or_none(row.get("Columns"))))
        if study.split is None and row["dicom_id"] in splits:
            study.split = splits[row["dicom_id"]]

    for study in studies.values():
        text = reports.read(study.subject_id, study.study_id)
        if text is None:
            study.problem = study.problem or f"report not found in {reports.describe()}"
            continue
        study.findings, study.impression = findings_and_impression(text)
        study.narrative = clean_text(text)
    _assign_orders(studies.values())
    return sorted(studies.values(), key=lambda s: (s.subject_id, s.order, s.study_id))


def _assign_orders(studies) -> None:
    by_subject: dict[str, list[Study]] = {}
    for study in studies:
        if study.when is not None:
            by_subject.setdefault(study.subject_id, []).append(study)
    for series in by_subject.values():
        # study ids are random in MIMIC: ties in time fall back to them only for determinism
        series.sort(key=lambda s: (s.when, s.study_id))
        for index, study in enumerate(series, start=1):
            study.order = index
