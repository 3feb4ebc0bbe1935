"""``progemu convert`` on tiny BAAI-format checkpoints, checked against independent references.

Golden checks: logits of the converted ``Emu3ForCausalLM`` equal a plain-PyTorch forward of the
BAAI-named weights (float32, eval, atol 1e-5) and 10 greedy tokens agree; the converted
``Emu3VQVAE`` gives the codes and pixels of a plain-PyTorch forward of BAAI's VQ; the converted
tokenizer gives ``tiktoken``'s ids (BAAI's own encoder) for text and every special token.
Then the converted folder runs through ``progemu generate`` and ``train --init``'s loader.
"""
from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest
import torch

import convert_fixtures as cf

CODEBOOK = 64
STRINGS = ["New small left pleural effusion.", "64*64", "4*4", "café naïve — 肺 x-ray's", "a\n\n  b  \t c\r\n", "12345 0.5mm",
           "Don't, won't; they'll", "<|image start|>4*4<|image token|><|visual token 000003|><|extra_200|><|image end|>",
           "<|extra_203|>Heart size is normal.<|extra_204|>", "   leading spaces", "ﬁ ligature Å (NFC) A\u030a", ""]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from progemu.convert import ConvertConfig, convert

    root = tmp_path_factory.mktemp("convert")
    config, state = cf.write_baai_model(root / "Emu3-Gen", CODEBOOK)
    vq_config, vq_state = cf.write_baai_vq(root / "Emu3-VisionTokenizer", CODEBOOK)
    result = convert(ConvertConfig(model=str(root / "Emu3-Gen"), vision_tokenizer=str(root / "Emu3-VisionTokenizer"),
                                   out=str(root / "out"), image_size=16))
    return {"root": root, "out": result.out, "result": result, "config": config, "state": state, "vq_config": vq_config,
            "vq_state": vq_state}


@pytest.fixture(scope="module")
def model(converted):
    from transformers import Emu3ForCausalLM

    return Emu3ForCausalLM.from_pretrained(str(converted["out"]), dtype=torch.float32).eval()


def _sequence(converted) -> list[int]:
    """A ProgEmu conditioning prefix (BOS, prior image, prompt) built with the converted layout and tokenizer."""
    from progemu.model.checkpoint import read_meta
    from progemu.model.layout import TokenLayout
    from transformers import AutoTokenizer

    layout = TokenLayout.from_dict(read_meta(converted["out"])["layout"])
    tokenizer = AutoTokenizer.from_pretrained(str(converted["out"]))
    codes = torch.arange(16).reshape(4, 4) * 3 % CODEBOOK
    return layout.prefix(codes, tokenizer.encode("New small left pleural effusion.", add_special_tokens=False))


def test_logits_equal_a_plain_forward_of_the_baai_weights(converted, model):
    ids = torch.tensor([_sequence(converted)])
    with torch.no_grad():
        logits = model(ids).logits
    reference = cf.reference_logits(converted["state"], converted["config"], ids)
    assert logits.shape == reference.shape == (1, ids.shape[1], converted["config"]["vocab_size"])
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    assert reference.std() > 1.0  # the check is not trivially met by near-zero logits


def test_ten_greedy_tokens_equal_the_reference(converted, model):
    prefix = _sequence(converted)
    expected = cf.reference_greedy(converted["state"], converted["config"], prefix, 10)
    with torch.no_grad():
        out = model.generate(torch.tensor([prefix]), max_new_tokens=10, do_sample=False, min_new_tokens=10,
                             pad_token_id=151643, eos_token_id=None)
    assert out[0, len(prefix):].tolist() == expected
    assert len(set(expected)) > 1


