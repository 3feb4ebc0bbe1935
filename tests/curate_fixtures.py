"""Small hand-made MIMIC-CXR-JPG / CheXpert Plus trees for the curation tests.

Every special case of selection is present once (see ``EXPECTED``), images are smooth chest-like
phantoms (dark lungs, bright mediastinum) with the prior shifted a few pixels so that
registration has something to correct, and a fake annotator stands in for the real ones.
"""
from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from progemu.curate.annotation import Annotation, AnnotationError
from progemu.data.labels import CHEXPERT_LABELS


def phantom(size: int, shift: tuple[float, float] = (0.0, 0.0), seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A chest-like float image [size, size] in [0, 1]; ``shift`` in pixels (dy, dx)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + shift[0], size / 2 + shift[1]
    body = np.exp(-(((x - cx) / (0.42 * size * scale)) ** 6 + ((y - cy) / (0.47 * size)) ** 6))
    image = 0.15 + 0.65 * body
    for side in (-1, 1):
        lung = ((x - (cx + side * 0.2 * size)) / (0.14 * size * scale)) ** 2 + ((y - cy + 0.02 * size) / (0.3 * size)) ** 2
        image -= 0.45 * np.exp(-lung ** 2)
    heart = ((x - cx - 0.04 * size) / (0.12 * size)) ** 2 + ((y - cy - 0.12 * size) / (0.12 * size)) ** 2
    image += 0.3 * np.exp(-heart ** 2)
    ribs = 0.04 * np.sin(y / size * 40.0) * body
    image += ribs + rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def raw_report(findings: str, impression: str) -> str:
    """A report in the raw MIMIC layout (one leading space before headers)."""
    text = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
    text += " INDICATION:  ___ with cough\n \n"
    if findings is not None:
        text += f" FINDINGS: \n \n {findings}\n \n"
    if impression is not None:
        text += f" IMPRESSION: \n \n {impression}\n"
    return text


class FakeAnnotator:
    """Deterministic stand-in: prompt = follow-up impression; confidence 2 when the follow-up
    findings say "limited"; raises AnnotationError when they say "garbled"."""

    name = "fake"
    version = "1"

    def __init__(self):
        self.calls = 0

    def annotate(self, prior, followup, record_id):
        self.calls += 1
        if "garbled" in followup.findings:
            raise AnnotationError(f"{record_id}: fake annotator cannot read this report")
        confidence = 2 if "limited" in followup.findings else 4
        return Annotation(prompt=followup.impression, interpretation=f"Now: {followup.findings} Before: {prior.findings}",
                          confidence=confidence, reason="fake")


# (subject, study, date, time, views, findings, impression, shift) ; None report = missing file
STUDIES = [
    # patient 10000001: three studies within 100 days; two on the same day ordered by StudyTime,
    # whose leading zeros are dropped ("5012.5" = 00:50:12.5 comes before "94512" = 09:45:12)
    ("10000001", "50000003", "21800101", "120000", ["PA", "LATERAL"], "Lungs clear.", "No acute process.", (2, 3)),
    ("10000001", "59999999", "21800110", "94512", ["PA", "LATERAL"], "Small left effusion.", "New small left effusion.", (-2, 1)),
    ("10000001", "51111111", "21800110", "5012.5", ["PA"], "Tiny left effusion.", "Tiny left effusion.", (1, -2)),
    # patient 10000002: two studies 200 days apart -> interval skip; then one within 100 days
    ("10000002", "52000001", "21810101", "080000", ["PA"], "Normal heart size.", "Normal.", (0, 2)),
    ("10000002", "52000002", "21810720", "080000", ["PA"], "Mild edema.", "Mild edema.", (2, 0)),
    ("10000002", "52000003", "21810801", "080000", ["PA"], "Edema resolved.", "Resolved edema.", (-1, -1)),
    # patient 10000003: AP-only study (view skip), empty impression (report skip), then two good
    ("10000003", "53000001", "21820101", "010101", ["AP"], "Lines in place.", "Stable.", (0, 0)),
    ("10000003", "53000002", "21820102", "010101", ["PA"], "Clear lungs.", "", (0, 0)),
    ("10000003", "53000003", "21820103", "010101", ["PA"], "Clear lungs.", "Normal.", (3, 0)),
    ("10000003", "53000004", "21820104", "010101", ["PA"], "Study limited by rotation.", "Unchanged.", (0, 3)),
    # patient 10000004: a missing report (read skip), a garbled report (annotation skip), a broken image
    ("10000004", "54000001", "21830101", "000000", ["PA"], None, None, (0, 0)),
    ("10000004", "54000002", "21830105", "000000", ["PA"], "Heart normal.", "Normal.", (1, 1)),
    ("10000004", "54000003", "21830106", "000000", ["PA"], "garbled text", "Unclear.", (0, 2)),
    ("10000004", "54000004", "21830107", "000000", ["PA"], "Heart normal again.", "Normal.", (2, 2)),
    ("10000004", "54000005", "21830108", "000000", ["PA"], "Heart still normal.", "Normal.", (0, 0)),
]
BROKEN_IMAGE_STUDY = "54000005"
#: record id -> expected outcome stage ("kept" or the skip stage)
EXPECTED = {
    "mimic_cxr/p10000001/i01s50000003-i02s51111111": "kept",
    "mimic_cxr/p10000001/i02s51111111-i03s59999999": "kept",
    "mimic_cxr/p10000002/i01s52000001-i02s52000002": "interval",
    "mimic_cxr/p10000002/i02s52000002-i03s52000003": "kept",
    "mimic_cxr/p10000003/i03s53000003-i04s53000004": "confidence",
    "mimic_cxr/p10000004/i02s54000002-i03s54000003": "annotation",
    "mimic_cxr/p10000004/i03s54000003-i04s54000004": "kept",
    "mimic_cxr/p10000004/i04s54000004-i05s54000005": "image",
}


def _write_csv_gz(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))


