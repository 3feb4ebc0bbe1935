"""Prior preservation: NCC by hand and the reconstructed-prior reference row."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from progemu.evaluate.preservation import mean_prior_ncc, ncc, reconstructed_priors


def test_ncc_by_hand():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert ncc(a, a) == pytest.approx(1.0)
    assert ncc(a, 5 * a + 2) == pytest.approx(1.0)  # brightness and contrast do not matter
    assert ncc(a, -a) == pytest.approx(-1.0)
    b = np.array([[1.0, 0.0], [0.0, 1.0]])  # centred: a -> [-1.5, -0.5, 0.5, 1.5], b -> [.5, -.5, -.5, .5]
    assert ncc(a, b) == pytest.approx(0.0)
    assert ncc(np.ones((2, 2)), np.ones((2, 2))) == 1.0 and ncc(np.ones((2, 2)), np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError, match="resize"):
        ncc(a, np.ones((3, 3)))
    rng = np.random.default_rng(0)
    priors = [rng.random((20, 30)).astype(np.float32) for _ in range(3)]
    assert mean_prior_ncc(priors, priors, size=16) == pytest.approx(1.0)


def test_reconstructed_priors_are_the_tokenizer_round_trip_at_the_prior_shape(tmp_path):
    from progemu.data.images import model_input, resize
    from tokenizer_fixtures import TINY, smooth_images
    from progemu.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.from_config(TINY, seed=0)
    tokenizer.save_pretrained(tmp_path / "tok")
    priors = [smooth_images(1, 40, seed=s)[0][:, :36] for s in range(3)]  # 40 x 36: not the native 32 px
    out = reconstructed_priors(tmp_path / "tok", priors, batch_size=2)
    for prior, recon in zip(priors, out):
        assert recon.shape == prior.shape
        codes = tokenizer.encode(torch.from_numpy(model_input(prior, 32))[None, None])
        expected = resize(tokenizer.decode(codes)[0, 0].numpy(), prior.shape)
        np.testing.assert_allclose(recon, expected, atol=1e-5)
