"""One image path: the same file gives the same model input through every stage (PNG, JPG, DICOM)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from curate_fixtures import write_dicom
from progemu.data.images import make_square, model_input, read_image, resize

SIZE = 32


def _picture() -> np.ndarray:
    """A non-square 8-bit radiograph-like picture (90 x 120) holding both 0 and 255."""
    y, x = np.mgrid[0:90, 0:120]
    lungs = np.exp(-(((x - 35) / 18.0) ** 2 + ((y - 45) / 30.0) ** 2)) + np.exp(-(((x - 85) / 18.0) ** 2 + ((y - 45) / 30.0) ** 2))
    image = 0.75 - 0.55 * lungs + 0.1 * np.sin(y / 3.0)
    pixels = np.clip(np.rint(255 * (image - image.min()) / (image.max() - image.min())), 0, 255).astype(np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255
    return pixels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image_path")
    pixels = _picture()
    Image.fromarray(pixels).save(folder / "prior.png")
    Image.fromarray(pixels).save(folder / "prior.jpg", quality=95)
    write_dicom(folder / "prior.dcm", pixels, bits=8)
    return {"png": folder / "prior.png", "jpg": folder / "prior.jpg", "dcm": folder / "prior.dcm"}


def _stage_inputs(path) -> dict[str, np.ndarray]:
    """What each stage hands the image tokenizer for ``path`` (float32 [SIZE, SIZE])."""
    from progemu.curate.preprocess import resize_square
    from progemu.evaluate.images import load_stack
    from progemu.generate.inputs import load_prior
    from progemu.generate.pipeline import ProgEmuPipeline
    from progemu.serve.inputs import load_prior as serve_load_prior
    from progemu.tokenizer.images import load_image

    seen = []

    def encode(batch):
        seen.append(batch.numpy()[:, 0])
        return torch.zeros((batch.shape[0], 4, 4), dtype=torch.long)

    fake = types.SimpleNamespace(image_tokenizer=types.SimpleNamespace(image_size=SIZE, encode=encode))
    ProgEmuPipeline.encode_priors(fake, [load_prior(path), serve_load_prior(path)])
    return {"curate": resize_square(read_image(path), SIZE), "tokenizer": load_image(path, SIZE),
            "generate": seen[0][0], "serve": seen[0][1], "evaluate": load_stack([path], SIZE)[0, 0]}


def test_every_stage_sees_the_same_input(files):
    by_format = {}
    for name, path in files.items():
        inputs = _stage_inputs(path)
        reference = inputs["tokenizer"]
        assert reference.shape == (SIZE, SIZE) and reference.dtype == np.float32
        for stage, array in inputs.items():
            np.testing.assert_array_equal(array, reference, err_msg=f"{name}: {stage} differs from the tokenizer's input")
        by_format[name] = reference
    # the DICOM holds the PNG's pixels (0 and 255 present, so its min-max scaling is x / 255)
    np.testing.assert_array_equal(by_format["dcm"], by_format["png"])
    assert np.abs(by_format["jpg"] - by_format["png"]).mean() < 0.01  # lossy, but the same picture


def test_square_policies_and_resize_by_hand():
    image = np.arange(12, dtype=np.float32).reshape(3, 4) / 11
    assert make_square(image, "stretch") is image
    np.testing.assert_array_equal(make_square(image, "crop"), image[:, :3])
    padded = make_square(image, "pad")
    assert padded.shape == (4, 4)
    np.testing.assert_array_equal(padded[:3], image)  # top = (4 - 3) // 2 = 0: the black row goes below
    np.testing.assert_array_equal(padded[3], 0)
    flat = np.full((10, 7), 0.25, np.float32)  # a constant image stays constant whatever the filter
    np.testing.assert_allclose(resize(flat, 4), 0.25, atol=1e-6)
    np.testing.assert_allclose(model_input(flat, (5)), 0.25, atol=1e-6)
    with pytest.raises(ValueError, match="square policy"):
        make_square(image, "zoom")
