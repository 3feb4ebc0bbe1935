"""Synthetic reports: raw MIMIC layout (checked against the real example), wording, comparison, labels."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from progemu.data.labels import CHEXPERT_LABELS
from progemu.synth.evolution import simulate_patient
from progemu.synth.findings import Finding, StudyState
from progemu.synth.reports import Sentence, change_of, merge_labels, mimic_text, write_study_report

REAL = Path("/work/shared/data/real/reports/mimic_cxr_example_report.txt")
_HEADER_LINE = re.compile(r"^ ([A-Z ()/,-]+):(\s|$)")


def test_merge_labels_follows_chexpert_precedence():
    labels = merge_labels([
        Sentence("No pleural effusion.", {"Pleural Effusion": 0.0}),
        Sentence("Small left pleural effusion.", {"Pleural Effusion": 1.0}),
        Sentence("Consolidation, concerning for pneumonia.", {"Consolidation": 1.0, "Pneumonia": -1.0}),
        Sentence("No pneumothorax.", {"Pneumothorax": 0.0}),
    ])
    expected = {name: None for name in CHEXPERT_LABELS}
    expected.update({"Pleural Effusion": 1.0, "Consolidation": 1.0, "Pneumonia": -1.0, "Pneumothorax": 0.0})
    assert labels == expected
    # nothing pathological: No Finding is positive even with a device
    normal = merge_labels([Sentence("No pneumothorax.", {"Pneumothorax": 0.0}), Sentence("ETT.", {"Support Devices": 1.0})])
    assert normal["No Finding"] == 1.0 and normal["Support Devices"] == 1.0 and normal["Pneumothorax"] == 0.0


@pytest.mark.parametrize("prior,grade,word", [(None, 2, "first"), (0, 1, "new"), (1, 2, "slightly increased"),
                                              (1, 3, "increased"), (3, 2, "slightly decreased"), (3, 1, "decreased"),
                                              (2, 2, "unchanged")])
def test_change_words(prior, grade, word):
    assert change_of(prior, grade) == word


def test_layout_matches_the_real_mimic_example():
    real = REAL.read_text(encoding="utf-8")
    ours = mimic_text("CHEST (PA AND LAT)", "Chest PA and lateral", "___ year old woman with dyspnea  // dyspnea", "___",
                      "Small left pleural effusion, which is new.  No pneumothorax.", "Small left pleural effusion.",
                      "standard")
    for text in (real, ours):
        lines = text.splitlines()
        assert lines[0] == " " * 33 + "FINAL REPORT"
        assert all(line.startswith(" ") for line in lines[1:])
        assert all(len(line) <= 79 for line in lines)
    headers = lambda text: [m.group(1) for m in map(_HEADER_LINE.match, text.splitlines()) if m]  # noqa: E731
    assert headers(ours) == headers(real) == ["EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS", "IMPRESSION"]
    # header spacing as in the real file: two spaces after inline headers, a trailing space after FINDINGS/IMPRESSION
    assert " EXAMINATION:  CHEST (PA AND LAT)" in ours.splitlines() and " FINDINGS: " in ours.splitlines()


def _many_reports(n_patients: int = 60):
    out = []
    for seed in range(n_patients):
        rng = np.random.default_rng(seed)
        anatomy, studies = simulate_patient(rng)
        prior = None
        for study in studies:
            out.append((study, write_study_report(study.state, prior, study.pose.view, anatomy.sex, anatomy.age, rng)))
            prior = study.state
    return out


def test_layouts_comparison_language_and_phi_all_occur():
    reports = _many_reports()
    layouts = {r.layout for _, r in reports}
    assert layouts == {"standard", "combined", "empty_findings", "no_impression", "addendum"}
    text = "\n".join(r.mimic for _, r in reports)
    for phrase in ("new", "slightly increased", "unchanged", "resolved", "No pneumothorax", "___", "FINDINGS/IMPRESSION:",
                   "costophrenic angle", "cardiomegaly", "pulmonary edema", "lobe consolidation", "apical pneumothorax",
                   "nodule", "central venous catheter terminates in the SVC"):
        assert phrase in text, phrase
    for _, r in reports:
        lines = r.mimic.splitlines()
        if r.layout == "addendum":
            underscore = lines.index(" " + "_" * 78)
            assert lines[1].startswith(" ADDENDUM:") and underscore < lines.index(" FINDINGS: ")
        if r.layout == "no_impression":
            assert " IMPRESSION: " not in lines
        if r.layout == "empty_findings":
            i = lines.index(" FINDINGS: ")
            assert lines[i + 2] == " " and lines[i + 3] == " IMPRESSION: "
        if r.layout == "combined":
            assert " FINDINGS/IMPRESSION: " in lines


def test_effusion_sentence_uses_severity_side_and_comparison():
    prior = StudyState.empty()
    state = StudyState.empty()
    state.findings["pleural_effusion_left"] = Finding(True, 1, "left", "costophrenic")
    report = write_study_report(state, prior, "PA", "F", 70, np.random.default_rng(0))
    body = report.findings + " " + report.impression
    assert re.search(r"small left pleural effusion", body, re.IGNORECASE)
    assert re.search(r"new", body)
    assert report.labels["Pleural Effusion"] == 1.0 and report.labels["No Finding"] is None
    # and resolution on the next study
    resolved = write_study_report(StudyState.empty(), state, "PA", "F", 70, np.random.default_rng(0))
    assert "left pleural effusion" in resolved.mimic and re.search("resol", resolved.mimic)
    assert resolved.labels["Pleural Effusion"] == 0.0
