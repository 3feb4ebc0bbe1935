"""MIMIC-CXR-JPG and CheXpert Plus readers; StudyDate / StudyTime parsing pitfalls."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from curate_fixtures import make_chexpert_plus, make_mimic
from progemu.data.chexpert_plus import load_chexpert_plus
from progemu.data.mimic import load_mimic, parse_study_date, parse_study_datetime, parse_study_time


def test_study_date_is_parsed_as_a_string_not_epoch_nanoseconds():
    assert parse_study_date(21800506) == dt.date(2180, 5, 6)
    assert parse_study_date("21800506") == dt.date(2180, 5, 6)
    assert parse_study_date(21800506.0) == dt.date(2180, 5, 6)
    assert parse_study_date("21800229") == dt.date(2180, 2, 29)  # 2180 is a leap year
    # the pitfall the string parse avoids: pandas reads the integer as nanoseconds since 1970
    assert pd.to_datetime(21800506).year == 1970
    for bad in ["21810229", "2180-05-06", "2180056", "", None, float("nan"), "218005061"]:
        with pytest.raises(ValueError):
            parse_study_date(bad)


def test_study_time_zero_padding_and_fractions():
    assert parse_study_time("94512") == dt.time(9, 45, 12)
    assert parse_study_time(94512.0) == dt.time(9, 45, 12)
    assert parse_study_time("5012.5") == dt.time(0, 50, 12, 500000)
    assert parse_study_time(5.25) == dt.time(0, 0, 5, 250000)
    assert parse_study_time("0") == dt.time(0, 0, 0)
    assert parse_study_time("235959.999") == dt.time(23, 59, 59, 999000)
    assert parse_study_time("") == dt.time(0, 0, 0)  # blank: midnight
    assert parse_study_time(float("nan")) == dt.time(0, 0, 0)
    for bad in ["246000", "126000", "1261", "12:30:00", "1234567", "-5"]:
        with pytest.raises(ValueError):
            parse_study_time(bad)
    # "5012.5" (00:50) comes before "94512" (09:45) although it sorts after it as text
    assert parse_study_datetime("21800110", "5012.5") < parse_study_datetime("21800110", "94512")
    assert parse_study_datetime(21800110, 94512) - parse_study_datetime(21800101, "120000") == dt.timedelta(days=8, seconds=78312)


@pytest.mark.parametrize("reports", ["folder", "zip"])
def test_load_mimic_orders_by_date_and_time_and_reads_reports(tmp_path, reports):
    root = make_mimic(tmp_path / "mimic", size=48, reports=reports)
    studies = {s.study_id: s for s in load_mimic(root)}
    assert len(studies) == 15
    first = [studies[k] for k in ("50000003", "51111111", "59999999")]
    assert [s.order for s in first] == [1, 2, 3]  # by date + zero-padded time, not study id
    assert first[1].when == dt.datetime(2180, 1, 10, 0, 50, 12, 500000)
    assert first[1].findings == "Tiny left effusion." and first[1].impression == "Tiny left effusion."
    assert "FINAL REPORT" in first[1].narrative
    assert first[0].labels["Pleural Effusion"] == 0.0 and first[1].labels["Pleural Effusion"] == 1.0
    assert first[0].labels["Edema"] is None
    assert first[0].split == "train" and studies["52000001"].split == "test"
    assert sorted(i.view for i in first[0].images) == ["LATERAL", "PA"]
    assert first[0].images[0].path.exists()
    missing = studies["54000001"]
    assert missing.problem and "report not found" in missing.problem and missing.order == 1
    assert studies["53000002"].impression == ""


def test_load_mimic_bad_date_is_recorded_and_missing_metadata_is_named(tmp_path):
    root = make_mimic(tmp_path / "mimic", size=48)
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[table.study_id == "52000003", "StudyDate"] = "2181-08-01"
    table.to_csv(path, index=False, compression="gzip")
    studies = {s.study_id: s for s in load_mimic(root)}
    assert "bad date/time" in studies["52000003"].problem and studies["52000003"].order == 0
    path.unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-metadata"):
        load_mimic(root)


def test_load_chexpert_plus(tmp_path):
    root = make_chexpert_plus(tmp_path / "chexpert", size=48)
    studies = load_chexpert_plus(root)
    assert [(s.subject_id, s.study_id, s.order) for s in studies] == [
        ("00023", "0001", 1), ("00023", "0002", 2), ("00023", "0003", 3), ("00031", "0001", 1), ("00031", "0002", 2)]
    first = studies[0]
    assert first.when is None and first.images[0].view == "PA" and first.images[0].path.suffix == ".png"
    assert first.images[0].path.exists()
    assert first.demographics == {"age": 64, "sex": "Female", "race": "White", "ethnicity": None,
                                  "recent_bmi": 23.5, "deceased": "No"}
    assert studies[3].images[0].view == "AP"


def test_chexpert_plus_with_dicom_only(tmp_path):
    import numpy as np
    from curate_fixtures import write_dicom

    from progemu.data.images import read_image

    root = make_chexpert_plus(tmp_path / "chexpert", size=48)
    png = root / "PNG" / "train" / "patient00023" / "study2" / "view1_frontal.png"
    pixels = (read_image(png) * 4095).round().astype(np.uint16)
    dicom = root / "DICOM" / "train" / "patient00023" / "study2" / "view1_frontal.dcm"
    dicom.parent.mkdir(parents=True)
    write_dicom(dicom, pixels, bits=12)
    png.unlink()
    study = next(s for s in load_chexpert_plus(root) if s.study_id == "0002")
    assert study.images[0].path == dicom
    image = read_image(study.images[0].path)
    assert image.shape == (48, 48) and abs(float(image.max()) - 1.0) < 1e-6
