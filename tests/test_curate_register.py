"""Image clean-up and SimpleITK registration of curation, on phantoms and real longitudinal radiographs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curate_fixtures import phantom
from progemu.curate.preprocess import QualityConfig, prepare_image, quality_problem, remove_black_border, resize_square
from progemu.curate.register import RegistrationConfig, ncc, register_official, register_pair, similarity

REAL = Path("/work/shared/data/real")
if not REAL.exists():
    REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
HANNOVER = REAL / "hannover" / "png"


@pytest.fixture(autouse=True)
def _one_itk_thread():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _warp(image: np.ndarray, angle_deg: float, shift: tuple[float, float], scale: float) -> np.ndarray:
    """Apply a known similarity transform about the centre (SimpleITK, linear)."""
    import SimpleITK as sitk

    source = sitk.GetImageFromArray(image.astype(np.float32))
    transform = sitk.Similarity2DTransform(scale, np.deg2rad(angle_deg), shift,
                                           ((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2))
    return np.clip(sitk.GetArrayFromImage(sitk.Resample(source, source, transform, sitk.sitkLinear, 0.15)), 0, 1)


def test_black_border_removal_by_hand():
    image = np.full((10, 12), 0.5, np.float32)
    image[:3] = 0.0  # three black rows on top
    image[:, -2:] = 0.01  # two nearly black columns on the right
    image[6] = 0.0  # a dark row *inside* the image stays
    cropped, border = remove_black_border(image)
    assert border == (3, 0, 0, 2) and cropped.shape == (7, 10)
    assert np.all(cropped[3] == 0.0)
    blank = np.zeros((5, 5), np.float32)
    assert remove_black_border(blank)[1] == (0, 0, 0, 0)


def test_resize_modes_and_quality_checks():
    image = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (20, 1))  # 20 x 40, horizontal ramp
    for mode in ("stretch", "crop", "pad"):
        out = resize_square(image, 16, mode)
        assert out.shape == (16, 16) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(resize_square(np.full((30, 50), 0.25, np.float32), 16), 0.25, atol=1e-5)
    padded = resize_square(image, 40, "pad")
    assert np.all(padded[:5] == 0) and padded[20].max() > 0.9  # 10 black rows above (20 px -> 40 px)
    quality = QualityConfig()
    assert "low contrast" in quality_problem(np.full((100, 100), 0.4, np.float32), quality)
    assert "too small" in quality_problem(image, quality, source_shape=(20, 40))
    saturated = np.zeros((100, 100), np.float32)
    saturated[:, :30] = np.linspace(0.2, 0.8, 30)
    assert "saturated" in quality_problem(saturated, quality)
    rng = np.random.default_rng(0)
    ramp = np.clip(np.linspace(0.2, 0.8, 128)[None, :] + rng.normal(0, 0.02, (128, 128)), 0, 1).astype(np.float32)
    assert "no anatomy" in quality_problem(ramp, quality)  # a test pattern, not a chest
    ok, problem = prepare_image(phantom(96), 64, quality)
    assert problem is None and ok.shape == (64, 64)


def test_ncc_matches_numpy_and_ssim_of_identical_images_is_one():
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)), rng.random((32, 32))
    assert ncc(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    assert ncc(a, 2 * a + 1) == pytest.approx(1.0)
    assert similarity(a.astype(np.float32), a.astype(np.float32)) == pytest.approx((1.0, 1.0))


def test_known_transform_is_recovered_at_least_as_well_as_the_official_settings():
    fixed = phantom(128, seed=1)
    moving = _warp(fixed, angle_deg=4.0, shift=(6.0, -5.0), scale=1.04)
    config = RegistrationConfig(skip_if_ssim_above=1.01)
    ours = register_pair(moving, fixed, config)
    official = register_official(moving, fixed)
    assert ours.registered and ours.ncc_before < 0.9
    assert ours.ncc_after > 0.98
    assert ours.ncc_after >= official.ncc_after - 0.005
    # moving(x) = fixed(T x), so the transform found (follow-up -> prior coordinates) is T^-1:
    # its matrix is the inverse similarity (scale 1/1.04, rotation -4 degrees)
    matrix = np.array(ours.matrix).reshape(2, 2)
    assert np.linalg.det(matrix) == pytest.approx(1 / 1.04 ** 2, rel=0.01)
    assert np.rad2deg(np.arctan2(matrix[1, 0], matrix[0, 0])) == pytest.approx(-4.0, abs=0.5)
    # deterministic: same inputs, same result bit for bit
    again = register_pair(moving, fixed, config)
    np.testing.assert_array_equal(again.prior, ours.prior)


def test_already_aligned_pair_is_kept_unregistered():
    image = phantom(64)
    result = register_pair(image, image)
    assert not result.registered and result.method.startswith("none") and result.ssim_after == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        register_pair(image, image[:32])


@pytest.mark.skipif(not HANNOVER.exists(), reason="real Hannover radiographs not present")
def test_real_longitudinal_pair_gets_better_aligned():
    from progemu.data.images import read_image

    # patient 042f06a9: admission day -5 (prior) and day -2 (follow-up), both AP
    quality = QualityConfig()
    prior, _ = prepare_image(read_image(HANNOVER / "53c9be49.png"), 256, quality)
    followup, _ = prepare_image(read_image(HANNOVER / "c9280a30.png"), 256, quality)
    result = register_pair(prior, followup, RegistrationConfig(skip_if_ssim_above=1.01))
    assert result.registered
    assert result.ncc_after > result.ncc_before + 0.05
    metric = result.reg_metric()
    assert metric["metric"] == "ncc" and set(metric) >= {"ncc_before", "ncc_after", "ssim_before", "ssim_after"}
