"""ImageTokenizer: shapes, ranges, agreement with transformers' Emu3VQVAE, save/load, identity, loading errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from progemu.tokenizer import ImageTokenizer
from progemu.tokenizer.presets import PRESETS, TokenizerConfig, get_preset
from tokenizer_fixtures import TINY, TINY_EMU3_LIKE, smooth_images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return ImageTokenizer.from_config(TINY, seed=0)


def _images(count=3, size=32, seed=0):
    return torch.from_numpy(smooth_images(count, size, seed))[:, None]


def test_encode_decode_shapes_dtypes_and_ranges(tiny):
    images = _images()
    codes = tiny.encode(images)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert tiny.grid == (8, 8) and tiny.downsample == 4 and tiny.image_size == 32 and tiny.codebook_size == 64
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    recon = tiny.decode(codes)
    assert recon.shape == (3, 1, 32, 32) and recon.dtype == torch.float32
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    # any multiple of the downsampling factor works (the network is convolutional)
    assert tiny.encode(_images(1, 48)).shape == (1, 12, 12)
    # chunked encoding gives the same codes as one batch
    assert torch.equal(tiny.encode(images, batch_size=2), codes)


def test_encode_decode_equal_transformers_calls(tiny):
    """Our [0,1] grey convention around Emu3VQVAE.encode/decode, checked against direct calls."""
    images = _images()
    with torch.no_grad():
        reference = tiny.model.encode(images * 2 - 1, torch.tensor([[32, 32]] * 3)).image_tokens
        codes = tiny.encode(images)
        assert torch.equal(torch.stack(list(reference)), codes)
        decoded = tiny.model.decode(codes)
        assert torch.allclose(tiny.decode(codes), ((decoded + 1) / 2).clamp(0, 1))
        # the differentiable halves used for training are the same computation
        latents = tiny.encode_latents(tiny.to_model_pixels(images))
        assert torch.equal(tiny.nearest_codes(latents), codes)
        quantized = tiny.model.quantize.embedding(codes).permute(0, 3, 1, 2)
        assert torch.allclose(tiny.decode_latents(quantized), decoded, atol=1e-6)


def test_video_style_rgb_model_handles_grey_and_temporal_axis():
    tokenizer = ImageTokenizer.from_config(TINY_EMU3_LIKE, seed=1)
    images = _images(2)
    codes = tokenizer.encode(images)
    assert codes.shape == (2, 8, 8)
    with torch.no_grad():
        rgb = (images * 2 - 1).repeat(1, 3, 1, 1)
        reference = tokenizer.model.encode(rgb, torch.tensor([[32, 32]] * 2)).image_tokens
        assert torch.equal(torch.stack(list(reference)), codes)
        video = tokenizer.model.decode(codes)  # [B, 3, H, W]: first of 4 decoded frames
        expected = ((video.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)
        latents = tokenizer.encode_latents(tokenizer.to_model_pixels(images))
        quantized = tokenizer.model.quantize.embedding(codes).permute(0, 3, 1, 2)
        assert torch.allclose(tokenizer.decode_latents(quantized), video, atol=1e-5)
        assert torch.equal(tokenizer.nearest_codes(latents), codes)
    assert torch.allclose(tokenizer.decode(codes), expected)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        tiny.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple"):
        tiny.encode(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.encode(torch.full((1, 1, 32, 32), 2.0))
    with pytest.raises(ValueError, match="codes must be in"):
        tiny.decode(torch.full((1, 8, 8), 64))


def test_save_reload_gives_identical_codes_and_identity(tiny, tmp_path):
    images = _images()
    tiny.save_pretrained(tmp_path / "tok")
    assert {"config.json", "model.safetensors", "progemu_tokenizer.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.identity == tiny.identity and len(tiny.identity) == 16
    assert loaded.config == tiny.config
    assert torch.equal(loaded.encode(images), tiny.encode(images))
    assert torch.equal(loaded.decode(tiny.encode(images)), tiny.decode(tiny.encode(images)))


def test_identity_tracks_weights_and_architecture(tiny):
    other_seed = ImageTokenizer.from_config(TINY, seed=1)
    assert other_seed.identity != tiny.identity
    same = ImageTokenizer.from_config(TINY, seed=0)
    assert same.identity == tiny.identity  # deterministic init under a seed
    with torch.no_grad():
        same.model.quantize.embedding.weight[0, 0] += 1e-3
    assert same.refresh_identity() != tiny.identity


def test_missing_or_incomplete_pretrained_dir_errors_name_what_to_download(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match="Emu3-Gen-hf") as error:
        ImageTokenizer.from_pretrained(tmp_path / "nowhere")
    assert "nowhere" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ImageTokenizer.from_pretrained(tmp_path / "empty")
    tiny.save_pretrained(tmp_path / "partial")
    (tmp_path / "partial" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ImageTokenizer.from_pretrained(tmp_path / "partial")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "Emu3VisionVQ"}))
    with pytest.raises(ValueError, match="convert_emu3_weights_to_hf"):
        ImageTokenizer.from_pretrained(tmp_path / "other")


def test_loads_vq_weights_from_a_full_emu3_hf_model(tmp_path):
    """The Emu3-*-hf layout: a whole Emu3ForConditionalGeneration whose `vqmodel.*` weights we read."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    vocabulary = {f"<|visual token {i:06d}|>": 200 + i for i in range(TINY.codebook_size)} | {"<image>": 199}
    text = dict(vocab_size=300, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, attention_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(Emu3Config(vq_config=TINY.vq_config().to_dict(), text_config=text,
                                                    vocabulary_map=vocabulary)).eval()
    model.save_pretrained(tmp_path / "emu3-hf")
    tokenizer = ImageTokenizer.from_pretrained(tmp_path / "emu3-hf", image_size=32)
    images = _images(2)
    with torch.no_grad():
        reference = model.model.vqmodel.encode(images * 2 - 1, torch.tensor([[32, 32]] * 2)).image_tokens
    assert torch.equal(torch.stack(list(reference)), tokenizer.encode(images))
    assert tokenizer.grid == (8, 8) and tokenizer.codebook_size == TINY.codebook_size


def test_presets_are_valid_and_match_the_contract():
    for name, preset in PRESETS.items():
        preset.validate()
        vq = preset.vq_config()
        assert vq.hidden_size == preset.base_channels * preset.channel_multiplier[-1]
        assert TokenizerConfig.from_vq_config(vq, preset.image_size, name) == preset
    assert get_preset("demo").grid == (16, 16) and get_preset("demo").image_size == 128
    assert get_preset("gpu512").grid == (64, 64)
    emu3 = get_preset("emu3")
    assert (emu3.codebook_size, emu3.grid, emu3.in_channels, emu3.temporal_downsample_factor) == (32768, (64, 64), 3, 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        dataclasses.replace(TINY, base_channels=48).validate()
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        get_preset("huge")