def test_vision_tokenizer_codes_and_pixels_equal_baais(converted):
    from progemu.tokenizer import ImageTokenizer

    tokenizer = ImageTokenizer.from_pretrained(converted["out"] / "image_tokenizer")
    assert tokenizer.grid == (4, 4) and tokenizer.codebook_size == CODEBOOK and tokenizer.config.in_channels == 3
    generator = torch.Generator().manual_seed(3)
    grey = torch.rand(3, 1, 16, 16, generator=generator)
    reference_codes = cf.reference_vq_encode(converted["vq_state"], converted["vq_config"], grey.repeat(1, 3, 1, 1) * 2 - 1)
    codes = tokenizer.encode(grey)
    assert torch.equal(codes, reference_codes)
    assert len(codes.unique()) > 8  # codes vary across the grid
    pixels = tokenizer.model.decode(codes)
    reference_pixels = cf.reference_vq_decode(converted["vq_state"], converted["vq_config"], codes)
    torch.testing.assert_close(pixels, reference_pixels, atol=1e-5, rtol=0)
    expected_grey = ((reference_pixels.mean(1, keepdim=True) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(tokenizer.decode(codes), expected_grey, atol=1e-5, rtol=0)


def test_text_tokenizer_ids_are_baais(converted):
    from transformers import AutoTokenizer

    encoding, specials = cf.tiktoken_reference(converted["root"] / "Emu3-Gen")
    tokenizer = AutoTokenizer.from_pretrained(str(converted["out"]))
    for text in STRINGS:
        # BAAI's Emu3Tokenizer.tokenize NFC-normalises, then encodes with tiktoken
        expected = encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        assert tokenizer.encode(text, add_special_tokens=False) == expected, text
    assert len(specials) == 208 + 3 + CODEBOOK
    assert tokenizer.convert_tokens_to_ids(list(specials)) == list(specials.values())
    assert specials["<|extra_200|>"] == 151846 and specials["<|extra_201|>"] == 151847  # EOL, EOF
    assert tokenizer.decode(encoding.encode("Heart size is normal.")) == "Heart size is normal."
    meta = json.loads((converted["out"] / "progemu.json").read_text())
    layout = meta["layout"]
    assert (layout["bos_id"], layout["eos_id"], layout["pad_id"], layout["eol_id"], layout["eof_id"]) == \
        (151849, 151850, 151643, 151846, 151847)
    assert (layout["image_token_id"], layout["boi_id"], layout["eoi_id"], layout["visual_offset"]) == \
        (151851, 151852, 151853, 151854)
    assert layout["size_text_ids"] == encoding.encode("4*4") and layout["followup_position"] == 0


def test_weights_are_the_source_bytes_and_the_output_records_its_sources(converted):
    from safetensors import safe_open

    from progemu.convert import ConvertConfig, SAMPLING_PRESETS
    from progemu.generate.model_defaults import read_sampling_defaults
    from progemu.utils.config import load_config

    out = converted["out"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(converted["state"])
        for key in handle.keys():
            assert torch.equal(handle.get_tensor(key), converted["state"][key]), key
    with safe_open(str(out / "image_tokenizer" / "model.safetensors"), framework="pt") as handle:
        weight = handle.get_tensor("encoder.middle_block.attn_1.q_proj.weight")
        assert torch.equal(weight, converted["vq_state"]["encoder.mid.attn_1.q.weight"][:, :, 0, 0])
    meta = json.loads((out / "progemu.json").read_text())
    assert read_sampling_defaults(out) == SAMPLING_PRESETS["official"][0]
    assert read_sampling_defaults(out)["top_k"] == 2048 and "Masaaki-75/progemu" in meta["sampling_note"]
    record = meta["converted_from"]
    from progemu import __version__

    assert record["progemu_version"] == __version__ and record["model"]["format"] == "baai"
    hashed = {row["name"]: row["sha256"] for part in ("model", "vision_tokenizer", "tokenizer") for row in record[part]["files"]}
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "emu3.tiktoken"):
        assert hashed[name] == hashlib.sha256((converted["root"] / "Emu3-Gen" / name).read_bytes()).hexdigest()
    vq_file = converted["root"] / "Emu3-VisionTokenizer" / "model.safetensors"
    assert hashed["model.safetensors"] == hashlib.sha256(vq_file.read_bytes()).hexdigest()
    assert record["source_config"]["image_area"] == 518400
    assert load_config(ConvertConfig, out / "convert.json").image_size == 16
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "emu3_text_model" and config["dtype"] == "float32"


def test_bin_shards_and_bfloat16_are_kept(tmp_path):
    from safetensors import safe_open

    from progemu.convert import ConvertConfig, convert

    config, state = cf.write_baai_model(tmp_path / "bin", CODEBOOK, kind="bin", shards=3, dtype=torch.bfloat16, seed=4)
    (tmp_path / "bin" / "training_args.bin").write_bytes(b"not weights")  # saved by the official training code
    convert(ConvertConfig(model=str(tmp_path / "bin"), out=str(tmp_path / "out"), image_size=16, max_shard_gb=0.005))
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and len(set(index["weight_map"].values())) >= 2
    for name in set(index["weight_map"].values()):
        with safe_open(str(tmp_path / "out" / name), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, state[key]), key
    meta = json.loads((tmp_path / "out" / "progemu.json").read_text())
    assert meta["image_tokenizer"] is None and meta["layout"]["grid_h"] == 2  # no VQ: train --init only, 16 px / 8
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_generate_runs_on_the_converted_checkpoint(converted, tmp_path):
    from generate_fixtures import write_prior_png

    from progemu.cli import main

    prior = write_prior_png(tmp_path / "prior.png", size=24)
    out = tmp_path / "result"
    assert main(["generate", "--model", str(converted["out"]), "--prior", str(prior), "--prompt", "New small left pleural effusion.",
                 "--out", str(out), "--max-text-tokens", "6", "--device", "cpu", "--skip-prior-checks"]) == 0
    document = json.loads((out / "result.json").read_text())
    assert document["settings"]["top_k"] == 2048 and document["settings"]["cfg_scale"] == 1.0
    assert document["settings"]["temperature"] == 1.0
    assert (out / "counterfactual.png").is_file() and (out / "interpretation.txt").is_file()


def test_train_init_loads_the_converted_checkpoint(converted):
    from progemu.tokenizer import ImageTokenizer
    from progemu.train.setup import build_model_bundle

    image_tokenizer = ImageTokenizer.from_pretrained(converted["out"] / "image_tokenizer")
    bundle = build_model_bundle(image_tokenizer=image_tokenizer, preset="tiny", texts=[], seed=0, init=converted["out"])
    assert bundle.source.startswith("init:") and bundle.layout.visual_offset == 151854
    assert torch.equal(bundle.model.lm_head.weight, converted["state"]["lm_head.weight"])


def test_a_transformers_format_folder_converts_too(converted, tmp_path):
    """The converted folder is itself transformers' format: converting it again gives the same model."""
    from progemu.convert import ConvertConfig, convert
    from transformers import Emu3ForCausalLM

    again = convert(ConvertConfig(model=str(converted["out"]), vision_tokenizer=str(converted["out"] / "image_tokenizer"),
                                  out=str(tmp_path / "again"), image_size=16))
    meta = json.loads((again.out / "progemu.json").read_text())
    assert meta["converted_from"]["model"]["format"] == "hf" and meta["converted_from"]["vision_tokenizer"]["format"] == "hf"
    assert meta["layout"] == json.loads((converted["out"] / "progemu.json").read_text())["layout"]
    ids = torch.tensor([_sequence(converted)])
    with torch.no_grad():
        logits = Emu3ForCausalLM.from_pretrained(str(again.out), dtype=torch.float32).eval()(ids).logits
    torch.testing.assert_close(logits, cf.reference_logits(converted["state"], converted["config"], ids), atol=1e-5, rtol=0)


def test_rerun_is_a_no_op_and_other_settings_need_overwrite(converted):
    from progemu.convert import ConvertConfig, convert
    from progemu.utils.checks import UsageError

    base = dict(model=str(converted["root"] / "Emu3-Gen"), vision_tokenizer=str(converted["root"] / "Emu3-VisionTokenizer"),
                out=str(converted["out"]), image_size=16)
    assert convert(ConvertConfig(**base)).up_to_date
    with pytest.raises(UsageError, match="--overwrite"):
        convert(ConvertConfig(**base, sampling="emu3-gen"))


def test_official_checkpoint_without_tokenizer_files_needs_tokenizer_flag(converted, tmp_path, capsys):
    import shutil

    from progemu.cli import main

    ckpt = tmp_path / "progemu-ckpt"
    ckpt.mkdir()
    for path in (converted["root"] / "Emu3-Gen").glob("model*"):
        shutil.copy(path, ckpt / path.name)
    shutil.copy(converted["root"] / "Emu3-Gen" / "config.json", ckpt / "config.json")
    args = ["convert", "--model", str(ckpt), "--vision-tokenizer", str(converted["root"] / "Emu3-VisionTokenizer"),
            "--image-size", "16", "--out", str(tmp_path / "out"), "--sampling", "emu3-gen", "--no-hash-sources"]
    assert main(args) == 2
    assert "pass --tokenizer" in capsys.readouterr().err
    assert main(args + ["--tokenizer", str(converted["root"] / "Emu3-Gen")]) == 0
    meta = json.loads((tmp_path / "out" / "progemu.json").read_text())
    assert meta["sampling"]["cfg_scale"] == 3.0 and meta["converted_from"]["model"]["files"][0]["sha256"] is None


# ------------------------------------------------------------------------------------------ clear errors
def _convert_error(**kwargs) -> str:
    from progemu.convert import ConvertConfig, WeightFormatError, convert

    with pytest.raises(WeightFormatError) as caught:
        convert(ConvertConfig(image_size=16, **kwargs))
    return str(caught.value)


def test_a_folder_in_neither_format_is_named(tmp_path, converted):
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _convert_error(model=str(empty), out=str(tmp_path / "o1"))
    assert str(empty) in message and "neither BAAI's Emu3 format nor transformers'" in message
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    message = _convert_error(model=str(other), out=str(tmp_path / "o2"))
    assert "model_type 'llama'" in message and "BAAI/Emu3-Gen" in message
    message = _convert_error(model=str(converted["root"] / "Emu3-Gen"), vision_tokenizer=str(other), out=str(tmp_path / "o3"))
    assert "not an Emu3 vision tokenizer" in message and "BAAI/Emu3-VisionTokenizer" in message
    assert not (tmp_path / "o3" / "progemu.json").exists()


def test_a_codebook_that_does_not_match_the_visual_vocabulary(tmp_path, converted):
    cf.write_baai_vq(tmp_path / "vq32", codebook_size=32)
    message = _convert_error(model=str(converted["root"] / "Emu3-Gen"), vision_tokenizer=str(tmp_path / "vq32"),
                             out=str(tmp_path / "out"))
    assert "codebook has 32 codes but the model's visual vocabulary has 64 tokens" in message
    assert "use the one the model was trained with" in message


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_a_missing_shard_is_named(tmp_path, kind):
    files = cf.write_state(tmp_path / "m", cf.baai_lm_state(cf.baai_lm_config(CODEBOOK)), kind=kind, shards=2)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cf.baai_lm_config(CODEBOOK)))
    files[1].unlink()
    message = _convert_error(model=str(tmp_path / "m"), out=str(tmp_path / "out"))
    assert files[1].name in message and "missing" in message and "download the missing files" in message


