"""The page's API through ``gradio_client``: prior checks, composer, generation, queue, limits, privacy."""
from __future__ import annotations

import json
import logging
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from serve_fixtures import FakePipeline, free_port, write_test_images

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

PROMPT = "New left pleural effusion SECRET-PROMPT-7f3a"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Only what the server writes: the test's own HTTP client logs its URLs on its side.
        if not record.name.startswith(("httpx", "httpcore", "gradio_client")):
            self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_test_images(tmp_path_factory.mktemp("serve_api"))


@pytest.fixture(scope="module")
def served(images):
    from gradio_client import Client

    from progemu.serve.app import build_app, launch
    from progemu.serve.examples import Example
    from progemu.serve.inputs import ServeLimits

    collector = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    pipeline = FakePipeline(delay_s=0.6)
    examples = [Example("synthetic chest", images["chest"], "The right pneumothorax has increased.")]
    demo = build_app(pipeline, examples=examples, limits=ServeLimits(max_samples=3, max_upload_mb=0.05))
    url = launch(demo, port=free_port(), quiet=True)
    client = Client(url, verbose=False)
    yield {"client": client, "pipeline": pipeline, "demo": demo, "url": url, "log": collector}
    client.close()
    demo.close()
    root.removeHandler(collector)
    root.setLevel(old_level)


def _generate(client, file=None, example=None, prompt=PROMPT, samples=1, cfg=3.0, seed=0):
    from gradio_client import handle_file

    return client.predict(handle_file(str(file)) if file else None, example, prompt, samples, cfg, seed, api_name="/generate")


def test_check_prior_messages(served, images):
    from gradio_client import handle_file

    client = served["client"]
    preview, message = client.predict(handle_file(str(images["chest"])), api_name="/check_prior")
    assert message == "Prior loaded (256 x 256 px)."
    from PIL import Image

    assert Image.open(preview).size == (256, 256)
    for key, fragment in [("text", "'notes.txt' is not a readable image"), ("photo", "is a colour picture"), ("blank", "is blank")]:
        preview, message = client.predict(handle_file(str(images[key])), api_name="/check_prior")
        assert preview is None and message.startswith("**Cannot use this file.**") and fragment in message


def test_picking_an_example_previews_it_and_fills_its_hypothesis(served):
    preview, message, prompt, upload = served["client"].predict("synthetic chest", api_name="/pick_example")
    assert preview and message == "Example loaded (256 x 256 px)."
    assert prompt == "The right pneumothorax has increased." and upload is None
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices"):  # the drop-down itself refuses
        served["client"].predict("no such example", api_name="/pick_example")


def test_compose_endpoint(served):
    assert served["client"].predict("pneumothorax", "right", "increased", api_name="/compose") == "The right pneumothorax has increased."


def test_generate_returns_every_view_and_a_complete_download(served, images):
    from PIL import Image

    pipeline = served["pipeline"]
    outputs = _generate(served["client"], file=images["chest"], samples=2, cfg=2.5, seed=7)
    slider, difference, spans, phrase, attention, gallery, spread, bundle, status, *_ = outputs
    call = pipeline.calls[-1]
    assert (call["prompt"], call["samples"], call["cfg_scale"], call["seed"], call["shape"]) == (PROMPT, 2, 2.5, 7, (256, 256))
    prior_png, counterfactual_png = slider
    assert Image.open(prior_png).size == Image.open(counterfactual_png).size == (384, 384)  # 64 px x 6 for display
    counterfactual = np.asarray(Image.open(counterfactual_png).convert("L"), np.float32)[::6, ::6] / 255.0
    expected = pipeline(np.asarray(Image.open(images["chest"]), np.float32) / 255.0, PROMPT, samples=2, cfg_scale=2.5, seed=7)
    np.testing.assert_allclose(counterfactual, expected.counterfactuals[0], atol=1.5 / 255)  # lossless PNG, 8-bit rounding
    labelled = [item["token"] for item in spans if item["class_or_confidence"]]
    assert labelled == ["blunting of the costophrenic angle", "a new opacity"]
    assert phrase["value"] == "1" and [c[1] for c in phrase["choices"]] == ["1", "2"]
    assert gallery["visible"] is True and len(gallery["value"]) == 2
    assert spread["visible"] is True and spread["value"]
    assert Image.open(attention).size == (384, 384) and Image.open(difference).size == (384, 384)
    assert "2 sample(s)" in status and "not a diagnosis" in status
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        summary = json.loads(archive.read("summary.json"))
    assert {"prior.png", "summary.json", "views/difference.png", "views/spread.png", "views/attention-1.png",
            "views/attention-2.png", "result/counterfactual_0.png", "result/counterfactual_1.png", "result/result.json"} <= names
    assert summary["prompt"] == PROMPT and summary["samples"] == 2 and summary["settings"]["seed"] == 7


def test_generate_from_an_example_and_one_sample_hides_the_spread(served):
    outputs = _generate(served["client"], example="synthetic chest", prompt="The right pneumothorax has increased.")
    assert served["pipeline"].calls[-1]["prompt"] == "The right pneumothorax has increased."
    gallery, spread = outputs[5], outputs[6]
    assert gallery["visible"] is False and spread["visible"] is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": PROMPT}, "No prior yet: upload a chest radiograph"),
        ({"example": "synthetic chest", "prompt": "  "}, "Type a hypothesis"),
        ({"example": "synthetic chest", "samples": 9}, "(Samples must be between 1 and 3|greater than maximum value 3)"),  # the slider checks first
        ({"example": "synthetic chest", "prompt": "x" * 400}, "the limit is 300"),
    ],
)
def test_generate_refuses_bad_requests_with_readable_errors(served, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _generate(served["client"], **kwargs)


def test_generate_refuses_a_text_file(served, images):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="'notes.txt' is not a readable image"):
        _generate(served["client"], file=images["text"])


def test_upload_size_limit_is_enforced_by_the_server(served, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(0).random((400, 400)) * 255).astype(np.uint8)).save(big)  # ~160 kB > 50 kB
    with pytest.raises(Exception, match="(?i)file size|too large|exceed|413"):
        _generate(served["client"], file=big)


def test_queue_runs_one_generation_at_a_time(served):
    from gradio_client import Client

    pipeline = served["pipeline"]
    pipeline.max_active = 0
    clients = [Client(served["url"], verbose=False) for _ in range(2)]
    jobs = [c.submit(None, "synthetic chest", PROMPT, 1, 3.0, k, api_name="/generate") for k, c in enumerate(clients)]
    results = [job.result(timeout=60) for job in jobs]
    assert all(result[0] for result in results)
    assert pipeline.max_active == 1  # the second waited for the first
    for client in clients:
        client.close()


def test_nothing_private_in_logs_and_safe_launch_defaults(served):
    from progemu.serve.app import launch_options
    from progemu.serve.inputs import ServeLimits

    text = "\n".join(served["log"].lines)
    assert "generated 2 sample(s) from a upload prior" in text  # the server does log, just not content
    for private in (PROMPT, "SECRET-PROMPT", "chest.png", "notes.txt", "blunting of the costophrenic angle"):
        assert private not in text
    demo = served["demo"]
    assert demo.analytics_enabled is False
    options = launch_options(ServeLimits())
    assert options["server_name"] == "127.0.0.1" and options["share"] is False and options["run_history"] is False
    assert demo.delete_cache == (900, 3600)
    # the page states that counterfactuals are not diagnoses
    config = json.dumps(demo.get_config_file(), default=str)
    assert "not diagnoses" in config
