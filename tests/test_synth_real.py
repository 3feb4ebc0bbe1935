"""`progemu synth --anatomy real`: real radiographs as anatomy, inserted findings, splits by base image, packaging."""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from progemu.data.labels import CHEXPERT_LABELS
from progemu.synth.anatomy import Pose, canonical_from_image
from progemu.synth.geometry import heart_shape
from progemu.synth.render import pixel_grid
from progemu.synth.cli import main as synth_main
from progemu.synth.findings import FINDING_KEYS, FINDING_LABEL, key_kind, key_side
from progemu.synth.real_anatomy import RealAnatomy, base_coords, sample_real_anatomy
from progemu.synth.real_assets import ASSET_DIR, anatomy_ids, anatomy_index, held_out_priors, load_base
from progemu.synth.real_render import render_real_frontal
from progemu.synth.truth import finding_regions, load_ground_truth, measure_finding
from synth_fixtures import LOCATION, box_mask as _box_mask, study_state as _state, study_truth as _truth

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path("/work/shared/data/real")
SIZE = 128
PATIENTS, WORLD_SIZE = 16, 64


@pytest.fixture(scope="module")
def patient():
    an = sample_real_anatomy(np.random.default_rng(3), "0a7faa2a")  # a PA base with a clear chest
    return an, Pose(rotation_deg=2.0, scale=1.02, shift_x=0.02, shift_y=-0.01, exposure=1.05)


