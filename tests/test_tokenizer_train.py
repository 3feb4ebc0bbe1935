"""Tokenizer training: loss goes down, dead-code restarts raise usage, exact resume, determinism, the CLI."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from progemu.tokenizer import ImageTokenizer
from progemu.tokenizer.evaluate import codebook_stats
from progemu.tokenizer.train import TrainConfig, load_train_config, train_tokenizer
from progemu.utils.atomic import read_jsonl
from tokenizer_fixtures import TINY, smooth_images, write_image_folder

torch.set_num_threads(1)


def _images(count=24, size=32, seed=0):
    return (smooth_images(count, size, seed) * 255).round().astype(np.uint8)


def _config(**overrides):
    base = TrainConfig(preset="tiny", tokenizer=dataclasses.replace(TINY), max_steps=30, batch_size=4, crop_size=0,
                       lr=2e-3, warmup_steps=2, log_every=1, eval_every=0, checkpoint_every=1000, restart_every=5,
                       seed=0)
    return dataclasses.replace(base, **overrides)


def test_short_training_reduces_loss_and_saves_a_loadable_tokenizer(tmp_path):
    images = (_images(), _images(4, seed=9))
    summary = train_tokenizer(None, tmp_path / "tok", _config(max_steps=40, eval_every=40), images=images, progress=False)
    log = read_jsonl(tmp_path / "tok" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 41))
    first, last = np.mean([r["loss"] for r in log[:5]]), np.mean([r["loss"] for r in log[-5:]])
    assert last < 0.5 * first
    tokenizer = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer.identity == summary["identity"]
    assert load_train_config(tmp_path / "tok" / "train_config.json") == _config(max_steps=40, eval_every=40)
    assert log[-1]["heldout_psnr"] > 10


def test_dead_code_restarts_raise_codebook_usage(tmp_path):
    images = (_images(), _images(0))
    usages = {}
    for restart_every in (0, 3):
        out = tmp_path / f"r{restart_every}"
        config = _config(max_steps=24, restart_every=restart_every, tokenizer=dataclasses.replace(TINY, codebook_size=256))
        train_tokenizer(None, out, config, images=images, progress=False)
        tokenizer = ImageTokenizer.from_pretrained(out)
        codes = tokenizer.encode(torch.from_numpy(images[0][:, None]).float() / 255)
        usages[restart_every] = codebook_stats(codes.numpy(), 256)["codebook_usage"]
    assert usages[3] > usages[0] + 0.05, usages


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    images = (_images(), _images(0))
    config = _config(max_steps=12, checkpoint_every=4, restart_every=3, crop_size=16)
    whole = train_tokenizer(None, tmp_path / "whole", config, images=images, progress=False)
    stopped = train_tokenizer(None, tmp_path / "split", config, images=images, progress=False, stop_at=6)
    assert stopped["stopped_at"] == 6 and not (tmp_path / "split" / "train_summary.json").exists()
    assert ImageTokenizer.from_pretrained(tmp_path / "split").grid == (8, 8)  # loadable at every checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        train_tokenizer(None, tmp_path / "split", config, images=images, progress=False)
    resumed = train_tokenizer(None, tmp_path / "split", config, images=images, progress=False, resume=True)
    log_whole = read_jsonl(tmp_path / "whole" / "log.jsonl")
    log_split = read_jsonl(tmp_path / "split" / "log.jsonl")
    assert [r["step"] for r in log_split] == list(range(1, 13))
    for a, b in zip(log_whole, log_split):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-9), a["step"]
    assert resumed["identity"] == whole["identity"]  # bit-identical weights


def test_same_seed_same_tokenizer_and_resume_without_checkpoint_fails(tmp_path):
    images = (_images(8), _images(0))
    a = train_tokenizer(None, tmp_path / "a", _config(max_steps=3), images=images, progress=False)
    b = train_tokenizer(None, tmp_path / "b", _config(max_steps=3), images=images, progress=False)
    c = train_tokenizer(None, tmp_path / "c", _config(max_steps=3, seed=1), images=images, progress=False)
    assert a["identity"] == b["identity"] != c["identity"]
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_tokenizer(None, tmp_path / "d", _config(), images=images, progress=False, resume=True)


def test_cli_trains_on_a_folder_of_images_with_an_unreadable_file(tmp_path, capsys, monkeypatch):
    from progemu.tokenizer import cli, presets

    write_image_folder(tmp_path / "data", patients=12, per_patient=2, size=40)
    (tmp_path / "data" / "p00" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    monkeypatch.setitem(presets.PRESETS, "tiny", dataclasses.replace(TINY))
    out = tmp_path / "tok"
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--preset", "tiny", "--max-steps", "4",
            "--batch-size", "4", "--crop-size", "0", "--quiet"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any("broken.png" in path for path in summary["skipped_images"])
    for name in ("config.json", "model.safetensors", "progemu_tokenizer.json", "train_config.json", "log.jsonl",
                 "checkpoint.pt", "train_summary.json", "eval.json"):
        assert (out / name).exists(), name
    assert summary["eval"]["images"] >= 1 and 0 < summary["eval"]["codebook_usage"] <= 1
    assert cli.main(argv) == 1  # refuses to overwrite a run without --resume
    assert "--resume" in capsys.readouterr().err
    assert cli.main(argv[:7] + ["--max-steps", "6", "--resume", "--quiet"]) == 0
    assert read_jsonl(out / "log.jsonl")[-1]["step"] == 6
