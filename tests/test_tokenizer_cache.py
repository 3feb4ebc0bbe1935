"""Code cache (resumable, identity-separated), `progemu tokenize`, and `progemu tokenizer eval` numbers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from progemu.tokenizer import CodeCache, ImageTokenizer, ensure_codes
from progemu.tokenizer.cache import cache_dir
from progemu.tokenizer.evaluate import codebook_stats, evaluate_tokenizer, reconstruction_metrics, EvalConfig
from progemu.tokenizer.images import dataset_images, load_image
from tokenizer_fixtures import TINY, smooth_images, write_image_folder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer():
    return ImageTokenizer.from_config(TINY, seed=0)


class CountingTokenizer:
    """Wraps a tokenizer and counts how many images it encodes (to observe resumption)."""

    def __init__(self, inner):
        self.inner, self.encoded = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, images, batch_size=None):
        self.encoded += images.shape[0]
        return self.inner.encode(images)


def test_cache_holds_codes_equal_to_direct_encoding(tmp_path, tokenizer):
    paths = write_image_folder(tmp_path / "data")
    cache = ensure_codes(tmp_path / "data", tokenizer, batch_size=5, progress=False)
    assert cache.root == cache_dir(tmp_path / "data", tokenizer.identity) and len(cache) == len(paths) and cache.complete
    info = json.loads((cache.root / "tokenizer.json").read_text())
    assert info["identity"] == tokenizer.identity and info["grid"] == [8, 8]
    expected = tokenizer.encode(torch.from_numpy(np.stack([load_image(p, 32) for p in paths]))[:, None]).numpy()
    for path, codes in zip(paths, expected):
        assert cache.has(path) and cache.has(path.relative_to(tmp_path / "data"))
        got = cache.get(path)
        assert got.dtype == np.int32 and got.shape == (8, 8)
        np.testing.assert_array_equal(got, codes)
    reopened = CodeCache(tmp_path / "data", tokenizer.identity)
    np.testing.assert_array_equal(reopened.get_many(paths), expected)
    with pytest.raises(KeyError, match="progemu tokenize"):
        cache.get("p99/none.png")
    assert not cache.has("p99/none.png")


def test_cache_resumes_after_a_crash_and_grows_with_the_dataset(tmp_path, tokenizer):
    data = tmp_path / "data"
    paths = write_image_folder(data, patients=3, per_patient=2)
    counting = CountingTokenizer(tokenizer)
    cache = ensure_codes(data, counting, batch_size=2, progress=False)
    assert counting.encoded == 6
    reference = cache.get_many(paths)
    # simulate a run killed after writing some rows: clear two "done" flags
    done_path = cache.root / f"done-{cache.plan}.npy"
    done = np.load(done_path, mmap_mode="r+")
    done[[1, 4]] = 0
    done.flush()
    del done, cache
    assert not CodeCache(data, tokenizer.identity).complete
    counting.encoded = 0
    cache = ensure_codes(data, counting, batch_size=2, progress=False)
    assert counting.encoded == 2 and cache.complete
    np.testing.assert_array_equal(cache.get_many(paths), reference)
    # a new image: only it is encoded, the old rows move to the new plan
    new = write_image_folder(tmp_path / "extra", patients=1, per_patient=1, seed=5)[0]
    target = data / "p07" / "late.png"
    target.parent.mkdir()
    target.write_bytes(new.read_bytes())
    counting.encoded = 0
    cache = ensure_codes(data, counting, batch_size=2, progress=False)
    assert counting.encoded == 1 and len(cache) == 7 and cache.complete
    np.testing.assert_array_equal(cache.get_many(paths), reference)
    assert sorted(p.name for p in cache.root.glob("*.npy")) == sorted([f"codes-{cache.plan}.npy", f"done-{cache.plan}.npy"])


def test_tokenizers_with_different_identity_never_share_codes(tmp_path, tokenizer):
    data = tmp_path / "data"
    paths = write_image_folder(data, patients=2, per_patient=2)
    first = ensure_codes(data, tokenizer, progress=False)
    before = first.get_many(paths)
    other = ImageTokenizer.from_config(TINY, seed=3)
    assert other.identity != tokenizer.identity
    second = ensure_codes(data, other, progress=False)
    assert second.root != first.root
    assert not np.array_equal(second.get_many(paths), before)
    np.testing.assert_array_equal(CodeCache(data, tokenizer.identity).get_many(paths), before)
    with pytest.raises(FileNotFoundError, match="progemu tokenize"):
        CodeCache(data, "0123456789abcdef")


def test_curated_dataset_caches_prior_and_followup_images(tmp_path, tokenizer):
    from progemu.data.icgcxr import load_pairs
    from tokenizer_fixtures import write_curated

    root = write_curated(tmp_path / "icg", pairs=3, size=32)
    cache = ensure_codes(root, tokenizer, progress=False)
    pairs = load_pairs(root)
    assert len(cache) == 2 * len(pairs)
    for pair in pairs:
        assert cache.has(pair.prior_image) and cache.has(pair.followup_image)
    assert len(dataset_images(root, "train")) < len(dataset_images(root))


def test_tokenize_cli_writes_cache_and_reports_json(tmp_path, tokenizer, capsys):
    from progemu.tokenizer.cache_cli import main

    write_image_folder(tmp_path / "data", patients=2, per_patient=2)
    tokenizer.save_pretrained(tmp_path / "tok")
    assert main(["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "tok"), "--batch-size", "3", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["identity"] == tokenizer.identity and report["images"] == 4 and report["encoded"] == 4
    assert main(["--data", str(tmp_path / "data"), "--tokenizer", str(tmp_path / "missing"), "--quiet"]) == 1
    assert "Emu3-Gen-hf" in capsys.readouterr().err


def test_metrics_match_hand_computation():
    rng = np.random.default_rng(0)
    originals = smooth_images(3, 32)
    recons = np.clip(originals + rng.normal(0, 0.02, originals.shape), 0, 1).astype(np.float32)
    metrics = reconstruction_metrics(originals, recons)
    by_hand = np.mean([10 * math.log10(1.0 / np.mean((o.astype(np.float64) - r) ** 2)) for o, r in zip(originals, recons)])
    assert metrics["psnr"] == pytest.approx(by_hand, abs=1e-9)
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    # independent SSIM: torchmetrics with scikit-image's settings (uniform 7x7 window, sample covariance)
    ssim_tm = [float(tm_ssim(torch.from_numpy(r)[None, None].double(), torch.from_numpy(o)[None, None].double(),
                             gaussian_kernel=False, kernel_size=7, data_range=1.0)) for o, r in zip(originals, recons)]
    assert metrics["ssim"] == pytest.approx(np.mean(ssim_tm), abs=0.02)
    assert metrics["ssim"] < 1.0 and reconstruction_metrics(originals, originals)["ssim"] == pytest.approx(1.0)
    stats = codebook_stats(np.array([[0, 1], [1, 3]]), codebook_size=8)
    assert stats["codebook_usage"] == 3 / 8 and stats["codes_used"] == 3
    probs = np.array([1, 2, 1]) / 4
    assert stats["perplexity"] == pytest.approx(math.exp(-(probs * np.log(probs)).sum()))


def test_evaluate_tokenizer_and_cli(tmp_path, tokenizer, capsys):
    from progemu.tokenizer.cli import main

    paths = write_image_folder(tmp_path / "data", patients=3, per_patient=2)
    result = evaluate_tokenizer(tokenizer, tmp_path / "data", EvalConfig(split="all", batch_size=4),
                                save_examples=tmp_path / "examples")
    originals = np.stack([load_image(p, 32) for p in paths])
    recons = tokenizer.decode(tokenizer.encode(torch.from_numpy(originals)[:, None]))[:, 0].numpy()
    codes = tokenizer.encode(torch.from_numpy(originals)[:, None]).numpy()
    # load_images stores 8-bit pixels, as the PNGs are; compare on the same quantised inputs
    originals8 = np.rint(originals * 255) / 255
    recons8 = tokenizer.decode(tokenizer.encode(torch.from_numpy(originals8.astype(np.float32))[:, None]))[:, 0].numpy()
    hand = np.mean([10 * math.log10(1 / np.mean((o - r.astype(np.float64)) ** 2)) for o, r in zip(originals8, recons8)])
    assert result["images"] == 6 and result["psnr"] == pytest.approx(hand, abs=1e-3)
    codes8 = tokenizer.encode(torch.from_numpy(originals8.astype(np.float32))[:, None]).numpy()
    assert result["codebook_usage"] == pytest.approx(len(np.unique(codes8)) / 64)
    assert abs(len(np.unique(codes)) - len(np.unique(codes8))) <= 4  # 8-bit storage moves few codes
    assert result["images_per_s"] > 0 and len(list((tmp_path / "examples").glob("*.png"))) == 4
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "eval.json"
    assert main(["eval", "--tokenizer", str(tmp_path / "tok"), "--data", str(tmp_path / "data"), "--split", "all",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["psnr"] == pytest.approx(result["psnr"], abs=1e-6)


def test_load_image_stretches_to_a_square_and_resizes(tmp_path):
    from progemu.data.images import model_input, read_image
    from progemu.utils.atomic import atomic_save_png

    image = np.zeros((40, 60), np.float32)
    image[:, 10:50] = 1.0  # white centre, black side bands
    atomic_save_png(tmp_path / "wide.png", image)
    out = load_image(tmp_path / "wide.png", 32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out, model_input(read_image(tmp_path / "wide.png"), 32))  # the one image path
    # stretched, not cropped: the bands stay (60 px -> 32 px: columns 0..4 black, the middle white)
    assert out[:, :4].max() < 0.1 and np.all(out[:, 8:24] > 0.99)
    assert dataset_images(tmp_path) == [tmp_path / "wide.png"]
    with pytest.raises(FileNotFoundError, match="no images"):
        dataset_images(tmp_path / "nothing") if (tmp_path / "nothing").mkdir() is None else None