def test_a_truncated_safetensors_file_is_named(tmp_path):
    config, _ = cf.write_baai_model(tmp_path / "m", CODEBOOK)
    shard = tmp_path / "m" / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    message = _convert_error(model=str(tmp_path / "m"), out=str(tmp_path / "out"))
    assert str(shard) in message and "truncated safetensors file" in message and "download this model file again" in message
    shard.write_bytes(data[:5])
    assert "truncated safetensors file" in _convert_error(model=str(tmp_path / "m"), out=str(tmp_path / "out"))


def test_a_truncated_bin_file_is_named(tmp_path):
    files = cf.write_state(tmp_path / "m", cf.baai_lm_state(cf.baai_lm_config(CODEBOOK)), kind="bin", shards=2)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cf.baai_lm_config(CODEBOOK)))
    files[0].write_bytes(files[0].read_bytes()[:4000])
    message = _convert_error(model=str(tmp_path / "m"), out=str(tmp_path / "out"))
    assert str(files[0]) in message and "truncated or damaged" in message


def test_cli_flags_follow_the_config_and_errors_exit_2(tmp_path, capsys):
    import dataclasses

    from progemu.convert.cli import build_parser, main
    from progemu.convert.config import ConvertConfig

    text = build_parser().format_help()
    for field in dataclasses.fields(ConvertConfig):
        assert ("--no-" if field.default is True else "--") + field.name.replace("_", "-") in text
    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_progemu_help_lists_convert(capsys):
    from progemu.cli import main

    assert main(["--help"]) == 0
    assert "convert" in capsys.readouterr().out


