"""Code stability: the consistency term of tokenizer training and the code-agreement measure."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from progemu.tokenizer import ImageTokenizer
from progemu.tokenizer.evaluate import code_agreement, perturbations
from progemu.tokenizer.train import TrainConfig, consistency_loss, perturb_views, train_tokenizer, vq_forward
from progemu.utils.atomic import read_jsonl
from tokenizer_fixtures import TINY, smooth_images

torch.set_num_threads(1)


def _config(**overrides):
    base = TrainConfig(preset="tiny", tokenizer=dataclasses.replace(TINY), max_steps=12, batch_size=4, crop_size=16,
                       lr=2e-3, warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=4, restart_every=3, seed=0,
                       consistency_weight=1.0)
    return dataclasses.replace(base, **overrides)


def _uint8(count=24, seed=0):
    return (smooth_images(count, 32, seed) * 255).round().astype(np.uint8)


def test_perturbations_by_hand():
    images = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4) / 40
    views = perturbations(images, seed=0)
    np.testing.assert_array_equal(views["shift_1px_right"][:, :, 1:], images[:, :, :-1])
    np.testing.assert_array_equal(views["shift_1px_right"][:, :, 0], images[:, :, 0])  # edge replicated
    np.testing.assert_array_equal(views["shift_1px_down"][:, 1:], images[:, :-1])
    np.testing.assert_allclose(views["intensity_+5%"], np.clip(images * 1.05, 0, 1), rtol=1e-6)
    noise = views["noise_0.02"] - images
    assert 0.01 < float(noise.std()) < 0.03
    config = _config(consistency_shift=1, consistency_noise=0.0, consistency_intensity=0.0)
    generator = torch.Generator().manual_seed(0)
    batch = torch.from_numpy(images)[:, None]
    shifted = perturb_views(batch, config, generator)
    for view, image in zip(shifted[:, 0], batch[:, 0]):  # each view is the image moved by at most one pixel
        assert any(torch.equal(view[1:-1, 1:-1], image[1 + dy:3 + dy, 1 + dx:3 + dx]) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_code_agreement_equals_a_direct_count():
    tokenizer = ImageTokenizer.from_config(TINY, seed=0)
    images = smooth_images(6, 32, seed=3)
    result = code_agreement(tokenizer, images, seed=1, batch_size=4)
    clean = tokenizer.encode(torch.from_numpy(images)[:, None]).numpy()
    noisy = perturbations(images, seed=1)["noise_0.02"]
    direct = float(np.mean(tokenizer.encode(torch.from_numpy(noisy)[:, None]).numpy() == clean))
    assert result["noise_0.02"] == pytest.approx(direct)
    assert result["shift_1px"] == pytest.approx((result["shift_1px_right"] + result["shift_1px_down"]) / 2)
    assert code_agreement(tokenizer, images[:2], seed=0)["noise_0.01"] <= 1.0


def test_consistency_loss_is_zero_for_a_view_that_quantises_to_itself():
    tokenizer = ImageTokenizer.from_config(TINY, seed=0)
    images = torch.from_numpy(smooth_images(2, 32))[:, None]
    out = vq_forward(tokenizer, images)
    assert float(consistency_loss(tokenizer, images, out["latents"])) == pytest.approx(0.0, abs=1e-10)
    assert float(consistency_loss(tokenizer, images, out["quantized"])) > 0


def test_training_with_consistency_logs_it_and_resumes_exactly(tmp_path):
    images = (_uint8(), _uint8(8, seed=1))
    whole = train_tokenizer(None, tmp_path / "whole", _config(), images=images, progress=False)
    train_tokenizer(None, tmp_path / "split", _config(), images=images, progress=False, stop_at=6)
    resumed = train_tokenizer(None, tmp_path / "split", _config(), images=images, progress=False, resume=True)
    log = read_jsonl(tmp_path / "whole" / "log.jsonl")
    assert all(r["consistency"] > 0 for r in log)
    assert resumed["identity"] == whole["identity"]
    train_tokenizer(None, tmp_path / "plain", _config(consistency_weight=0.0), images=images, progress=False)
    plain = read_jsonl(tmp_path / "plain" / "log.jsonl")
    assert all(r["consistency"] == 0 for r in plain)
    assert log[0]["loss"] > plain[0]["loss"]  # the same first batch, plus the consistency term
