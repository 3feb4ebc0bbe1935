"""progemu.data.images.read_image on real radiographs and on hand-made edge cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate_fixtures import write_dicom as _write_dicom
from progemu.data.images import is_dicom, read_image

REAL = Path("/work/shared/data/real")
if not REAL.exists():  # CI clones sit beside ../shared
    REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
XRV = REAL / "xrv"
DICOM = XRV / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
needs_real = pytest.mark.skipif(not XRV.exists(), reason="real test data (../shared/data/real) not present")


@needs_real
def test_real_dicom_jpeg_compressed_and_monochrome1_is_inverted():
    normal = read_image(DICOM)
    inverted = read_image(XRV / "Fake_MONOHR1.dcm")
    assert normal.shape == (1024, 1024) and normal.dtype == np.float32
    assert normal.min() == 0.0 and normal.max() == 1.0
    # the MONOCHROME1 file holds the same stored pixels: reading must give 1 - image
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)
    assert is_dicom(DICOM)


@needs_real
def test_real_pngs_match_pil_scaled_by_255():
    for path in [XRV / "00000001_000.png", REAL / "hannover" / "png" / "006f3a8a.png"]:
        image = read_image(path)
        expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        np.testing.assert_allclose(image, expected, atol=1e-7)
        assert image.dtype == np.float32 and image.ndim == 2


def test_16_bit_png_and_rgb_jpg(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(image, ramp / 65535.0, atol=1e-6)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # pure red -> luma 0.299 * 200
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    np.testing.assert_allclose(read_image(tmp_path / "colour.png"), round(0.299 * 200) / 255.0, atol=1 / 255)
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    assert abs(float(read_image(tmp_path / "colour.jpg").mean()) - 0.299 * 200 / 255) < 3 / 255


def test_12_bit_dicom_with_window_and_monochrome1(tmp_path):
    pixels = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))  # 8 x 64, 0..4032
    plain = read_image(_write_dicom(tmp_path / "plain.dcm", pixels, bits=12))
    np.testing.assert_allclose(plain, pixels / 4032.0, atol=1e-6)
    # window centre 2048 width 1024 (linear, DICOM PS3.3 C.11.2.1.2): values <= 1536 black, >= 2560 white
    windowed = read_image(_write_dicom(tmp_path / "win.dcm", pixels, bits=12, WindowCenter=2048, WindowWidth=1024))
    row = windowed[0]
    assert np.all(row[pixels[0] <= 1536] == 0.0) and np.all(row[pixels[0] >= 2560] == 1.0)
    middle = (pixels[0] > 1600) & (pixels[0] < 2500)
    assert np.all(np.diff(row[middle]) > 0)
    mono1 = read_image(_write_dicom(tmp_path / "m1.dcm", pixels, bits=12, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - plain, atol=1e-6)


def test_16_bit_dicom_with_rescale(tmp_path):
    pixels = np.array([[0, 1000], [30000, 60000]], dtype=np.uint16).repeat(4, 0).repeat(4, 1)
    image = read_image(_write_dicom(tmp_path / "r.dcm", pixels, bits=16, RescaleSlope=2, RescaleIntercept=-1024))
    np.testing.assert_allclose(image[::4, ::4], pixels[::4, ::4] / 60000.0, atol=1e-6)


def test_bad_files_raise_value_error_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    fake = bytearray(128) + b"DICM" + b"\x00" * 10
    (tmp_path / "broken.dcm").write_bytes(bytes(fake))
    for name in ["trunc.png", "notes.jpg", "empty.png", "broken.dcm"]:
        with pytest.raises(ValueError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
