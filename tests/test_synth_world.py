"""`progemu synth` end to end: layouts and formats of the real datasets, determinism, labels vs text vs truth."""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from progemu.data.labels import CHEXPERT_LABELS
from progemu.synth.cli import main
from progemu.synth.findings import FINDING_KEYS, FINDING_LABEL, key_kind
from progemu.synth.truth import load_ground_truth
from progemu.synth.writer import METADATA_COLUMNS, PLUS_COLUMNS

PATIENTS, SIZE = 24, 96


def _world(root: Path, seed: int, workers: int = 1) -> Path:
    assert main(["--out", str(root), "--patients", str(PATIENTS), "--image-size", str(SIZE), "--seed", str(seed),
                 "--workers", str(workers), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _world(tmp_path_factory.mktemp("synth") / "w", seed=7)


def _read_gz_csv(path: Path) -> tuple[list[str], list[dict]]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    return reader.fieldnames, list(reader)


def _tree_digest(root: Path) -> dict[str, str]:
    """The world's files; the command's lock file and done marker (not written by ``write_world``) aside."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in {".progemu.lock", "synth_done.json"}}


def test_mimic_tables_have_real_columns_and_formats(world):
    mimic = world / "mimic-cxr-jpg"
    columns, meta = _read_gz_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert columns == METADATA_COLUMNS == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]
    assert meta, "no MIMIC rows"
    for row in meta:
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", row["dicom_id"])
        assert re.fullmatch(r"1\d{7}", row["subject_id"]) and re.fullmatch(r"5\d{7}", row["study_id"])
        assert row["ViewPosition"] in {"PA", "AP", "LATERAL"}
        assert re.fullmatch(r"21\d{6}", row["StudyDate"])  # shifted into the 2100s
        dt.datetime.strptime(row["StudyDate"], "%Y%m%d")
        # HHMMSS.fff as a float: no leading zeros, parse by zero-padding the integer part to 6
        whole, _, frac = row["StudyTime"].partition(".")
        assert whole == str(int(whole)) and len(whole) <= 6 and frac and len(frac) <= 3
        dt.datetime.strptime(whole.zfill(6), "%H%M%S")
        assert int(row["Rows"]) == int(row["Columns"]) == SIZE
        jpg = mimic / f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}/{row['dicom_id']}.jpg"
        assert jpg.exists(), jpg
    label_columns, labels = _read_gz_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert label_columns == ["subject_id", "study_id", *CHEXPERT_LABELS]
    for row in labels:
        assert all(row[n] in {"", "1.0", "0.0", "-1.0"} for n in CHEXPERT_LABELS)
        report = mimic / f"reports/files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}.txt"
        assert report.exists(), report
    split_columns, split = _read_gz_csv(mimic / "mimic-cxr-2.0.0-split.csv.gz")
    assert split_columns == ["dicom_id", "study_id", "subject_id", "split"]
    by_subject: dict[str, set] = {}
    for row in split:
        by_subject.setdefault(row["subject_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_subject.values()), "MIMIC split is not patient-disjoint"
    assert set().union(*by_subject.values()) <= {"train", "validate", "test"}


def test_study_times_are_chronological_and_mostly_within_100_days(world):
    truth = load_ground_truth(world)
    series: dict[str, list] = {}
    for t in truth.values():
        series.setdefault(t.subject_id, []).append(t)
    intervals = []
    for studies in series.values():
        studies.sort(key=lambda t: t.study_order)
        assert [t.study_order for t in studies] == list(range(1, len(studies) + 1))
        assert 2 <= len(studies) <= 6
        if studies[0].dataset == "mimic":
            moments = [dt.datetime.strptime(t.raw["StudyDate"] + t.raw["StudyTime"].split(".")[0].zfill(6), "%Y%m%d%H%M%S")
                       for t in studies]
            assert moments == sorted(moments)
        intervals += [t.interval_days for t in studies[1:]]
    assert all(t.interval_days is None for t in truth.values() if t.study_order == 1)
    assert np.mean(np.array(intervals) < 100) > 0.7


def test_chexpert_plus_csv_and_png_tree(world):
    plus = world / "chexpert-plus"
    with open(plus / "df_chexpert_plus_240401.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == PLUS_COLUMNS
        rows = list(reader)
    assert rows, "no CheXpert Plus rows"
    for row in rows:
        m = re.fullmatch(r"(train|valid)/(patient\d{5})/study(\d+)/view(\d)_(frontal|lateral)\.jpg", row["path_to_image"])
        assert m, row["path_to_image"]
        assert m.group(2) == row["deid_patient_id"] and m.group(3) == row["patient_report_date_order"]
        assert row["frontal_lateral"] == m.group(5).capitalize()
        assert row["ap_pa"] in ({"PA", "AP"} if row["frontal_lateral"] == "Frontal" else {""})
        assert (plus / "PNG" / row["path_to_image"].replace(".jpg", ".png")).exists()
        assert row["split"] == m.group(1)
    # one dataset per patient
    truth = load_ground_truth(world)
    datasets = {}
    for t in truth.values():
        datasets.setdefault(t.subject_id, set()).add(t.dataset)
    assert all(len(d) == 1 for d in datasets.values())
    assert {d for s in datasets.values() for d in s} == {"mimic", "chexpertplus"}


def test_same_seed_is_byte_identical_with_workers_and_other_seed_differs(world, tmp_path):
    again = _world(tmp_path / "again", seed=7, workers=2)
    assert _tree_digest(again) == _tree_digest(world)
    other = _tree_digest(_world(tmp_path / "other", seed=8))
    assert other != _tree_digest(world)


def test_images_decode_with_the_declared_size(world):
    truth = load_ground_truth(world)
    for t in list(truth.values())[:20]:
        if "truncated_image" in t.faults:
            continue
        for path in (t.frontal_image, t.lateral_image):
            with Image.open(path) as image:
                assert image.size == (SIZE, SIZE) and image.mode == "L"


# ---- report text vs label CSV vs ground truth, for every study --------------------------------------------------

_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
_KEYWORDS = {
    "Pleural Effusion": ("pleural effusion",),
    "Cardiomegaly": ("cardiomegaly", "enlargement of the cardiac silhouette", "heart size"),
    "Edema": ("edema",),
    "Consolidation": ("consolidation",),
    "Pneumothorax": ("pneumothorax",),
    "Atelectasis": ("atelectasis",),
    "Lung Lesion": ("nodule", "mass"),
    "Support Devices": ("tube", "catheter", "pacemaker", "support devices"),
    "Pneumonia": ("pneumonia",),
    "Lung Opacity": ("opacity",),
    "Enlarged Cardiomediastinum": ("cardiomediastinal silhouette",),
    "Fracture": ("fracture",),
}
_NEGATION = re.compile(r"^(no |there is no )|no evidence of|has resolved|resolution of|removed|is normal|returned to normal")
_UNCERTAIN = re.compile(r"concerning for")


def _sections(text: str) -> dict[str, str]:
    """Official-style section split: header = upper-case label after a leading space, ending in a colon."""
    parts = _HEADER.split("\n" + text)
    out = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        out[name.lower()] = " ".join(line.strip() for line in body.split("\n")).strip()
    return out


def _independent_labels(text: str) -> dict[str, float | None]:
    """A tiny keyword labeler, independent of the generator's tables."""
    sentences = [s.strip().lower() for s in re.split(r"(?<=\.)\s+", text) if s.strip()]
    labels: dict[str, float | None] = {}
    for name, words in _KEYWORDS.items():
        values = set()
        for sentence in sentences:
            if any(w in sentence for w in words):
                if name == "Pneumonia" and _UNCERTAIN.search(sentence):
                    values.add(-1.0)
                elif _NEGATION.search(sentence):
                    values.add(0.0)
                else:
                    values.add(1.0)
        labels[name] = max(values, key=lambda v: {1.0: 3, -1.0: 2, 0.0: 1}[v]) if values else None
    return labels


def test_report_text_label_csv_and_ground_truth_agree_for_every_study(world):
    truth = load_ground_truth(world)
    _, rows = _read_gz_csv(world / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-chexpert.csv.gz")
    csv_labels = {(r["subject_id"], r["study_id"]): r for r in rows}
    with open(world / "chexpert-plus" / "df_chexpert_plus_240401.csv", newline="", encoding="utf-8") as handle:
        plus_rows = {(r["deid_patient_id"], r["patient_report_date_order"]): r for r in csv.DictReader(handle)}
    checked = 0
    for key, t in truth.items():
        if "missing_report" in t.faults:
            assert t.report_path is None and key not in csv_labels
            if t.dataset == "chexpertplus":
                assert plus_rows[key]["report"] == ""
            continue
        if t.dataset == "mimic":
            raw = t.report_path.read_text(encoding="utf-8")
            assert raw.startswith(" " * 33 + "FINAL REPORT\n")
            assert all(len(line) <= 79 for line in raw.splitlines())
            sections = _sections(raw)
            row = csv_labels[key]
            from_csv = {n: (float(row[n]) if row[n] else None) for n in CHEXPERT_LABELS}
            assert from_csv == t.labels, key
        else:
            row = plus_rows[key]
            sections = {"findings": row["section_findings"], "impression": row["section_impression"]}
        shown = " ".join(v for k, v in sections.items() if "findings" in k or "impression" in k)
        independent = _independent_labels(shown)
        for name, value in independent.items():
            assert t.labels[name] == value, (key, name, shown)
        for finding_key in FINDING_KEYS:
            label = FINDING_LABEL[key_kind(finding_key)]
            if t.state[finding_key].present:
                assert t.labels[label] == 1.0, (key, finding_key)
        for label in set(FINDING_LABEL.values()):
            kinds = [k for k in FINDING_KEYS if FINDING_LABEL[key_kind(k)] == label]
            if not any(t.state[k].present for k in kinds):
                assert t.labels[label] in (0.0, None), (key, label)
        pathology = any(t.state[k].present for k in FINDING_KEYS if k != "support_devices")
        assert t.labels["No Finding"] == (None if pathology else 1.0)
        checked += 1
    assert checked > 40


def test_faults_are_recorded_and_present_on_disk(tmp_path):
    from progemu.synth.writer import SynthConfig, write_world

    root = write_world(SynthConfig(patients=12, image_size=64, seed=3, fault_rate=0.25), tmp_path / "f", progress=False)
    truth = load_ground_truth(root)
    seen = set()
    _, meta = _read_gz_csv(root / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-metadata.csv.gz")
    dicom_counts: dict[str, int] = {}
    for row in meta:
        dicom_counts[row["dicom_id"]] = dicom_counts.get(row["dicom_id"], 0) + 1
    def chest_contrast(path) -> float:
        """Bright mediastinum between two dark lungs: centre minus the darker-contrast side, mid-height."""
        with Image.open(path) as image:
            p = np.asarray(image, dtype=np.float32)[20:44] / 255
        centre, left, right = p[:, 28:36].mean(), p[:, 10:22].mean(), p[:, 42:54].mean()
        return float(min(centre - left, centre - right))

    for t in truth.values():
        seen.update(t.faults)
        if not t.faults:
            assert chest_contrast(t.frontal_image) > 0.15
        if "truncated_image" in t.faults:
            with pytest.raises(OSError):
                with Image.open(t.frontal_image) as image:
                    image.load()
        elif "blank_image" in t.faults:
            assert chest_contrast(t.frontal_image) < 0.08  # no chest
        if t.dataset == "mimic":
            assert dicom_counts[t.dicom_id_frontal] == (2 if "duplicate_metadata_row" in t.faults else 1)
    assert seen == {"truncated_image", "blank_image", "missing_report", "duplicate_metadata_row"}


def test_resume_after_partial_run_gives_identical_world(world, tmp_path):
    from progemu.synth import writer

    cfg = writer.SynthConfig(patients=PATIENTS, image_size=SIZE, seed=7)
    out = tmp_path / "resume"
    # simulate a run killed after 5 patients: their parts exist, the tables do not
    out.mkdir()
    from progemu.utils.config import save_config

    save_config(cfg, out / "synth_config.json", kind="SynthConfig")
    for plan in writer._plan_patients(cfg)[:5]:
        writer._patient((cfg, plan, str(out)))
    assert len(list((out / ".synth_parts").iterdir())) == 5
    # a temporary file left by the kill, and an image lost although its patient was marked done
    (out / "mimic-cxr-jpg" / ".x.jpg.123.tmp").write_bytes(b"partial")
    first = json.loads(sorted((out / ".synth_parts").iterdir())[0].read_text())[0]
    (out / first["frontal_image"]).write_bytes(b"")
    writer.write_world(cfg, out, progress=False)
    assert _tree_digest(out) == _tree_digest(world)
    # another config into the same folder is refused
    with pytest.raises(ValueError, match="another config"):
        writer.write_world(writer.SynthConfig(patients=3, image_size=SIZE, seed=7), out, progress=False)


def test_ground_truth_records_every_field_the_contract_names(world):
    lines = [json.loads(line) for line in (world / "ground_truth.jsonl").read_text().splitlines()]
    for rec in lines:
        for field in ("dataset", "study_order", "interval_days", "view", "pose", "findings", "labels", "faults", "split"):
            assert field in rec
        assert set(rec["findings"]) == set(FINDING_KEYS)
        assert set(rec["labels"]) == set(CHEXPERT_LABELS)
        if rec["dataset"] == "mimic":
            assert {"subject_id", "study_id", "dicom_id_frontal", "dicom_id_lateral", "study_datetime"} <= set(rec)
        else:
            assert {"deid_patient_id", "patient_report_date_order", "path_to_image_frontal"} <= set(rec)
    assert (world / "synth_config.json").exists()


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    for bad in (["--patients", "0"], ["--image-size", "10"]):  # refused while parsing: argparse exits 2
        with pytest.raises(SystemExit) as refused:
            main(["--out", str(tmp_path / "x"), *bad])
        assert refused.value.code == 2 and bad[0] in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="progemu synth --out"):
        load_ground_truth(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ground_truth.jsonl").write_text('{"dataset": "mimic"}\n')
    with pytest.raises(ValueError, match="line 1"):
        load_ground_truth(tmp_path / "bad")
