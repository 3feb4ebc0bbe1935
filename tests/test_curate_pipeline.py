"""progemu curate on hand-made MIMIC-CXR-JPG / CheXpert Plus trees: outcomes, layout, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate_fixtures import EXPECTED, FakeAnnotator, make_chexpert_plus, make_mimic
from progemu.curate.cli import main
from progemu.curate.config import CurateConfig
from progemu.curate.pipeline import STATE_DIR, run_curation
from progemu.data.icgcxr import load_pairs
from progemu.utils.atomic import read_jsonl

#: every key of the official pair JSONs (shared/reference/formats.md §3)
OFFICIAL_KEYS = {
    "progression-description", "changes-of-findings", "comment", "reference-report", "followup-report",
    "time-interval", "view", "subject-id", "reference-study-id", "followup-study-id", "reference-dicom-id",
    "followup-dicom-id", "reference-study-order", "followup-study-order", "reference-study-index",
    "followup-study-index", "reference-narrative", "followup-narrative", "age", "sex", "race", "ethnicity",
    "recent_bmi", "deceased", "split", "reg_metric", "reference-diseases", "followup-diseases",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return make_mimic(root / "mimic", size=96), make_chexpert_plus(root / "chexpert", size=96)


@pytest.fixture(scope="module")
def curated(sources, tmp_path_factory):
    mimic, chexpert = sources
    out = tmp_path_factory.mktemp("out") / "icg"
    config = CurateConfig(mimic=str(mimic), chexpert_plus=str(chexpert), out=str(out), image_size=64)
    annotator = FakeAnnotator()
    result = run_curation(config, annotator=annotator, progress=False, echo=lambda text: None)
    return out, result, annotator


def test_every_candidate_has_its_expected_outcome(curated):
    out, result, _ = curated
    kept = {p.pair_id for p in result.pairs}
    skipped = {s.record: s.stage for s in result.skipped}
    for record, outcome in EXPECTED.items():
        assert (record in kept) if outcome == "kept" else skipped.get(record) == outcome, record
    assert {"chexpertplus/p00023/i01s0001-i02s0002", "chexpertplus/p00023/i02s0002-i03s0003"} <= kept
    assert len(kept) == 6
    # study-level skips are named too
    assert skipped["mimic_cxr/p10000004/s54000001"] == "read"
    assert skipped["mimic_cxr/p10000003/s53000001"] == "view"
    assert skipped["mimic_cxr/p10000003/s53000002"] == "report"
    assert skipped["chexpertplus/p00031/s0001"] == "view"
    lines = read_jsonl(out / "skipped.jsonl")
    assert {line["record"] for line in lines} == set(skipped) and all(line["reason"] for line in lines)


def test_official_layout_keys_and_loader(curated):
    out, result, _ = curated
    pairs = load_pairs(out)
    assert [p.pair_id for p in pairs] == sorted(p.pair_id for p in result.pairs)
    # the same loader reads the tree without our manifest (as for the official release)
    (out / "manifest.jsonl").rename(out / "manifest.bak")
    try:
        scanned = load_pairs(out)
    finally:
        (out / "manifest.bak").rename(out / "manifest.jsonl")
    assert [(p.pair_id, p.prompt, p.confidence) for p in scanned] == [(p.pair_id, p.prompt, p.confidence) for p in pairs]
    pair = next(p for p in pairs if p.pair_id == "mimic_cxr/p10000001/i02s51111111-i03s59999999")
    assert pair.json_path == out / "mimic_cxr/pa/1/p10/p10000001/i02s51111111-i03s59999999/i02s51111111-i03s59999999.json"
    data = json.loads(pair.json_path.read_text())
    assert set(data) == OFFICIAL_KEYS
    assert data["progression-description"] == "New small left effusion."
    assert data["comment"] == {"confidence": 4, "reason": "fake"}
    assert data["reference-report"] == {"findings": "Tiny left effusion.", "impression": "Tiny left effusion."}
    assert data["time-interval"] == pytest.approx((9 * 3600 + 45 * 60 + 12 - (50 * 60 + 12.5)) / 86400, abs=1e-3)
    assert data["reference-study-order"] == 2 and data["followup-study-order"] == 3
    assert data["reference-dicom-id"] == "d511111110" and data["view"] == "PA"
    assert data["followup-diseases"]["Pleural Effusion"] == 1.0 and data["followup-diseases"]["Edema"] == -100
    metric = data["reg_metric"]
    assert metric["metric"] == "ncc" and metric["ncc_after"] >= metric["ncc_before"]
    for image in (pair.prior_image, pair.followup_image):
        array = np.asarray(Image.open(image))
        assert array.shape == (64, 64) and array.dtype == np.uint8
    chex = json.loads(next(p for p in pairs if p.source == "chexpertplus").json_path.read_text())
    assert chex["time-interval"] is None and chex["age"] == 64 and chex["sex"] == "Female"
    assert "/chexpertplus/pa/1/train/p00023/" in str(next(p for p in pairs if p.source == "chexpertplus").json_path)


def test_registration_improves_alignment_of_shifted_priors(curated):
    _, result, _ = curated
    metrics = [p.reg_metric for p in result.pairs if p.reg_metric["registered"]]
    assert len(metrics) >= 3
    for metric in metrics:
        # NCC is what registration optimises; SSIM on these noisy 64 px phantoms mostly measures
        # the (independent) noise, which interpolation smooths, so it is only checked for sanity
        assert metric["ncc_after"] > metric["ncc_before"] + 0.02 and metric["ssim_after"] > 0.5


def test_dataset_card_counts_every_step(curated):
    out, result, _ = curated
    card = (out / "dataset_card.md").read_text()
    for step, value in [("studies read", 20), ("studies with a frontal PA image", 16),
                        ("studies with findings and impression", 15), ("pairs within --max-days 100 (dated sources)", 9),
                        ("pairs with readable, good-quality images", 8), ("pairs annotated", 7),
                        ("pairs with confidence >= 3", 6), ("pairs written", 6), ("patients in the dataset", 4)]:
        assert f"| {step} | {value} |" in card, step
    assert json.loads((out / "curate_config.json").read_text())["image_size"] == 64


def test_rerun_does_nothing_and_changed_settings_are_refused(curated, sources, capsys):
    out, result, _ = curated
    mimic, chexpert = sources
    again = FakeAnnotator()
    config = CurateConfig(mimic=str(mimic), chexpert_plus=str(chexpert), out=str(out), image_size=64)
    second = run_curation(config, annotator=again, progress=False, echo=lambda text: None)
    assert again.calls == 0 and [p.pair_id for p in second.pairs] == [p.pair_id for p in result.pairs]
    code = main(["--mimic", str(mimic), "--chexpert-plus", str(chexpert), "--out", str(out), "--image-size", "80", "--quiet"])
    assert code == 2 and "--image-size 64 (now 80)" in capsys.readouterr().err


def test_official_split_and_zip_reports(tmp_path):
    mimic = make_mimic(tmp_path / "mimic", size=64, reports="zip")
    out = tmp_path / "out"
    config = CurateConfig(mimic=str(mimic), out=str(out), image_size=48, split="official")
    result = run_curation(config, annotator=FakeAnnotator(), progress=False, echo=lambda text: None)
    splits = {p.pair_id: p.split for p in result.pairs}
    assert splits["mimic_cxr/p10000002/i02s52000002-i03s52000003"] == "test"
    assert splits["mimic_cxr/p10000001/i01s50000003-i02s51111111"] == "train"
    assert len(splits) == 4


def test_hash_split_is_patient_disjoint(tmp_path):
    mimic = make_mimic(tmp_path / "mimic", size=64, extra_patients=12)
    config = CurateConfig(mimic=str(mimic), out=str(tmp_path / "out"), image_size=32, test_fraction=0.3)
    result = run_curation(config, annotator=FakeAnnotator(), progress=False, echo=lambda text: None)
    by_split: dict[str, set] = {}
    for pair in result.pairs:
        by_split.setdefault(pair.split, set()).add(pair.subject_id)
    assert set(by_split) == {"train", "test"} and not (by_split["train"] & by_split["test"])


def test_cli_with_the_rules_annotator(sources, tmp_path, capsys):
    mimic, chexpert = sources
    out = tmp_path / "rules"
    assert main(["--mimic", str(mimic), "--chexpert-plus", str(chexpert), "--out", str(out), "--image-size", "48",
                 "--min-confidence", "1", "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "skipped" in summary and "mimic_cxr/p10000004/s54000001: report not found" in summary
    pairs = load_pairs(out)
    assert len(pairs) >= 6 and all(p.prompt and p.interpretation for p in pairs)
    config = json.loads((out / "curate_config.json").read_text())
    assert config["credentialed"] is True and config["annotator"] == "rules"


def _run_cli(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "progemu.cli", "curate", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and STATE_DIR not in p.parts and p.name not in {"dataset_card.md", "curate_config.json"}}


@pytest.mark.slow  # three subprocess runs: 15-50 s depending on machine load
def test_sigkill_and_resume_give_exactly_the_pairs_of_an_uninterrupted_run(tmp_path):
    mimic = make_mimic(tmp_path / "mimic", size=64, extra_patients=5)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--mimic", str(mimic), "--image-size", "48", "--quiet", "--min-confidence", "1"]
    reference = _run_cli([*common, "--out", str(tmp_path / "ref")], env)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    killed_out = tmp_path / "killed"
    run = _run_cli([*common, "--out", str(killed_out), "--debug-sleep", "0.4"], env)
    journal = killed_out / STATE_DIR / "journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    finished = len(read_jsonl(journal))
    assert 4 <= finished < 20, "the run should be killed half-way"
    assert not (killed_out / "manifest.jsonl").exists()

    resumed = _run_cli([*common, "--out", str(killed_out), "--workers", "2"], env)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resuming: {finished} of" in stdout
    expected, actual = _tree(tmp_path / "ref"), _tree(killed_out)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name] == expected[name], name
    records = [line["record"] for line in read_jsonl(journal)]
    assert len(records) == len(set(records))  # no pair processed twice after the kill
