"""``progemu serve`` end to end: argument errors, and the real path (tiny checkpoint -> CLI server ->
gradio_client) giving exactly what ``ProgEmuPipeline`` gives for the same prior, prompt and seed."""
from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from serve_fixtures import ServeProcess, tiny_real_checkpoint, write_test_images


def test_help_and_missing_model(tmp_path, capsys):
    from progemu.serve.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--model" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "nope")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--examples", str(tmp_path / "no-examples")]) == 2
    assert "example folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serves_a_real_checkpoint(tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file
    from PIL import Image

    from progemu.generate.pipeline import ProgEmuPipeline

    checkpoint = tiny_real_checkpoint()
    images = write_test_images(tmp_path / "images")
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(images["chest"], examples / "synthetic-chest.png")
    (examples / "synthetic-chest.json").write_text(json.dumps({"prompt": "New left pleural effusion has developed."}))
    prompt = "New left pleural effusion has developed."

    server = ServeProcess(["--model", str(checkpoint), "--examples", str(examples)], tmp_path / "tmp")
    with server as url:
        client = Client(url, verbose=False)
        outputs = client.predict(handle_file(str(images["chest"])), None, prompt, 2, 3.0, 5, api_name="/generate")
        by_example = client.predict(None, "synthetic-chest", prompt, 1, 3.0, 5, api_name="/generate")
        client.close()
        assert any(path.name.startswith("progemu-serve-") for path in server.tmpdir.iterdir())
    assert server.process.returncode == 0, "".join(server.output[-20:])
    # the private upload cache is gone with the server
    assert not any(path.name.startswith("progemu-serve-") for path in server.tmpdir.iterdir())

    # The same request straight through the pipeline (same process-independent seeds).
    pipe = ProgEmuPipeline.from_pretrained(checkpoint, device="cpu")
    prior = np.asarray(Image.open(images["chest"]), np.float32) / 255.0
    expected = pipe(prior, prompt, samples=2, cfg_scale=3.0, seed=5)

    slider, spans, bundle, status = outputs[0], outputs[2], outputs[7], outputs[8]
    counterfactual = np.asarray(Image.open(slider[1]).convert("L"), np.float32)[::2, ::2] / 255.0  # 256 px x 2 for display
    np.testing.assert_allclose(counterfactual, expected.counterfactuals[0], atol=1.5 / 255)
    text = "".join(item["token"] for item in spans)
    assert expected.interpretation and text.startswith(expected.interpretation)
    assert "2 sample(s)" in status
    with zipfile.ZipFile(bundle) as archive:
        document = json.loads(archive.read("result/result.json"))
        assert document["interpretation"] == expected.interpretation and document["seed"] == 5
        assert "result/spread.png" in archive.namelist()
    assert by_example[0] and by_example[6]["visible"] is False
