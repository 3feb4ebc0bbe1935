"""Synthetic world -> progemu curate end to end, with the rules annotator and the LLM annotator
against a loopback OpenAI-compatible server; checked against the world's ground truth."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from PIL import Image

from progemu.curate.cli import main
from progemu.data.icgcxr import load_pairs
from progemu.utils.atomic import read_jsonl

synth_cli = pytest.importorskip("progemu.synth.cli")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    assert synth_cli.main(["--out", str(root), "--patients", "20", "--image-size", "128"]) == 0
    truth = {}
    for record in read_jsonl(root / "ground_truth.jsonl"):
        if record["dataset"] == "mimic":
            truth[(record["subject_id"], record["study_id"])] = record
    return root, truth


@pytest.fixture(scope="module")
def rules_run(world, tmp_path_factory):
    root, _ = world
    out = tmp_path_factory.mktemp("curated") / "icg"
    code = main(["--mimic", str(root / "mimic-cxr-jpg"), "--chexpert-plus", str(root / "chexpert-plus"),
                 "--out", str(out), "--image-size", "128", "--quiet"])
    assert code == 0
    return out


def test_rules_run_layout_counts_and_ground_truth(world, rules_run):
    root, truth = world
    out = rules_run
    pairs = load_pairs(out)
    manifest = read_jsonl(out / "manifest.jsonl")
    jsons = sorted(out.rglob("i*s*-i*s*.json"))
    assert len(pairs) == len(manifest) == len(jsons) >= 10
    card = (out / "dataset_card.md").read_text()
    assert f"| pairs written | {len(pairs)} |" in card
    counts = [int(line.rsplit("|", 2)[1]) for line in card.splitlines()
              if line.startswith("| ") and line.rstrip().endswith("|") and "pairs" in line and "split" not in line
              and line.split("|")[2].strip().isdigit()]
    assert counts == sorted(counts, reverse=True)  # every filter step only removes
    config = json.loads((out / "curate_config.json").read_text())
    assert config["credentialed"] is False  # synth_config.json detected
    for pair in pairs:
        assert pair.prompt and pair.interpretation and pair.confidence >= 3
        for image in (pair.prior_image, pair.followup_image):
            assert Image.open(image).size == (128, 128)
        data = json.loads(pair.json_path.read_text())
        if pair.source != "mimic_cxr":
            assert data["time-interval"] is None
            continue
        prior = truth[(pair.subject_id, pair.prior_study_id)]
        followup = truth[(pair.subject_id, pair.followup_study_id)]
        # independent check against the world's hidden truth: PA frontal images, true order and interval
        assert prior["view"] == followup["view"] == "PA"
        assert data["reference-dicom-id"] == prior["dicom_id_frontal"]
        assert data["followup-dicom-id"] == followup["dicom_id_frontal"]
        assert (pair.prior_order, pair.followup_order) == (prior["study_order"], followup["study_order"])
        interval = (dt.datetime.fromisoformat(followup["study_datetime"])
                    - dt.datetime.fromisoformat(prior["study_datetime"])).total_seconds() / 86400
        assert data["time-interval"] == pytest.approx(interval, abs=1e-3) and interval <= 100
        assert "blank_image" not in prior["faults"] + followup["faults"]
    # a blank frontal plate (an injected fault) is rejected as an image without anatomy
    blank = {record["dicom_id_frontal"] for record in truth.values() if "blank_image" in record["faults"]}
    image_skips = [s for s in read_jsonl(out / "skipped.jsonl") if s["stage"] == "image"]
    for skip in image_skips:
        if any(dicom in skip["reason"] for dicom in blank):
            assert "no anatomy" in skip["reason"]


def test_llm_annotator_through_a_loopback_server(world, tmp_path, monkeypatch):
    fake = pytest.importorskip("fake_llm_server")
    root, _ = world
    monkeypatch.setenv("PROGEMU_TEST_LLM_KEY", "sk-test")
    out = tmp_path / "llm"
    args = ["--mimic", str(root / "mimic-cxr-jpg"), "--out", str(out), "--image-size", "64", "--quiet",
            "--annotator", "llm", "--llm-model", "fake", "--llm-api-key-env", "PROGEMU_TEST_LLM_KEY",
            "--llm-concurrency", "2", "--limit-patients", "8"]
    with fake.FakeLLMServer(["ratelimit", "malformed"]) as server:
        assert main([*args, "--llm-base-url", server.base_url]) == 0
        calls = server.calls
        pairs = load_pairs(out)
        assert pairs and all(p.prompt == fake.GOOD_ANSWER["prompt"] and p.confidence == 5 for p in pairs)
        assert calls >= len(pairs) + 2  # the rate-limited and malformed answers were retried
        assert main([*args, "--llm-base-url", server.base_url]) == 0
        assert server.calls == calls  # a re-run makes no new call
