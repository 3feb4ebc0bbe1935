"""End to end: checkpoints saved by progemu's own code -> ProgEmuPipeline / CascadePipeline / `progemu generate`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from generate_fixtures import tiny_checkpoint, tiny_image_tokenizer, write_prior_png
from progemu.generate.pipeline import CascadePipeline, ProgEmuPipeline, load_prior

torch.set_num_threads(1)

PROMPT = "New small left pleural effusion."
FAST = dict(max_text_tokens=12)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    image_tokenizer = tiny_image_tokenizer()
    joint = tiny_checkpoint(root / "joint", "joint", seed=0, image_tokenizer=image_tokenizer)
    image = tiny_checkpoint(root / "image", "image", seed=1, image_tokenizer=image_tokenizer)
    text = tiny_checkpoint(root / "text", "text", seed=2, image_tokenizer=image_tokenizer)
    prior = write_prior_png(root / "prior.png", size=(40, 48))
    return {"joint": joint, "image": image, "text": text, "prior": prior, "root": root}


@pytest.fixture(scope="module")
def pipe(checkpoints):
    return ProgEmuPipeline.from_pretrained(checkpoints["joint"], device="cpu")


def test_one_request_outputs(pipe, checkpoints):
    result = pipe(checkpoints["prior"], PROMPT, samples=2, seed=4, **FAST)
    prior = load_prior(checkpoints["prior"])
    assert prior.shape == (40, 48)
    assert len(result.counterfactuals) == 2
    for image in result.counterfactuals:
        assert image.shape == prior.shape and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
    stack = np.stack(result.counterfactuals)
    np.testing.assert_allclose(result.difference, stack.mean(0) - prior, atol=1e-6)
    np.testing.assert_allclose(result.spread, stack.std(0), atol=1e-6)
    assert [c.shape for c in result.codes] == [pipe.layout.grid] * 2
    assert isinstance(result.interpretation, str) and result.interpretation == result.interpretations[0]
    assert list(result.attention) == result.phrases or len(result.attention) == len(result.phrases)
    for grid_map in result.attention.values():
        assert grid_map.shape == pipe.layout.grid and grid_map.sum() == pytest.approx(1.0, abs=1e-4)
    assert result.settings["seed"] == 4 and result.settings["top_k"] == 2048 and result.settings["samples"] == 2
    for key in ("prefill_s", "decode_s", "encode_s", "image_decode_s", "attention_s"):
        assert result.timings[key] >= 0
    # the counterfactual is the tokenizer's decoding of the generated codes, at the prior's size
    decoded = pipe.image_tokenizer.decode(torch.as_tensor(result.codes[0])[None]).numpy()[0, 0]
    from progemu.data.images import resize

    back = resize(decoded, (40, 48))  # the project's one resize, back onto the prior's shape
    np.testing.assert_allclose(result.counterfactuals[0], back, atol=1e-4)  # batch-2 vs batch-1 conv rounding


def test_same_seed_same_result_and_inputs_agree(pipe, checkpoints):
    first = pipe(checkpoints["prior"], PROMPT, seed=9, attention=False, **FAST)
    again = pipe(checkpoints["prior"], PROMPT, seed=9, attention=False, **FAST)
    assert first.token_ids == again.token_ids
    other = pipe(checkpoints["prior"], PROMPT, seed=10, attention=False, **FAST)
    assert other.token_ids != first.token_ids
    array = load_prior(checkpoints["prior"])
    pil = Image.open(checkpoints["prior"])
    for prior in (array, (array * 255).round().astype(np.uint8), pil, torch.from_numpy(array)):
        assert pipe(prior, PROMPT, seed=9, attention=False, **FAST).token_ids == first.token_ids


def test_generate_batch_equals_single_calls(pipe, checkpoints, tmp_path):
    priors = [write_prior_png(tmp_path / f"p{i}.png", size=32 + 8 * i, seed=i) for i in range(3)]
    prompts = [PROMPT, "Interval increase in bibasilar atelectasis.", "No new consolidation."]
    batch = pipe.generate_batch(priors, prompts, samples=2, seed=100, batch_size=2, **FAST)
    assert len(batch) == 3
    for i, (prior, prompt) in enumerate(zip(priors, prompts)):
        single = pipe(prior, prompt, samples=2, seed=100 + i, attention=False, **FAST)
        assert batch[i].token_ids == single.token_ids
        assert batch[i].interpretation == single.interpretation
        np.testing.assert_allclose(batch[i].counterfactuals[1], single.counterfactuals[1], atol=1e-4)


def test_cli_writes_the_output_contract(checkpoints, tmp_path):
    from progemu.cli import main

    out = tmp_path / "one"
    code = main(["generate", "--model", str(checkpoints["joint"]), "--prior", str(checkpoints["prior"]), "--prompt", PROMPT,
                 "--out", str(out), "--seed", "3", "--max-text-tokens", "12", "--device", "cpu", "--cfg", "2"])
    assert code == 0
    for name in ("counterfactual.png", "interpretation.txt", "difference.png", "result.json"):
        assert (out / name).is_file(), name
    document = json.loads((out / "result.json").read_text())
    assert document["prompt"] == PROMPT and document["seed"] == 3 and document["settings"]["cfg_scale"] == 2.0
    assert document["counterfactuals"] == ["counterfactual.png"] and document["spread"] is None
    assert (out / "interpretation.txt").read_text().strip() == document["interpretation"]
    assert len(list((out / "attention").glob("*.png"))) == len(document["attention"]) == len(document["phrases"])
    for entry in document["attention"].values():
        assert (out / entry["png"]).is_file() and np.asarray(entry["map"]).shape == (4, 4)
    assert Image.open(out / "counterfactual.png").size == (48, 40)
    assert Image.open(out / "difference.png").size == (48, 40)

    many = tmp_path / "many"
    assert main(["generate", "--model", str(checkpoints["joint"]), "--prior", str(checkpoints["prior"]), "--prompt", PROMPT,
                 "--out", str(many), "--samples", "3", "--no-attention", "--max-text-tokens", "5", "--device", "cpu"]) == 0
    assert sorted(p.name for p in many.glob("counterfactual*.png")) == [f"counterfactual_{k}.png" for k in range(3)]
    assert (many / "spread.png").is_file()


def test_cascade(checkpoints, tmp_path):
    cascade = CascadePipeline(checkpoints["image"], checkpoints["text"], device="cpu")
    result = cascade(checkpoints["prior"], PROMPT, samples=2, seed=5, **FAST)
    assert len(result.counterfactuals) == 2 and len(result.interpretations) == 2
    assert result.settings["mode"] == "cascade"
    assert all(grid_map.shape == (4, 4) for grid_map in result.attention.values())
    # the image half alone gives the same counterfactuals (same seed, same streams)
    image_only = ProgEmuPipeline.from_pretrained(checkpoints["image"], device="cpu")(checkpoints["prior"], PROMPT, samples=2,
                                                                                   seed=5, attention=False, **FAST)
    assert [c.tolist() for c in image_only.codes] == [c.tolist() for c in result.codes]
    assert image_only.interpretation == ""
    # batched cascade == one request at a time
    batch = cascade.generate_batch([checkpoints["prior"], checkpoints["prior"]], [PROMPT, "No new consolidation."],
                                   samples=2, seed=5, **FAST)
    assert batch[0].token_ids == result.token_ids and batch[0].interpretations == result.interpretations
    alone = cascade(checkpoints["prior"], "No new consolidation.", samples=2, seed=6, attention=False, **FAST)
    assert batch[1].token_ids == alone.token_ids
    from progemu.cli import main

    out = tmp_path / "cascade"
    assert main(["generate", "--model", str(checkpoints["image"]), "--text-model", str(checkpoints["text"]), "--prior",
                 str(checkpoints["prior"]), "--prompt", PROMPT, "--out", str(out), "--max-text-tokens", "8", "--device", "cpu"]) == 0
    assert json.loads((out / "result.json").read_text())["settings"]["cascade"]["text_model"] == str(checkpoints["text"])
    with pytest.raises(ValueError, match="image-only"):
        CascadePipeline(checkpoints["joint"], checkpoints["text"], device="cpu")
    with pytest.raises(ValueError, match="CascadePipeline"):
        ProgEmuPipeline.from_pretrained(checkpoints["text"], device="cpu")(checkpoints["prior"], PROMPT)


def test_clear_errors(pipe, checkpoints, tmp_path, capsys):
    with pytest.raises(ValueError, match="empty"):
        pipe(checkpoints["prior"], "   ")
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png"):
        pipe(not_image, PROMPT)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(np.full((8, 8), 3.0, dtype=np.float32), PROMPT)
    with pytest.raises(ValueError, match="unknown generation settings"):
        pipe(checkpoints["prior"], PROMPT, cfg=3)
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="progemu.json"):
        ProgEmuPipeline.from_pretrained(empty)
    from progemu.generate.cli import main

    assert main(["--model", str(empty), "--prior", str(checkpoints["prior"]), "--prompt", PROMPT, "--out", str(tmp_path / "x")]) == 2
    assert "progemu.json" in capsys.readouterr().err
    assert main(["--model", str(checkpoints["joint"]), "--prior", str(not_image), "--prompt", PROMPT, "--out",
                 str(tmp_path / "y"), "--device", "cpu"]) == 2
    assert "notes.png" in capsys.readouterr().err


REAL = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not available")
def test_real_dicom_and_png_priors(pipe, tmp_path):
    """Real radiographs (a JPEG-compressed DICOM and an NIH PNG) go through the whole pipeline at their own size."""
    from progemu.data.images import read_image

    dicom = REAL / "xrv" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    png = REAL / "xrv" / "00000001_000.png"
    results = pipe.generate_batch([dicom, png], [PROMPT, "No new consolidation."], seed=1, attention=True, **FAST)
    for path, result in zip((dicom, png), results):
        prior = read_image(path)
        np.testing.assert_array_equal(result.prior, prior)
        assert result.counterfactual.shape == prior.shape
        result.save(tmp_path / path.stem)
        assert Image.open(tmp_path / path.stem / "counterfactual.png").size == prior.shape[::-1]


def test_load_prior_conventions(tmp_path):
    grey = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    np.testing.assert_allclose(load_prior(grey), grey / 255.0)
    np.testing.assert_allclose(load_prior(Image.fromarray(grey)), grey / 255.0)
    np.testing.assert_allclose(load_prior(Image.fromarray(grey).convert("RGB")), grey / 255.0, atol=1 / 255)
    deep = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    np.testing.assert_allclose(load_prior(deep), deep / 65535.0, rtol=1e-6)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(load_prior(Image.open(tmp_path / "deep.png")), deep / 65535.0, rtol=1e-6)
    np.testing.assert_allclose(load_prior(tmp_path / "deep.png"), deep / 65535.0, rtol=1e-6)  # read_image agrees
    assert load_prior(grey[None]).shape == (2, 2)
    with pytest.raises(ValueError, match="greyscale"):
        load_prior(np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        load_prior(np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="path"):
        load_prior(42)