def test_the_copy_without_copy_file_range_gives_the_same_files(converted, tmp_path, monkeypatch):
    from progemu.convert import ConvertConfig, convert
    from progemu.convert import safetensors_io

    monkeypatch.setattr(safetensors_io, "_COPY_FILE_RANGE", [False])  # platforms without it: through a buffer
    out = convert(ConvertConfig(model=str(converted["root"] / "Emu3-Gen"), out=str(tmp_path / "out"), image_size=16,
                                vision_tokenizer=str(converted["root"] / "Emu3-VisionTokenizer"))).out
    for name in ("model.safetensors", "image_tokenizer/model.safetensors"):
        assert (out / name).read_bytes() == (converted["out"] / name).read_bytes(), name


def test_a_full_transformers_emu3_folder_brings_its_own_vision_tokenizer(converted, tmp_path):
    """Emu3-community/Emu3-Gen-hf's layout: one config (text_config + vq_config), text and VQ weights in one file."""
    import shutil

    from safetensors.torch import load_file, save_file

    from progemu.convert import ConvertConfig, convert
    from progemu.tokenizer import ImageTokenizer

    full = tmp_path / "Emu3-Gen-hf"
    full.mkdir()
    text = load_file(str(converted["out"] / "model.safetensors"))
    vq = load_file(str(converted["out"] / "image_tokenizer" / "model.safetensors"))
    state = {("model.text_model." + k[len("model."):] if k.startswith("model.") else k): v for k, v in text.items()}
    state.update({"model.vqmodel." + k: v for k, v in vq.items()})
    save_file(state, str(full / "model.safetensors"))
    text_config = json.loads((converted["out"] / "config.json").read_text())
    vq_config = json.loads((converted["out"] / "image_tokenizer" / "config.json").read_text())
    (full / "config.json").write_text(json.dumps({"model_type": "emu3", "text_config": text_config, "vq_config": vq_config}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(converted["out"] / name, full / name)
    out = convert(ConvertConfig(model=str(full), out=str(tmp_path / "out"), image_size=16)).out
    meta = json.loads((out / "progemu.json").read_text())
    assert meta["converted_from"]["vision_tokenizer"]["format"] == "hf-full" and meta["image_tokenizer"] == "image_tokenizer"
    again = load_file(str(out / "model.safetensors"))
    assert set(again) == set(text) and all(torch.equal(again[k], text[k]) for k in text)
    codes = torch.randint(0, CODEBOOK, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ImageTokenizer.from_pretrained(out / "image_tokenizer").model.decode(codes),
                               cf.reference_vq_decode(converted["vq_state"], converted["vq_config"], codes), atol=1e-5, rtol=0)
