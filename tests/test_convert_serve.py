"""A converted BAAI-format checkpoint served by ``progemu serve`` (CLI subprocess + gradio_client), with the
same counterfactual as ``ProgEmuPipeline`` gives for the same prior, prompt and seed."""
from __future__ import annotations

import numpy as np
import pytest

import convert_fixtures as cf
from serve_fixtures import ServeProcess, write_test_images


@pytest.mark.slow
def test_serve_a_converted_checkpoint(tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file
    from PIL import Image

    from progemu.convert import ConvertConfig, convert
    from progemu.generate.pipeline import ProgEmuPipeline

    cf.write_baai_model(tmp_path / "Emu3-Gen", 64)
    cf.write_baai_vq(tmp_path / "Emu3-VisionTokenizer", 64)
    out = convert(ConvertConfig(model=str(tmp_path / "Emu3-Gen"), vision_tokenizer=str(tmp_path / "Emu3-VisionTokenizer"),
                                out=str(tmp_path / "converted"), image_size=16)).out
    images = write_test_images(tmp_path / "images")
    prompt = "New left pleural effusion has developed."
    with ServeProcess(["--model", str(out)], tmp_path / "tmp") as url:
        client = Client(url, verbose=False)
        outputs = client.predict(handle_file(str(images["chest"])), None, prompt, 1, 1.0, 5, api_name="/generate")
        client.close()
    pipe = ProgEmuPipeline.from_pretrained(out, device="cpu")
    prior = np.asarray(Image.open(images["chest"]), np.float32) / 255.0
    expected = pipe(prior, prompt, samples=1, cfg_scale=1.0, seed=5)
    counterfactual = np.asarray(Image.open(outputs[0][1]).convert("L"), np.float32)[::2, ::2] / 255.0
    np.testing.assert_allclose(counterfactual, expected.counterfactuals[0], atol=1.5 / 255)
    assert "1 sample(s)" in outputs[8]
