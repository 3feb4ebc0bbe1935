"""Rendering and the truth API: each finding changes the image where it should, measurements rise with severity."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from progemu.synth.anatomy import Pose, canonical_from_image, image_from_canonical, sample_anatomy, sample_pose
from progemu.synth.findings import FINDING_KEYS, key_kind, key_side
from progemu.synth.render import render_frontal
from progemu.synth.render_lateral import render_lateral
from progemu.synth.truth import finding_regions, measure_finding
from synth_fixtures import LOCATION, box_mask as _box_mask, study_state as _state, study_truth as _truth

SIZE = 128


@pytest.fixture(scope="module")
def patient():
    rng = np.random.default_rng(11)
    return sample_anatomy(rng), sample_pose(rng, "PA")


def test_render_shape_dtype_range_and_determinism(patient):
    anatomy, pose = patient
    for size in (128, 256):
        a = render_frontal(anatomy, _state(), pose, size, np.random.default_rng(0))
        b = render_frontal(anatomy, _state(), pose, size, np.random.default_rng(0))
        assert a.shape == (size, size) and a.dtype == np.float32
        assert 0.0 <= a.min() and a.max() <= 1.0 and np.array_equal(a, b)
        lat = render_lateral(anatomy, _state(), pose, size, np.random.default_rng(0))
        assert lat.shape == (size, size) and lat.dtype == np.float32
    # radiograph-like: dark lungs either side of a bright mediastinum, black air outside the body corners
    img = render_frontal(anatomy, _state(), Pose(), SIZE)
    mid = img[40:70]
    assert mid[:, 60:68].mean() - mid[:, 25:45].mean() > 0.25
    assert mid[:, 60:68].mean() - mid[:, 83:103].mean() > 0.25


def test_left_effusion_brightens_left_costophrenic_region_only(patient):
    anatomy, pose = patient
    without = render_frontal(anatomy, _state(), pose, SIZE)
    with_left = render_frontal(anatomy, _state("pleural_effusion_left", 1), pose, SIZE)
    regions = finding_regions(_truth(anatomy, _state("pleural_effusion_left", 1), pose))
    left, right = _box_mask(regions["pleural_effusion_left"]), _box_mask(regions["pleural_effusion_right"])
    assert regions["pleural_effusion_left"][0] > 0.5 > regions["pleural_effusion_right"][2]  # patient left = image right
    diff = with_left - without
    # even a small effusion blunts the angle visibly: a sizeable patch brightens by > 0.15 (~40 grey levels)
    assert diff[left].mean() > 0.03 and (diff[left] > 0.15).sum() >= 25
    assert np.abs(diff[right]).max() < 1e-6  # the right side is untouched


@pytest.mark.parametrize("key", FINDING_KEYS)
def test_every_finding_changes_the_image_inside_its_region(patient, key):
    anatomy, pose = patient
    state = _state(key, 2)
    diff = render_frontal(anatomy, state, pose, SIZE) - render_frontal(anatomy, _state(), pose, SIZE)
    region = _box_mask(finding_regions(_truth(anatomy, state, pose))[key], pad=0.04)
    total = np.abs(diff).sum()
    assert total > 0, key
    inside = np.abs(diff[region]).sum() / total
    assert inside > (0.5 if key not in ("support_devices", "pneumothorax_left", "pneumothorax_right") else 0.35), (key, inside)
    side = key_side(key)
    if side is not None and key_kind(key) != "support_devices":
        other = key.replace(side, "left" if side == "right" else "right")
        mirror = _box_mask(finding_regions(_truth(anatomy, state, pose))[other])
        assert np.abs(diff[mirror]).mean() < 0.01, (key, np.abs(diff[mirror]).mean())


@pytest.mark.parametrize("key", [k for k in FINDING_KEYS if k != "support_devices"])
def test_measurement_is_monotone_in_severity(key):
    rng = np.random.default_rng(5)
    anatomy, pose = sample_anatomy(rng), sample_pose(rng, "PA")
    values = []
    for grade in range(4):
        state = _state(key, grade)
        image = render_frontal(anatomy, state, pose, SIZE, np.random.default_rng(1))
        values.append(measure_finding(image, _truth(anatomy, state, pose), key))
    assert all(b > a + 0.01 for a, b in zip(values, values[1:])), (key, values)


def test_support_devices_measure_rises_when_devices_appear(patient):
    anatomy, pose = patient
    none = measure_finding(render_frontal(anatomy, _state(), pose, SIZE), _truth(anatomy, _state(), pose), "support_devices")
    state = _state("support_devices", 1)
    some = measure_finding(render_frontal(anatomy, state, pose, SIZE), _truth(anatomy, state, pose), "support_devices")
    assert some > none + 0.05


@pytest.mark.parametrize("key", FINDING_KEYS)
def test_measurement_barely_moves_when_finding_absent_in_both(key):
    """Prior and follow-up without the finding (other findings, pose, exposure and noise differ): ~0 change."""
    rng = np.random.default_rng(21)
    anatomy = sample_anatomy(rng)
    pose_a, pose_b = sample_pose(rng, "PA"), sample_pose(rng, "PA")
    side = key_side(key)
    # another finding elsewhere: a lesion in the opposite lung, or an apical pneumothorax for central findings
    other = f"lung_lesion_{'left' if side == 'right' else 'right'}" if side else "pneumothorax_right"
    a_state, b_state = _state(), _state(other, 2)
    a = render_frontal(anatomy, a_state, pose_a, SIZE, np.random.default_rng(2))
    b = render_frontal(anatomy, b_state, pose_b, SIZE, np.random.default_rng(3))
    change = measure_finding(b, _truth(anatomy, b_state, pose_b), key) - measure_finding(a, _truth(anatomy, a_state, pose_a), key)
    present = _state(key, 2)
    grown = measure_finding(render_frontal(anatomy, present, pose_b, SIZE, np.random.default_rng(3)),
                            _truth(anatomy, present, pose_b), key) - measure_finding(a, _truth(anatomy, a_state, pose_a), key)
    assert abs(change) < 0.04 and abs(change) < 0.5 * abs(grown), (key, change, grown)


def test_regions_follow_the_pose():
    rng = np.random.default_rng(3)
    anatomy = sample_anatomy(rng)
    straight = Pose()
    moved = dataclasses.replace(straight, shift_x=0.1, shift_y=-0.06)
    state = _state("lung_lesion_right", 2)
    a = finding_regions(_truth(anatomy, state, straight))["lung_lesion_right"]
    b = finding_regions(_truth(anatomy, state, moved))["lung_lesion_right"]
    # a shift of 0.1 canonical units is 0.05 of the normalised image width
    assert np.allclose([b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]], [0.05, -0.03, 0.05, -0.03], atol=1e-9)
    for key, box in finding_regions(_truth(anatomy, state, sample_pose(rng, "AP"))).items():
        assert 0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0, key


def test_pose_maps_are_inverse():
    pose = Pose(rotation_deg=3.5, scale=1.04, shift_x=0.03, shift_y=-0.02)
    x = np.linspace(-1, 1, 7)
    y = np.linspace(1, -1, 7)
    xi, yi = image_from_canonical(x, y, pose)
    back = canonical_from_image(xi, yi, pose)
    assert np.allclose(back[0], x) and np.allclose(back[1], y)


@pytest.mark.parametrize("key", FINDING_KEYS)
def test_smallest_grade_survives_8x_downsampling_at_128_px(patient, key):
    """A VQ tokenizer with 8x downsampling sees 8x8 blocks: the mildest finding must still move some block."""
    anatomy, pose = patient
    state = _state(key, 1, devices="cvc")
    diff = render_frontal(anatomy, state, pose, 128) - render_frontal(anatomy, _state(), pose, 128)
    blocks = np.abs(diff.reshape(16, 8, 16, 8).mean(axis=(1, 3)))
    assert blocks.max() > 0.04, (key, blocks.max())


def test_no_all_black_edge_rows_or_columns():
    """Curation crops all-dark edge rows/columns (max < 10/255); the synthetic frame must survive it unchanged."""
    from progemu.synth.evolution import simulate_patient

    for seed in range(6):
        rng = np.random.default_rng(seed)
        anatomy, studies = simulate_patient(rng)
        for study in studies:
            for image in (render_frontal(anatomy, study.state, study.pose, SIZE, rng),
                          render_lateral(anatomy, study.state, study.lateral_pose, SIZE, rng)):
                assert image.max(axis=0).min() >= 10 / 255 and image.max(axis=1).min() >= 10 / 255
