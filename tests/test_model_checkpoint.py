"""Checkpoints: Emu3 Hugging Face weights as --init (both key namings), presets, missing-file errors, memory plan."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

TEXTS = ["New small left pleural effusion.", "There is blunting of the left costophrenic angle."] * 10


@pytest.fixture(scope="module")
def emu3_dir(tmp_path_factory):
    """A tiny random Emu3ForConditionalGeneration saved in Hugging Face format, with its tokenizer."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    from progemu.model.text_tokenizer import train_text_tokenizer
    from progemu.tokenizer.presets import TokenizerConfig

    directory = tmp_path_factory.mktemp("emu3_hf")
    tokenizer = train_text_tokenizer(TEXTS, codebook_size=32, vocab_size=300)
    vq = TokenizerConfig(name="t", image_size=32, codebook_size=32, base_channels=32, channel_multiplier=(1, 1, 1)).vq_config()
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, attention_dropout=0.1,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = Emu3Config(vq_config=vq.to_dict(), text_config=text, vocabulary_map=tokenizer.get_vocab())
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, model, tokenizer


def _bundle(directory):
    from progemu.train.setup import build_model_bundle

    fake_image_tokenizer = SimpleNamespace(grid=(8, 8), codebook_size=32)
    return build_model_bundle(image_tokenizer=fake_image_tokenizer, preset="emu3-8b", texts=[], seed=0, init=directory)


def _reference_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_init_from_emu3_conditional_generation(emu3_dir):
    directory, model, tokenizer = emu3_dir
    bundle = _bundle(directory)
    ids = torch.tensor([tokenizer.encode("<|extra_203|>New small left pleural effusion.", add_special_tokens=False)])
    with torch.no_grad():
        ours = bundle.model.eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, _reference_logits(model, ids), rtol=1e-5, atol=1e-5)
    assert bundle.model.config.attention_dropout == 0.0  # Emu3's 0.1 is switched off for training
    assert bundle.layout.bos_id == tokenizer.bos_token_id and bundle.layout.grid == (8, 8)


def test_init_from_legacy_key_names(emu3_dir, tmp_path):
    """The hub conversions (transformers 4.48+) name keys text_model.model.* / text_model.lm_head / vqmodel.*."""
    from safetensors.torch import load_file, save_file

    directory, model, tokenizer = emu3_dir
    state = {}
    for path in directory.glob("*.safetensors"):
        state.update(load_file(path))
    legacy = {}
    for key, value in state.items():
        if key.startswith("model.text_model."):
            key = "text_model.model." + key[len("model.text_model."):]
        elif key.startswith("lm_head."):
            key = "text_model." + key
        elif key.startswith("model.vqmodel."):
            key = "vqmodel." + key[len("model.vqmodel."):]
        legacy[key] = value.contiguous()
    assert any(k.startswith("text_model.model.layers.") for k in legacy)
    save_file(legacy, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    tokenizer.save_pretrained(tmp_path)
    bundle = _bundle(tmp_path)
    ids = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    with torch.no_grad():
        ours = bundle.model.eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, _reference_logits(model, ids), rtol=1e-5, atol=1e-5)


def test_emu3_errors_name_what_to_download(tmp_path):
    from progemu.model.checkpoint import load_checkpoint, load_emu3_text_state

    with pytest.raises(FileNotFoundError, match="Emu3-Gen-hf"):
        load_emu3_text_state(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "emu3", "text_config": {}}))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_emu3_text_state(tmp_path)
    with pytest.raises(FileNotFoundError, match="progemu.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither a progemu checkpoint"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        _bundle(tmp_path)


def test_presets_build_emu3_configs():
    from progemu.model.presets import PRESETS, text_config
    from progemu.train.memory_plan import count_parameters

    config = text_config("emu3-8b", pad_token_id=151643, bos_token_id=151849, eos_token_id=151850)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size) == (4096, 32, 14336, 184622)
    assert config.attention_dropout == 0.0
    # Emu3-Gen: 32 layers x (4 * 4096^2 q/o... ) -- computed by hand from the shapes:
    h, kv, inter, vocab, layers = 4096, 1024, 14336, 184622, 32
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h  # q, o, k, v, MLP, two RMSNorm weights
    assert count_parameters(config) == layers * per_layer + 2 * vocab * h + h
    assert set(PRESETS) >= {"tiny", "small", "base", "emu3-8b"}


def test_memory_plan_for_the_8b_shape():
    from progemu.train.memory_plan import GIB, format_plan, memory_plan

    fsdp = memory_plan("emu3-8b", world_size=4, strategy="fsdp")
    ddp = memory_plan("emu3-8b", world_size=4, strategy="ddp")
    p = fsdp.parameters
    assert abs(fsdp.optimizer_gib - 8 * p / 4 / GIB) < 1e-9 and abs(ddp.optimizer_gib - 8 * p / GIB) < 1e-9
    assert fsdp.seq_len == 1 + 2 * 4169 + 200
    assert fsdp.fits and not ddp.fits  # ZeRO-3 / FSDP is needed on 4 x 80 GB
    assert "total per GPU" in format_plan(fsdp)