def _world(root: Path, seed: int, workers: int = 1, patients: int = PATIENTS, size: int = WORLD_SIZE) -> Path:
    assert synth_main(["--anatomy", "real", "--out", str(root), "--patients", str(patients), "--image-size", str(size),
                       "--seed", str(seed), "--workers", str(workers), "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _world(tmp_path_factory.mktemp("real") / "w", seed=5)


def _digest(root: Path) -> dict[str, str]:
    """The world's files; the command's lock file and done marker (not written by ``write_world``) aside."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in {".progemu.lock", "synth_done.json"}}


# ---- assets, hold-out, packaging -----------------------------------------------------------------------------------

def test_assets_are_small_masked_256px_and_exclude_the_held_out_patients():
    index = anatomy_index()
    ids = anatomy_ids()
    assert len(ids) == 63 and all(rec["has_mask"] for rec in index["images"])
    total = sum(p.stat().st_size for p in ASSET_DIR.rglob("*") if p.is_file())
    assert total < 4_000_000, total
    image, mask = load_base(ids[0])
    assert image.shape == mask.shape == (256, 256) and 0.05 < mask.mean() < 0.6
    held = json.loads((ASSET_DIR / "held_out.json").read_text())["held_out"]
    held_patients = {r["patient_id"] for r in held}
    assert not held_patients & {r["patient_id"] for r in index["images"]}
    assert not {r["image_id"] for r in held} & set(ids)
    # the first ten pa rows of data.csv are all held out, plus further PA patients with masks
    rows = list(csv.DictReader(open(SHARED_REAL / "hannover" / "data.csv", newline="")))
    first_pa = [r for r in rows if r["projection"] == "pa"][:10]
    assert {r["image_id"] for r in first_pa} <= {r["image_id"] for r in held}
    extra = {r["patient_id"] for r in held if "mask" in r["reason"]}
    assert len(extra) == 4 and all(any(r["has_mask"] and r["projection"] == "pa" for r in held if r["patient_id"] == p)
                                   for p in extra)


def test_held_out_priors_gives_paths_and_masks():
    priors = held_out_priors(SHARED_REAL)
    assert len(priors) == 26 and all(p["image"].exists() for p in priors)
    masked = held_out_priors(SHARED_REAL, masked_only=True)
    assert len(masked) == 14 and all(p["mask"] is not None and p["mask"].exists() for p in masked)
    with pytest.raises(FileNotFoundError, match="missing"):
        held_out_priors(Path("/nonexistent"))


def test_notice_files_and_package_data_config():
    for notice in (REPO / "NOTICE", ASSET_DIR / "NOTICE"):
        text = notice.read_text()
        assert "CC BY 3.0" in text and "CC BY 4.0" in text and "Winther" in text and "V7 Labs" in text
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"assets/**/*"' in pyproject  # package-data ships assets/anatomy/* (NOTICE included)


@pytest.mark.slow
def test_built_wheel_contains_anatomy_and_notice(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, timeout=300)
    wheel = next(tmp_path.glob("progemu-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "progemu/assets/anatomy/NOTICE" in names and "progemu/assets/anatomy/index.json" in names
    assert "progemu/assets/anatomy/held_out.json" in names
    assert sum(n.startswith("progemu/assets/anatomy/images/") for n in names) == 63
    assert sum(n.startswith("progemu/assets/anatomy/masks/") for n in names) == 63


# ---- rendering: findings where they belong, deformation where it belongs ------------------------------------------

def test_identity_deformation_reproduces_the_base(patient):
    an, _ = patient
    flat = dataclasses.replace(an, zoom=1.0, aspect=1.0, rotation_deg=0.0, shear=0.0, center_u=0.0, center_v=0.0,
                               warp_amplitude=0.0, contrast=1.0, brightness=0.0)
    image = render_real_frontal(flat, _state(), Pose(), 256)
    base = load_base(an.base_image)[0]
    assert np.corrcoef(image.ravel(), base.ravel())[0, 1] > 0.999


def test_patient_deformation_is_smooth_and_small(patient):
    an, _ = patient
    c = np.linspace(-1, 1, 65, dtype=np.float32)
    x, y = np.meshgrid(c, c)
    u, v = base_coords(x, y, an)
    u0, v0 = base_coords(x, y, dataclasses.replace(an, warp_amplitude=0.0))
    displacement = np.hypot(u - u0, v - v0)
    assert 0.0 < displacement.max() < 5 * an.warp_amplitude
    # smooth: neighbouring grid points (1/32 apart) move by much less than their distance
    assert np.abs(np.diff(u - u0, axis=1)).max() < 0.2 * (2 / 64)


def test_inspiration_moves_only_what_lies_below_the_apex(patient):
    an, pose = patient
    still = render_real_frontal(an, _state(), pose, SIZE)
    deep = render_real_frontal(an, _state(), dataclasses.replace(pose, inspiration=0.03), SIZE)
    diff = np.abs(deep - still)
    rows_above = int(((an.apex_y - 0.06) * pose.scale + pose.shift_y + 1) / 2 * SIZE)
    assert diff[:rows_above].max() < 1e-6 and diff.max() > 0.05


def test_render_is_deterministic_and_in_range(patient):
    an, pose = patient
    a = render_real_frontal(an, _state("edema"), pose, SIZE, np.random.default_rng(1))
    b = render_real_frontal(an, _state("edema"), pose, SIZE, np.random.default_rng(1))
    assert a.dtype == np.float32 and a.shape == (SIZE, SIZE) and np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0


@pytest.mark.parametrize("key", FINDING_KEYS)
def test_every_inserted_finding_changes_only_its_region(patient, key):
    an, pose = patient
    state = _state(key, 2)
    diff = np.abs(render_real_frontal(an, state, pose, SIZE) - render_real_frontal(an, _state(), pose, SIZE))
    boxes = finding_regions(_truth(an, state, pose))
    total = diff.sum()
    assert total > 1.0, key
    region = _box_mask(boxes[key], pad=0.06)
    if key == "cardiomegaly":  # both heart borders widen: the warp's window about the heart
        x, y = canonical_from_image(*pixel_grid(SIZE), pose)
        cx, cy, hw0, hh = heart_shape(an, 0, "PA", pose.inspiration)
        region = (np.abs(x - cx) < 1.42 * 1.08 * hw0 + 0.4) & (y > cy - hh - 0.25) & (y < cy + 0.45)
        assert diff[_box_mask(boxes[key])].mean() > 2 * diff.mean()
    inside = diff[region].sum() / total
    # a pneumothorax runs from the apex down the lateral wall; its box is the apical part
    floor = {"support_devices": 0.9, "pneumothorax_right": 0.5, "pneumothorax_left": 0.5}.get(key, 0.7)
    assert inside > floor, (key, inside)
    side = key_side(key)
    if side is not None and key_kind(key) != "support_devices":
        mirror = _box_mask(boxes[key.replace(side, "left" if side == "right" else "right")])
        assert diff[mirror].mean() < 0.003, (key, diff[mirror].mean())


@pytest.mark.parametrize("key", [k for k in FINDING_KEYS if k != "support_devices"])
def test_measurement_rises_with_severity(patient, key):
    an, pose = patient
    values = [measure_finding(render_real_frontal(an, _state(key, g), pose, SIZE), _truth(an, _state(key, g), pose), key)
              for g in range(4)]
    assert all(b > a + 0.003 for a, b in zip(values, values[1:])), (key, values)


def test_measurement_ignores_exposure(patient):
    an, pose = patient
    dark = dataclasses.replace(pose, exposure=0.9)
    bright = dataclasses.replace(pose, exposure=1.12)
    for key in ("pleural_effusion_left", "consolidation_right", "edema", "pneumothorax_right"):
        a = measure_finding(render_real_frontal(an, _state(), dark, SIZE), _truth(an, _state(), dark), key)
        b = measure_finding(render_real_frontal(an, _state(), bright, SIZE), _truth(an, _state(), bright), key)
        assert abs(a - b) < 0.005, (key, a, b)


# ---- the world on disk -----------------------------------------------------------------------------------------------

def test_same_seed_is_byte_identical_for_any_workers(world, tmp_path):
    again = _world(tmp_path / "again", seed=5, workers=2)
    assert _digest(again) == _digest(world)
    other = _world(tmp_path / "other", seed=6)
    assert _digest(other) != _digest(world)


def test_ground_truth_names_the_base_and_groups_are_in_one_split(world):
    truth = load_ground_truth(world)
    assert len(truth) >= 2 * PATIENTS
    groups: dict[str, set] = {}
    for t in truth.values():
        assert isinstance(t.anatomy, RealAnatomy) and t.raw["anatomy_id"] == t.anatomy.base_image
        assert t.raw["anatomy_id"] in anatomy_ids() and t.raw["base_findings"] == "unknown, stable"
        group = t.raw["anatomy_group"]
        assert group == f"hannover:{t.anatomy.base_patient}"
        side = "test" if t.split == "test" or t.split == "valid" else t.split
        groups.setdefault(group, set()).add(side)
    assert all(len(s) == 1 for s in groups.values()), groups
    assert (world / "NOTICE").read_text() == (ASSET_DIR / "NOTICE").read_text()
    for root, key in (("mimic-cxr-jpg", "subject_id"), ("chexpert-plus", "deid_patient_id")):
        rows = list(csv.DictReader(open(world / root / "split_groups.csv", newline="")))
        listed = {r["subject_id"]: r["group"] for r in rows}
        for t in truth.values():
            if (root == "mimic-cxr-jpg") == (t.dataset == "mimic"):
                assert listed[t.raw[key]] == t.raw["anatomy_group"]


def test_official_split_csv_follows_the_groups(world):
    truth = load_ground_truth(world)
    text = gzip.decompress((world / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv.gz").read_bytes()).decode()
    split_of = {r["subject_id"]: r["split"] for r in csv.DictReader(io.StringIO(text))}
    by_group: dict[str, set] = {}
    for t in truth.values():
        if t.dataset == "mimic":
            by_group.setdefault(t.raw["anatomy_group"], set()).add(split_of[t.subject_id])
    assert by_group and all(len(s) == 1 for s in by_group.values())


def test_frontal_images_keep_the_base_anatomy(world):
    ncc = []
    for t in load_ground_truth(world).values():
        if {"blank_image", "truncated_image"} & set(t.faults):
            continue
        image = np.asarray(Image.open(t.frontal_image).convert("L"), np.float32)
        base = np.asarray(Image.fromarray(load_base(t.raw["anatomy_id"])[0]).resize(image.shape[::-1], Image.BILINEAR))
        ncc.append(np.corrcoef(image.ravel(), base.ravel())[0, 1])
    assert np.mean(ncc) > 0.55, np.mean(ncc)


def test_report_label_csv_and_ground_truth_agree_for_every_study(world):
    truth = load_ground_truth(world)
    text = gzip.decompress((world / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-chexpert.csv.gz").read_bytes()).decode()
    csv_labels = {(r["subject_id"], r["study_id"]): r for r in csv.DictReader(io.StringIO(text))}
    with open(world / "chexpert-plus" / "df_chexpert_plus_240401.csv", newline="", encoding="utf-8") as handle:
        plus = {(r["deid_patient_id"], r["patient_report_date_order"]): r for r in csv.DictReader(handle)
                if r["frontal_lateral"] == "Frontal"}
    checked = 0
    for key, t in truth.items():
        if "missing_report" in t.faults:
            continue
        if t.dataset == "mimic":
            row = csv_labels[key]
            assert {n: (float(row[n]) if row[n] else None) for n in CHEXPERT_LABELS} == t.labels, key
            shown = t.report_path.read_text(encoding="utf-8").lower()
        else:
            row = plus[key]
            shown = (row["section_findings"] + " " + row["section_impression"]).lower()
        for finding_key in FINDING_KEYS:
            if t.state[finding_key].present:
                assert t.labels[FINDING_LABEL[key_kind(finding_key)]] == 1.0, (key, finding_key)
        for label in set(FINDING_LABEL.values()):
            kinds = [k for k in FINDING_KEYS if FINDING_LABEL[key_kind(k)] == label]
            if not any(t.state[k].present for k in kinds):
                assert t.labels[label] in (0.0, None), (key, label)
        if t.state["pleural_effusion_left"].present or t.state["pleural_effusion_right"].present:
            assert "effusion" in shown, key
        checked += 1
    assert checked >= 2 * PATIENTS - 4


def test_curation_keeps_every_base_image_in_one_split(tmp_path):
    from progemu.curate.cli import main as curate_main

    world = _world(tmp_path / "w", seed=11, patients=40, size=64)
    out = tmp_path / "curated"
    assert curate_main(["--mimic", str(world / "mimic-cxr-jpg"), "--chexpert-plus", str(world / "chexpert-plus"),
                        "--out", str(out), "--image-size", "64", "--test-fraction", "0.3", "--quiet"]) == 0
    truth = load_ground_truth(world)
    group = {}
    for t in truth.values():
        source = "mimic_cxr" if t.dataset == "mimic" else "chexpertplus"
        subject = t.subject_id if t.dataset == "mimic" else t.deid_patient_id.removeprefix("patient")
        group[(source, subject)] = t.raw["anatomy_group"]
    splits: dict[str, set] = {}
    pairs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for pair in pairs:
        splits.setdefault(group[(pair["source"], pair["subject_id"])], set()).add(pair["split"])
    assert len(pairs) > 10 and {"train", "test"} <= set().union(*splits.values())
    assert all(len(s) == 1 for s in splits.values()), splits
    card = (out / "dataset_card.md").read_text()
    assert "Third-party images and attribution" in card and "CC BY 3.0" in card and "V7 Labs" in card


def test_hash_split_uses_the_group_when_given():
    from progemu.curate.select import assign_split
    from progemu.data.mimic import Study

    studies = [Study("mimic_cxr", str(10_000_000 + i), "1", images=[]) for i in range(200)]
    by_subject = {assign_split(s, "hash", 0.5, 0) for s in studies}
    by_group = {assign_split(s, "hash", 0.5, 0, group="hannover:abc") for s in studies}
    assert by_subject == {"train", "test"} and len(by_group) == 1