def make_mimic(root: Path, size: int = 96, reports: str = "folder", extra_patients: int = 0) -> Path:
    """Write the MIMIC-CXR-JPG fixture; ``reports`` is "folder" or "zip". ``extra_patients``
    adds plain patients of four dated studies each (three kept pairs) for longer runs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    studies = list(STUDIES)
    for number in range(extra_patients):
        subject = f"1100{number:04d}"
        for k in range(4):
            studies.append((subject, f"6{number:03d}{k:04d}", f"2184{1 + k:02d}0{1 + number % 9}", "101010", ["PA"],
                            f"Finding {k} of patient {number}.", f"Impression {k}.", ((k * 2) % 5 - 2, (k * 3) % 5 - 2)))
    metadata, split_rows, label_rows, report_files = [], [], [], {}
    for index, (subject, study, date, time, views, findings, impression, shift) in enumerate(studies):
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        for number, view in enumerate(views):
            dicom_id = f"d{study}{number}"
            scale = 0.8 if view == "LATERAL" else 1.0
            # shifts are given for 48 px; scale them so registration has work at any size
            pixel_shift = (shift[0] * size / 48, shift[1] * size / 48)
            pixels = (phantom(size, pixel_shift, seed=index, scale=scale) * 255).round().astype(np.uint8)
            path = folder / f"{dicom_id}.jpg"
            Image.fromarray(pixels).save(path, quality=95)
            if study == BROKEN_IMAGE_STUDY:
                path.write_bytes(path.read_bytes()[:200])
            metadata.append([dicom_id, subject, study, "CHEST (PA AND LAT)", view, size, size, date, time, "", "", ""])
            split_rows.append([dicom_id, study, subject, "test" if subject.endswith("2") else "train"])
        labels = ["" for _ in CHEXPERT_LABELS]
        labels[CHEXPERT_LABELS.index("Pleural Effusion")] = "1.0" if "effusion" in (findings or "") else "0.0"
        label_rows.append([subject, study, *labels])
        if findings is not None:
            report_files[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = raw_report(findings, impression)
    _write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz",
                  ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                   "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"], metadata)
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_csv_gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], label_rows)
    if reports == "zip":
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as archive:
            for name, text in report_files.items():
                archive.writestr(name, text)
    else:
        for name, text in report_files.items():
            path = root / "reports" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return root


def make_chexpert_plus(root: Path, size: int = 96) -> Path:
    """Two patients of CheXpert Plus: one with three frontal PA studies, one AP only."""
    root = Path(root)
    rows = []
    plan = [("00023", 1, "PA", "Clear.", "Normal.", (0, 0)), ("00023", 2, "PA", "Effusion.", "Effusion.", (2, 1)),
            ("00023", 3, "PA", "Less effusion.", "Improving.", (1, 2)), ("00031", 1, "AP", "Tube.", "Tube.", (0, 0)),
            ("00031", 2, "AP", "Tube out.", "Removed.", (0, 0))]
    for order, (patient, study, view, findings, impression, shift) in enumerate(plan, start=1):
        relative = f"train/patient{patient}/study{study}/view1_frontal.jpg"
        path = root / "PNG" / Path(relative).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((phantom(size, shift, seed=order) * 255).round().astype(np.uint8)).save(path)
        rows.append({"path_to_image": relative, "path_to_dcm": relative.replace(".jpg", ".dcm"),
                     "frontal_lateral": "Frontal", "ap_pa": view, "deid_patient_id": f"id{patient}",
                     "patient_report_date_order": str(study), "report": f"FINDINGS: {findings} IMPRESSION: {impression}",
                     "section_narrative": "", "section_findings": findings, "section_impression": impression,
                     "age": "64", "sex": "Female", "race": "White", "ethnicity": "", "recent_bmi": "23.5",
                     "deceased": "No", "split": "train"})
    with open(root / "df_chexpert_plus_240401.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_dicom(path: Path, pixels: np.ndarray, *, bits: int, photometric: str = "MONOCHROME2", **elements) -> Path:
    """An uncompressed DICOM (pydicom) with the given stored bits, photometry and extra elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits)
    for key, value in elements.items():
        setattr(dataset, key, value)
    dataset.save_as(path, enforce_file_format=True)
    return path
