"""Evaluators: synthetic-world training smoke test, CLIP score vs a manual cosine, real-weight loading paths."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from evaluate_fixtures import one_torch_thread, make_tiny_dataset, train_tiny_evaluators  # noqa: F401 (autouse fixture)
from progemu.data.icgcxr import load_pairs
from progemu.data.labels import CHEXPERT_LABELS
from progemu.evaluate.clip_score import clip_i
from progemu.evaluate.evaluators import (BIOMEDCLIP_HUB_ID, XRV_WEIGHTS, load_clip, load_evaluators,
                                         load_real_evaluators, load_xrv_classifier)
from progemu.evaluate.images import load_stack


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluators")
    data = make_tiny_dataset(root / "data")
    # a broken TEST image proves training never reads the test split
    broken = load_pairs(data, split="test")[0].followup_image
    broken_bytes = broken.read_bytes()
    broken.write_bytes(b"not a png")
    evaluators = train_tiny_evaluators(data, root / "evaluators")
    broken.write_bytes(broken_bytes)
    return data, evaluators


def test_training_writes_loadable_evaluators_with_config(world):
    data, directory = world
    summary = json.loads((directory / "evaluators.json").read_text())
    assert summary["split"] == "train" and summary["pairs"] == 24
    assert summary["config"]["classifier"]["image_size"] == 64
    for part in ("classifier", "clip"):
        training = summary["training"][part]
        assert training["final_loss"] < training["first_loss"]  # it learned something
    evaluators = load_evaluators(directory)
    images = load_stack([p.followup_image for p in load_pairs(data, split="train")], 64)
    probs = evaluators.probabilities(images)
    assert probs.shape == (24, len(CHEXPERT_LABELS)) and np.all((probs >= 0) & (probs <= 1))
    features = evaluators.features(images)
    assert features.shape == (24, evaluators.description["feature_dim"])
    # deterministic reload
    np.testing.assert_allclose(load_evaluators(directory).probabilities(images), probs, atol=1e-6)


def test_clip_training_items_pair_reports_with_their_own_study(world):
    from progemu.evaluate.evaluator_training import clip_training_items

    data, _ = world
    pairs = load_pairs(data, split="train")
    items = clip_training_items(pairs, ("prompt", "report"))
    assert len(items) == 3 * len(pairs)
    first = pairs[0]
    assert (str(first.followup_image), first.prompt) in items
    prior_reports = [text for image, text in items if image == str(first.prior_image)]
    assert prior_reports and all(text.endswith(".") for text in prior_reports)
    with pytest.raises(ValueError, match="unknown CLIP text source"):
        clip_training_items(pairs, ("caption",))


def test_vit_clip_option_builds_and_resnet_size_is_checked():
    from progemu.evaluate.evaluator_training import ClipConfig, build_clip

    model = build_clip(ClipConfig(vision="vit", image_size=32, patch_size=16))
    assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_clip(ClipConfig(image_size=48))


def test_clip_score_equals_manual_cosine_with_open_clips_own_preprocessing(world):
    import open_clip
    from PIL import Image

    data, directory = world
    evaluators = load_evaluators(directory)
    pairs = load_pairs(data, split="test")[:4]
    ours = clip_i(evaluators.image_embeddings(load_stack([p.followup_image for p in pairs], 64)),
                  evaluators.text_embeddings([p.prompt for p in pairs]))
    # independent route: open_clip's PIL transform and tokenizer on the saved model
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory / 'clip'}")
    model.eval()
    with torch.no_grad():
        image = torch.stack([preprocess(Image.open(p.followup_image)) for p in pairs])
        a = model.encode_image(image).numpy()
        b = model.encode_text(tokenizer([p.prompt for p in pairs])).numpy()
    manual = 100 * np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert ours == pytest.approx(manual, abs=0.5)  # images are already 64 px: resizing is the identity


def test_biomedclip_loads_from_a_hugging_face_cache_layout(world, tmp_path):
    _, directory = world
    snapshot = tmp_path / "hub" / f"models--{BIOMEDCLIP_HUB_ID.replace('/', '--')}" / "snapshots" / "abc123"
    shutil.copytree(directory / "clip", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    model, tokenizer = load_clip(tmp_path / "hub", hub_id=BIOMEDCLIP_HUB_ID)
    assert model.encode_text(tokenizer(["new effusion"])).shape == (1, 64)  # embed_dim


def test_missing_real_weights_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wget https://github.com/mlmed/torchxrayvision/.*\.pt"):
        load_xrv_classifier(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match=f"huggingface-cli download {BIOMEDCLIP_HUB_ID}"):
        load_clip(tmp_path, hub_id=BIOMEDCLIP_HUB_ID)


def test_xrv_weights_load_through_torchxrayvisions_own_loader(world, tmp_path):
    """Weights saved like the released file (a pickled DenseNet-121, 18 outputs) load by file or folder."""
    import torchxrayvision as xrv

    torch.manual_seed(0)
    saved = xrv.models.DenseNet(num_classes=18)
    saved.eval()
    filename = os.path.basename(xrv.models.model_urls[XRV_WEIGHTS]["weights_url"])
    torch.save(saved, tmp_path / filename)
    (tmp_path / "renamed.pt").symlink_to(tmp_path / filename)
    x = torch.rand(2, 1, 224, 224) * 2048 - 1024
    for where in (tmp_path, tmp_path / "renamed.pt"):
        model = load_xrv_classifier(where)
        assert model.pathologies[7] == "Effusion" and model.op_threshs is not None
        with torch.no_grad():
            np.testing.assert_allclose(model.features2(x).numpy(), saved.features2(x).numpy(), atol=1e-5)
            assert model.features2(x).shape == (2, 1024)
    with pytest.raises(FileNotFoundError, match="--biomedclip DIR"):
        load_real_evaluators(tmp_path, None)
    # the real evaluators' label mapping: 11 CheXpert labels, NaN for the 3 the classifier lacks
    evaluators = load_real_evaluators(tmp_path, world[1] / "clip")
    images = np.random.default_rng(0).random((2, 1, 96, 96)).astype(np.float32)
    probs = evaluators.probabilities(images)
    missing = {CHEXPERT_LABELS[j] for j in np.flatnonzero(np.isnan(probs[0]))}
    assert missing == {"No Finding", "Pleural Other", "Support Devices"}
    with torch.no_grad():  # "Effusion" (xrv output 7) lands in the "Pleural Effusion" column
        direct = saved(evaluators._classifier_input(torch.from_numpy(images)))
        expected = xrv.models.op_norm(torch.sigmoid(direct), model.op_threshs)[:, 7].numpy()
    np.testing.assert_allclose(probs[:, CHEXPERT_LABELS.index("Pleural Effusion")], expected, atol=1e-5)
    assert evaluators.features(images).shape == (2, 1024)
