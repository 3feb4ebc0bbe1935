"""Write a synthetic longitudinal world in the MIMIC-CXR-JPG and CheXpert Plus layouts.

``write_world(SynthConfig, out_dir, workers)`` writes::

    OUT/synth_config.json
    OUT/ground_truth.jsonl                      one line per study (see progemu.synth.truth)
    OUT/mimic-cxr-jpg/files/pXX/pSUBJECT/sSTUDY/DICOMID.jpg
    OUT/mimic-cxr-jpg/mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz
    OUT/mimic-cxr-jpg/reports/files/pXX/pSUBJECT/sSTUDY.txt
    OUT/chexpert-plus/df_chexpert_plus_240401.csv
    OUT/chexpert-plus/PNG/{train,valid}/patientNNNNN/studyK/view{1_frontal,2_lateral}.png

Each patient belongs to exactly one dataset (``mimic_fraction`` MIMIC, the rest
CheXpert Plus). The MIMIC split is patient-disjoint (train/validate/test);
CheXpert Plus patients are "train" or "valid". Identifiers come from the master
seed; everything else about a patient from its own seed ``(seed, index)``, so the
output is byte-identical for any number of workers. Every file is written
atomically (images and reports by rename, tables and markers also fsync'ed); finished patients are recorded under ``OUT/.synth_parts/`` so a
killed run resumes where it stopped (the folder is removed at the end).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from progemu.data.labels import CHEXPERT_LABELS
from progemu.utils.atomic import atomic_write_bytes, atomic_write_text, make_temp_file
from progemu.utils.config import config_to_dict, save_config

from .evolution import EvolutionConfig, simulate_patient
from .render import render_frontal
from .render_lateral import render_lateral
from .reports import write_study_report

__all__ = ["SynthConfig", "RealSynthConfig", "write_world", "SPLIT_GROUPS", "MIMIC_DIR", "PLUS_DIR", "PLUS_CSV", "METADATA_COLUMNS",
           "PLUS_COLUMNS", "FAULT_KINDS"]

MIMIC_DIR = "mimic-cxr-jpg"
PLUS_DIR = "chexpert-plus"
PLUS_CSV = "df_chexpert_plus_240401.csv"
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
PLUS_COLUMNS = ["path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
                "patient_report_date_order", "report", "section_narrative", "section_clinical_history",
                "section_history", "section_comparison", "section_technique", "section_procedure_comments",
                "section_findings", "section_impression", "section_end_of_impression", "section_summary",
                "section_accession_number", "age", "sex", "race", "ethnicity", "interpreter_needed",
                "insurance_type", "recent_bmi", "deceased", "split"]
#: truncated_image: the frontal file is cut short (a truncated JPEG / PNG); blank_image: the frontal file
#: shows no chest; missing_report: the study has no report (MIMIC: no .txt and no label row; CheXpert Plus:
#: empty report columns); duplicate_metadata_row: the frontal image's metadata / CSV row appears twice
FAULT_KINDS = ("truncated_image", "blank_image", "missing_report", "duplicate_metadata_row")
_PARTS = ".synth_parts"
#: per dataset root of a real-anatomy world: ``subject_id,group`` (patients of one group share a split)
SPLIT_GROUPS = "split_groups.csv"


@dataclasses.dataclass
class SynthConfig:
    patients: int = 50
    image_size: int = 256
    seed: int = 0
    mimic_fraction: float = 0.75
    #: MIMIC official split fractions (train, validate, test), patient-disjoint
    split_fractions: tuple = (0.8, 0.1, 0.1)
    plus_valid_fraction: float = 0.1
    #: per-study probability of each fault kind
    fault_rate: float = 0.012
    jpeg_quality: int = 95
    evolution: EvolutionConfig = dataclasses.field(default_factory=EvolutionConfig)


@dataclasses.dataclass
class RealSynthConfig(SynthConfig):
    """A world on real anatomy (:mod:`progemu.synth.real_render`); ``anatomy`` is always "real".

    A separate class so that phantom worlds keep their exact ``synth_config.json``. Every patient's
    base image is drawn uniformly from the shipped anatomy; its dataset and split are decided by
    the base image's *group* (the Hannover patient, whose images share one anatomy), so patients
    made from one base never fall in two splits (the official split CSVs follow the groups, and
    ``split_groups.csv`` in each dataset root lets curation's hash split do the same).

    What a base radiograph already shows (COVID-19 opacities, ICU lines, ECG leads) cannot be read
    automatically: the ground truth records it as ``base_findings: "unknown, stable"`` (present,
    unchanged, in every study of the patient); ``findings``, the reports and their labels describe
    the *inserted* findings, so changes between studies are exact while absolute labels (and the
    reports' negative sentences) may miss what the base shows. Lateral views are the phantom's.
    """

    anatomy: str = "real"


def _is_real(cfg: SynthConfig) -> bool:
    return getattr(cfg, "anatomy", "phantom") == "real"


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def _plan_patients(cfg: SynthConfig) -> list[dict]:
    """Identifiers and dataset membership of every patient, from the master seed."""
    rng = np.random.default_rng([cfg.seed, 0x5EED])
    n = cfg.patients
    subjects = rng.choice(10_000_000, size=n, replace=False) + 10_000_000
    studies = rng.choice(10_000_000, size=n * 6, replace=False) + 50_000_000
    plans, plus_count = [], 0
    for i in range(n):
        mimic = bool(rng.random() < cfg.mimic_fraction)
        r = rng.random()
        plan = {"index": i, "dataset": "mimic" if mimic else "chexpertplus",
                "dicom_ids": [_dicom_id(rng) for _ in range(12)],
                "start": float(rng.uniform(0, 70 * 365)), "seconds": float(np.round(rng.uniform(0, 86400), 3))}
        if mimic:
            a, b, _ = cfg.split_fractions
            plan.update(subject_id=str(int(subjects[i])), study_ids=[str(int(s)) for s in studies[6 * i: 6 * i + 6]],
                        split="train" if r < a else ("validate" if r < a + b else "test"))
        else:
            plus_count += 1
            plan.update(deid_patient_id=f"patient{plus_count:05d}",
                        split="valid" if r < cfg.plus_valid_fraction else "train")
        plans.append(plan)
    if _is_real(cfg):
        _assign_bases(cfg, plans, subjects, studies)
    return plans


def _assign_bases(cfg: SynthConfig, plans: list[dict], subjects: np.ndarray, studies: np.ndarray) -> None:
    """Real anatomy: a base image per patient; dataset and split per base-image group (Hannover patient)."""
    from progemu.data.icgcxr import stable_fraction

    from .real_assets import anatomy_ids, anatomy_record

    ids = anatomy_ids()
    rng = np.random.default_rng([cfg.seed, 0xBA5E])
    plus_count = 0
    for i, plan in enumerate(plans):
        base = ids[int(rng.integers(len(ids)))]
        group = f"hannover:{anatomy_record(base)['patient_id']}"
        r = stable_fraction(f"{cfg.seed}:{group}:split")
        for key in ("subject_id", "study_ids", "deid_patient_id"):
            plan.pop(key, None)
        plan.update(base_image=base, anatomy_group=group)
        if stable_fraction(f"{cfg.seed}:{group}:dataset") < cfg.mimic_fraction:
            a, b, _ = cfg.split_fractions
            plan.update(dataset="mimic", subject_id=str(int(subjects[i])),
                        study_ids=[str(int(v)) for v in studies[6 * i: 6 * i + 6]],
                        split="train" if r < a else ("validate" if r < a + b else "test"))
        else:
            plus_count += 1
            plan.update(dataset="chexpertplus", deid_patient_id=f"patient{plus_count:05d}",
                        split="valid" if r >= 1.0 - cfg.plus_valid_fraction else "train")


def _encode(image: np.ndarray, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mode="L")
    if fmt == "JPEG":
        pil.save(buffer, format="JPEG", quality=quality)
    else:
        pil.save(buffer, format="PNG")
    return buffer.getvalue()


def _blank_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A non-chest image (test pattern / overexposed plate)."""
    ramp = np.linspace(0.2, 0.8, size, dtype=np.float32)[None, :] * np.ones((size, 1), np.float32)
    return np.clip(ramp * rng.uniform(0.5, 1.0) + rng.normal(0, 0.02, (size, size)), 0, 1).astype(np.float32)


def _study_time(start_days: float, seconds: float, offset_days: float) -> dt.datetime:
    base = dt.datetime(2110, 1, 1) + dt.timedelta(days=int(start_days), seconds=seconds)
    return base + dt.timedelta(days=offset_days)


def _time_value(moment: dt.datetime) -> str:
    """StudyTime as MIMIC writes it: HHMMSS.fff as a float, leading zeros dropped."""
    value = moment.hour * 10000 + moment.minute * 100 + moment.second + moment.microsecond / 1e6
    return repr(round(value, 3))


def _patient(args: tuple) -> list[dict]:
    """Simulate, render and write one patient; returns one record per study."""
    cfg, plan, out = args
    out = Path(out)
    part = out / _PARTS / f"{plan['index']:06d}.json"
    if part.exists():
        records = json.loads(part.read_text(encoding="utf-8"))
        if _part_is_complete(out, records):
            return records
    rng = np.random.default_rng([cfg.seed, plan["index"]])
    real = _is_real(cfg)
    if real:
        from .real_anatomy import sample_real_anatomy
        from .real_render import render_real_frontal

        anatomy, studies = simulate_patient(rng, cfg.evolution, sample_real_anatomy(rng, plan["base_image"]))
        frontal_renderer = render_real_frontal
    else:
        anatomy, studies = simulate_patient(rng, cfg.evolution)
        frontal_renderer = render_frontal
    size = cfg.image_size
    mimic = plan["dataset"] == "mimic"
    records, prior = [], None
    for study in studies:
        k = study.order
        faults = [kind for kind in FAULT_KINDS if rng.random() < cfg.fault_rate]
        report = write_study_report(study.state, prior, study.pose.view, anatomy.sex, anatomy.age, rng)
        frontal = frontal_renderer(anatomy, study.state, study.pose, size, rng)
        lateral = render_lateral(anatomy, study.state, study.lateral_pose, size, rng)
        if "blank_image" in faults:
            frontal = _blank_image(rng, size)
        moment = _study_time(plan["start"], plan["seconds"], study.offset_days)
        record = {
            "dataset": plan["dataset"], "split": plan["split"], "study_order": k,
            "interval_days": None if study.interval_days is None else round(study.interval_days, 4),
            "view": study.pose.view, "pose": dataclasses.asdict(study.pose),
            "lateral_pose": dataclasses.asdict(study.lateral_pose), "image_size": size,
            "findings": study.state.to_json(), "labels": report.labels, "report_layout": report.layout,
            "faults": faults, "anatomy": dataclasses.asdict(anatomy), "age": anatomy.age, "sex": anatomy.sex,
        }
        if real:  # the base radiograph; what it shows itself is present and unchanged in every study
            record.update(anatomy_id=plan["base_image"], anatomy_group=plan["anatomy_group"],
                          base_findings="unknown, stable")
        if mimic:
            subject, study_id = plan["subject_id"], plan["study_ids"][k - 1]
            folder = f"files/p{subject[:2]}/p{subject}/s{study_id}"
            dicoms = plan["dicom_ids"][2 * (k - 1): 2 * k]
            record.update(subject_id=subject, study_id=study_id, dicom_id_frontal=dicoms[0], dicom_id_lateral=dicoms[1],
                          study_datetime=moment.isoformat(timespec="milliseconds"),
                          StudyDate=moment.strftime("%Y%m%d"), StudyTime=_time_value(moment),
                          frontal_image=f"{MIMIC_DIR}/{folder}/{dicoms[0]}.jpg",
                          lateral_image=f"{MIMIC_DIR}/{folder}/{dicoms[1]}.jpg",
                          report_path=None if "missing_report" in faults else f"{MIMIC_DIR}/reports/{folder}.txt")
            fmt = "JPEG"
        else:
            folder = f"{plan['split']}/{plan['deid_patient_id']}/study{k}"
            record.update(deid_patient_id=plan["deid_patient_id"], patient_report_date_order=k,
                          subject_id=plan["deid_patient_id"], study_id=str(k),
                          path_to_image_frontal=f"{folder}/view1_frontal.jpg",
                          path_to_image_lateral=f"{folder}/view2_lateral.jpg",
                          frontal_image=f"{PLUS_DIR}/PNG/{folder}/view1_frontal.png",
                          lateral_image=f"{PLUS_DIR}/PNG/{folder}/view2_lateral.png", report_path=None)
            fmt = "PNG"
        front_bytes = _encode(frontal, fmt, cfg.jpeg_quality)
        if "truncated_image" in faults:
            front_bytes = front_bytes[: int(len(front_bytes) * 0.6)]
        _write_image(out / record["frontal_image"], front_bytes)
        _write_image(out / record["lateral_image"], _encode(lateral, fmt, cfg.jpeg_quality))
        if mimic and record["report_path"]:
            _write_image(out / record["report_path"], report.mimic.encode("utf-8"))
        record["_report_plus"] = {} if "missing_report" in faults else report.chexpert_plus
        records.append(record)
        prior = study.state
    atomic_write_text(part, json.dumps(records))
    return records


def _write_image(path: Path, data: bytes) -> None:
    """Atomic (temporary file + rename) but without fsync: a killed run never leaves a torn image.

    Thousands of per-image fsyncs cost more than rendering on a shared disk; power-loss safety
    comes from the resume check instead (:func:`_part_is_complete` re-renders a patient whose
    files are missing or empty).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path)  # readable as the umask allows, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _part_is_complete(out: Path, records: list[dict]) -> bool:
    for rec in records:
        for key in ("frontal_image", "lateral_image", "report_path"):
            if rec.get(key):
                path = out / rec[key]
                if not path.exists() or path.stat().st_size == 0:
                    return False
    return True


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: byte-identical reruns


def _label_cell(value) -> str:
    return "" if value is None else f"{float(value):.1f}"


def write_world(cfg: SynthConfig, out_dir: str | Path, workers: int = 1, progress: bool = True) -> Path:
    """Write the whole world to ``out_dir`` (resumable); returns ``out_dir``."""
    out = Path(out_dir)
    config_path = out / "synth_config.json"
    if config_path.exists():
        old = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
        if old != config_to_dict(cfg):
            raise ValueError(f"{config_path}: {out} already holds a synthetic world made with another config; "
                             "choose another --out or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp"):  # temporary files of a killed run
        stale.unlink(missing_ok=True)
    save_config(cfg, config_path, kind="SynthConfig")
    plans = _plan_patients(cfg)
    tasks = [(cfg, plan, str(out)) for plan in plans]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="synth patients", unit="patient")
    results: list[list[dict]] = []
    if workers <= 1:
        for task in tasks:
            results.append(_patient(task))
            bar and bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for records in pool.map(_patient, tasks, chunksize=4):
                results.append(records)
                bar and bar.update(1)
    if bar:
        bar.close()
    _write_tables(out, cfg, [r for records in results for r in records])
    shutil.rmtree(out / _PARTS, ignore_errors=True)
    return out


def _write_tables(out: Path, cfg: SynthConfig, records: list[dict]) -> None:
    size = cfg.image_size
    meta, labels, split, plus, truth = [], [], [], [], []
    for rec in records:
        report_plus = rec.pop("_report_plus")
        if rec["dataset"] == "mimic":
            frontal_desc = "CHEST (PA AND LAT)" if rec["view"] == "PA" else "CHEST (PORTABLE AP)"
            view_meaning = "postero-anterior" if rec["view"] == "PA" else "antero-posterior"
            orient = "Erect" if rec["view"] == "PA" else "Recumbent"
            common = [rec["subject_id"], rec["study_id"], frontal_desc]
            row_f = [rec["dicom_id_frontal"], *common, rec["view"], size, size, rec["StudyDate"], rec["StudyTime"],
                     frontal_desc, view_meaning, orient]
            row_l = [rec["dicom_id_lateral"], *common, "LATERAL", size, size, rec["StudyDate"], rec["StudyTime"],
                     frontal_desc, "lateral", orient]
            meta.append(row_f)
            if "duplicate_metadata_row" in rec["faults"]:
                meta.append(list(row_f))
            meta.append(row_l)
            if rec["report_path"]:
                labels.append([rec["subject_id"], rec["study_id"], *[_label_cell(rec["labels"][n]) for n in CHEXPERT_LABELS]])
            for dicom in (rec["dicom_id_frontal"], rec["dicom_id_lateral"]):
                split.append([dicom, rec["study_id"], rec["subject_id"], rec["split"]])
        else:
            demo = _demographics(rec)
            for view, path in (("Frontal", rec["path_to_image_frontal"]), ("Lateral", rec["path_to_image_lateral"])):
                row = {"path_to_image": path, "path_to_dcm": path[:-4] + ".dcm", "frontal_lateral": view,
                       "ap_pa": rec["view"] if view == "Frontal" else "", "deid_patient_id": rec["deid_patient_id"],
                       "patient_report_date_order": rec["patient_report_date_order"], **report_plus, **demo,
                       "split": rec["split"]}
                plus.append([row.get(c, "") for c in PLUS_COLUMNS])
                if view == "Frontal" and "duplicate_metadata_row" in rec["faults"]:
                    plus.append(list(plus[-1]))
        truth.append(json.dumps(rec, sort_keys=True))
    mimic_root = out / MIMIC_DIR
    atomic_write_bytes(mimic_root / "mimic-cxr-2.0.0-metadata.csv.gz", _gz(_csv_bytes(METADATA_COLUMNS, meta)))
    atomic_write_bytes(mimic_root / "mimic-cxr-2.0.0-chexpert.csv.gz",
                       _gz(_csv_bytes(["subject_id", "study_id", *CHEXPERT_LABELS], labels)))
    atomic_write_bytes(mimic_root / "mimic-cxr-2.0.0-split.csv.gz",
                       _gz(_csv_bytes(["dicom_id", "study_id", "subject_id", "split"], split)))
    atomic_write_bytes(out / PLUS_DIR / PLUS_CSV, _csv_bytes(PLUS_COLUMNS, plus))
    if _is_real(cfg):
        _write_real_extras(out, records)
    atomic_write_text(out / "ground_truth.jsonl", "".join(line + "\n" for line in truth))


def _write_real_extras(out: Path, records: list[dict]) -> None:
    """``split_groups.csv`` per dataset root (read by curation's split) and the anatomy's NOTICE."""
    from .real_assets import ASSET_DIR

    for dataset, root in (("mimic", MIMIC_DIR), ("chexpertplus", PLUS_DIR)):
        groups = sorted({(r["subject_id"], r["anatomy_group"]) for r in records if r["dataset"] == dataset})
        atomic_write_bytes(out / root / SPLIT_GROUPS, _csv_bytes(["subject_id", "group"], [list(g) for g in groups]))
    atomic_write_text(out / "NOTICE", (ASSET_DIR / "NOTICE").read_text(encoding="utf-8"))


def _demographics(rec: dict) -> dict:
    # deterministic per patient: derived from the (fixed) anatomy seed
    r = np.random.default_rng(rec["anatomy"]["texture_seed"])
    return {
        "age": rec["age"], "sex": "Female" if rec["sex"] == "F" else "Male",
        "race": str(r.choice(["White", "Asian", "Black or African American", "Other", "Unknown"])),
        "ethnicity": str(r.choice(["Non-Hispanic/Non-Latino", "Hispanic/Latino", "Unknown"])),
        "interpreter_needed": str(r.choice(["No", "No", "No", "Yes"])),
        "insurance_type": str(r.choice(["Medicare", "Private Insurance", "Medicaid", "Unknown"])),
        "recent_bmi": f"{r.uniform(18, 38):.1f}", "deceased": str(r.choice(["No", "No", "No", "Yes"])),
    }
