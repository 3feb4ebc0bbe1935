"""TokenLayout: Emu3's ids, image layout, loss masks, null prefix, round trips build -> parse."""
from __future__ import annotations

import numpy as np
import pytest

from progemu.model.layout import IGNORE_INDEX, SPECIAL_TOKEN_NAMES, TokenLayout, visual_token_name

TEXTS = [
    "Mild pleural effusion has developed in the left lower lung.",
    "There is blunting of the left costophrenic angle, which was previously sharp.",
    "New opacity in the right upper lobe.",
    "The heart size is enlarged compared with the prior study.",
] * 10


@pytest.fixture(scope="module")
def small_tokenizer():
    from progemu.model.text_tokenizer import train_text_tokenizer

    return train_text_tokenizer(TEXTS, codebook_size=32, vocab_size=320)


@pytest.fixture(scope="module")
def layout(small_tokenizer):
    return TokenLayout.from_tokenizer(small_tokenizer, (3, 4), 32)


def _emu3_like_tokenizer():
    """A word-level tokenizer that puts Emu3's specials and visual tokens at Emu3's real ids.

    Printable ASCII 33..126 get ids 0..93, as in Qwen's byte-level vocabulary (which Emu3 uses):
    '!'=0, '*'=9, '0'=15, ..., '9'=24; digits are split one per token as Qwen does.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(c): c - 33 for c in range(33, 127)}
    vocab.update({"<|endoftext|>": 151643, "<|extra_200|>": 151846, "<|extra_201|>": 151847, "<|extra_203|>": 151849,
                  "<|extra_204|>": 151850, "<|image token|>": 151851, "<|image start|>": 151852, "<|image end|>": 151853})
    vocab.update({visual_token_name(k): 151854 + k for k in range(32768)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_emu3_real_ids():
    layout = TokenLayout.from_tokenizer(_emu3_like_tokenizer(), (64, 64), 32768)
    assert (layout.bos_id, layout.eos_id, layout.pad_id) == (151849, 151850, 151643)
    assert (layout.eol_id, layout.eof_id, layout.image_token_id, layout.boi_id, layout.eoi_id) == (
        151846, 151847, 151851, 151852, 151853)
    assert layout.visual_offset == 151854
    assert layout.vocab_size == 184622  # Emu3TextConfig's default vocab_size
    assert layout.size_text_ids == (21, 19, 9, 21, 19)  # "6" "4" "*" "6" "4"
    # 1 BOI + 5 size + 1 image token + 64 * 65 + EOF + EOI = 4169 tokens (formats.md: "about 4,170")
    assert layout.image_length == 1 + 5 + 1 + 64 * 65 + 2 == 4169
    codes = np.arange(64 * 64).reshape(64, 64) % 32768
    ids = layout.image_tokens(codes)
    assert len(ids) == 4169
    assert ids[:7] == [151852, 21, 19, 9, 21, 19, 151851]
    assert ids[7] == 151854 and ids[7 + 63] == 151854 + 63 and ids[7 + 64] == 151846
    assert ids[-2:] == [151847, 151853]


def test_small_layout_is_compact(small_tokenizer, layout):
    n = len(small_tokenizer)
    assert layout.visual_offset == n - 32
    assert layout.text_vocab_size == layout.visual_offset
    assert layout.vocab_size == n
    specials = [small_tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKEN_NAMES.values()]
    assert specials == list(range(layout.visual_offset - 8, layout.visual_offset))
    assert small_tokenizer.convert_ids_to_tokens(list(layout.size_text_ids)) == ["3", "*", "4"]


def test_image_tokens_layout(layout):
    codes = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [31, 30, 29, 28]])
    ids = layout.image_tokens(codes)
    v = layout.visual_offset
    expected = [layout.boi_id, *layout.size_text_ids, layout.image_token_id,
                v + 0, v + 1, v + 2, v + 3, layout.eol_id,
                v + 4, v + 5, v + 6, v + 7, layout.eol_id,
                v + 31, v + 30, v + 29, v + 28, layout.eol_id,
                layout.eof_id, layout.eoi_id]
    assert ids == expected
    assert len(ids) == layout.image_length
    np.testing.assert_array_equal(layout.codes_from_visual_ids(ids), codes)
    body = ids[layout.image_header_length:]
    for position, token in enumerate(body):
        forced = layout.image_body_forced_id(position)
        assert (forced is None and layout.is_visual(token)) or forced == token


def test_image_tokens_rejects_bad_codes(layout):
    with pytest.raises(ValueError, match="grid"):
        layout.image_tokens(np.zeros((4, 4), dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        layout.image_tokens(np.full((3, 4), 32))
    with pytest.raises(ValueError, match="shape"):
        layout.image_tokens(np.zeros(12, dtype=int))


@pytest.mark.parametrize("mode", ["joint", "image", "text"])
def test_build_mask_covers_exactly_the_target(layout, small_tokenizer, mode):
    rng = np.random.default_rng(0)
    prior, followup = rng.integers(0, 32, (3, 4)), rng.integers(0, 32, (3, 4))
    prompt = small_tokenizer.encode("New opacity.", add_special_tokens=False)
    interp = small_tokenizer.encode("The heart size is enlarged.", add_special_tokens=False)
    ids, labels = layout.build(prior, prompt, followup, interp, mode=mode)
    assert len(ids) == len(labels)
    image_len = layout.image_length
    if mode == "joint":
        prefix_len = 1 + image_len + len(prompt)
        target = layout.image_tokens(followup) + interp + [layout.eos_id]
    elif mode == "image":
        prefix_len = 1 + image_len + len(prompt)
        target = layout.image_tokens(followup) + [layout.eos_id]
    else:
        prefix_len = 1 + 2 * image_len + len(prompt)
        target = interp + [layout.eos_id]
    assert len(ids) == prefix_len + len(target)
    assert labels[:prefix_len] == [IGNORE_INDEX] * prefix_len
    assert labels[prefix_len:] == target == ids[prefix_len:]
    assert ids[:prefix_len] == layout.prefix(prior, prompt, followup if mode == "text" else None)
    assert ids[0] == layout.bos_id and ids[-1] == layout.eos_id
    # loss on all tokens (the released code)
    ids_all, labels_all = layout.build(prior, prompt, followup, interp, mode=mode, loss_on="all")
    assert ids_all == ids and labels_all == ids


def test_null_condition(layout):
    rng = np.random.default_rng(1)
    prior, followup = rng.integers(0, 32, (3, 4)), rng.integers(0, 32, (3, 4))
    ids, labels = layout.build(prior, [5, 6], followup, [7, 8], mode="joint", null_condition=True)
    assert ids == [layout.bos_id] + layout.image_tokens(followup) + [7, 8, layout.eos_id]
    assert labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]
    assert layout.null_prefix() == [layout.bos_id]
    ids, labels = layout.build(prior, [5, 6], followup, [7, 8], mode="text", null_condition=True)
    assert ids[: 1 + layout.image_length] == layout.null_prefix(followup)
    assert labels == [IGNORE_INDEX] * (1 + layout.image_length) + [7, 8, layout.eos_id]


@pytest.mark.parametrize("with_header", [True, False])
def test_parse_round_trip(layout, small_tokenizer, with_header):
    rng = np.random.default_rng(2)
    prior, followup = rng.integers(0, 32, (3, 4)), rng.integers(0, 32, (3, 4))
    prompt = small_tokenizer.encode("Mild pleural effusion.", add_special_tokens=False)
    interp = small_tokenizer.encode("There is blunting of the left costophrenic angle.", add_special_tokens=False)
    ids, _ = layout.build(prior, prompt, followup, interp, mode="joint")
    generated = ids[len(layout.prefix(prior, prompt)):]
    if not with_header:
        generated = generated[layout.image_header_length:]
    codes, text = layout.parse(generated + [layout.pad_id, 3, 4])
    np.testing.assert_array_equal(codes, followup)
    assert text == interp
    assert small_tokenizer.decode(text) == "There is blunting of the left costophrenic angle."


def test_parse_text_only_and_broken_images(layout):
    codes, text = layout.parse([10, 11, 12, layout.eos_id, 13])
    assert codes is None and text == [10, 11, 12]
    header = layout.image_header()
    v = layout.visual_offset
    short_row = header + [v, v, v, layout.eol_id] * 3 + [layout.eof_id, layout.eoi_id, 9, layout.eos_id]
    codes, text = layout.parse(short_row)
    assert codes is None and text == [9]
    truncated = header + [v + 1] * 4 + [layout.eol_id]
    assert layout.parse(truncated) == (None, [])
    # image mode: the image is followed directly by EOS
    full = layout.image_tokens(np.ones((3, 4), dtype=int)) + [layout.eos_id]
    codes, text = layout.parse(full)
    np.testing.assert_array_equal(codes, np.ones((3, 4)))
    assert text == []


def test_dict_round_trip_and_validation(layout):
    import json

    again = TokenLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
    assert again == layout
    with pytest.raises(ValueError, match="unknown keys"):
        TokenLayout.from_dict({**layout.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="distinct"):
        TokenLayout(**{**layout.to_dict(), "eos_id": layout.bos_id})
    with pytest.raises(ValueError, match="text id"):
        layout.build(np.zeros((3, 4), int), [layout.visual_offset], np.zeros((3, 4), int), [], mode="joint")
    with pytest.raises(ValueError, match="mode"):
        layout.build(np.zeros((3, 4), int), [], np.zeros((3, 4), int), [], mode="both")


def test_from_tokenizer_names_missing_tokens(small_tokenizer):
    with pytest.raises(ValueError, match="visual token 000099"):
        TokenLayout.from_tokenizer(small_tokenizer, (3, 4), 100)
