"""Interpretation maps: the hooked eager pass against transformers' own output_attentions, phrase bookkeeping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from generate_fixtures import TEXTS, tiny_layout, tiny_model, tiny_prefix
from progemu.generate.attention import (AttentionSettings, interpretation_attention, overlay_map, phrase_maps,
                                        split_phrases, token_char_spans, upsample_map)
from progemu.generate.sampler import ConstrainedSampler, SamplingSettings

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    layout = tiny_layout()
    model = tiny_model(layout, layers=3)
    prefix = tiny_prefix(layout, 0)
    out = ConstrainedSampler(model, layout).generate([prefix], settings=SamplingSettings(temperature=0, max_text_tokens=6))
    sequence = prefix + out.sequences[0][0]
    h, w = layout.grid
    image_start = len(prefix) + layout.image_header_length
    image_positions = [image_start + r * (w + 1) + c for r in range(h) for c in range(w)]
    text_start = len(prefix) + layout.image_length
    text_positions = list(range(text_start, len(sequence)))
    return layout, model, sequence, image_positions, text_positions


@pytest.mark.parametrize("layers,heads", [(None, None), ((-1,), (0, 2)), ((0, 2), None)])
def test_maps_equal_full_eager_output_attentions(setup, layers, heads):
    layout, model, sequence, image_positions, text_positions = setup
    ours = interpretation_attention(model, sequence, image_positions, text_positions, AttentionSettings(layers, heads))
    # slow reference: a cache-free eager forward over the whole sequence, transformers' output_attentions
    before = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            attentions = model(input_ids=torch.tensor([sequence]), output_attentions=True).attentions
    finally:
        model.config._attn_implementation = before
    n_layers = len(attentions)
    chosen = [i % n_layers for i in (layers or range(n_layers))]
    stack = torch.stack([attentions[i][0] for i in chosen])  # [layers, heads, L, L]
    if heads is not None:
        stack = stack[:, list(heads)]
    queries = [p - 1 for p in text_positions]
    expected = stack.mean(dim=(0, 1))[queries][:, image_positions].numpy()
    assert ours.shape == (len(text_positions), len(image_positions))
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-4)
    assert model.config._attn_implementation == before  # the switch to eager is undone
    assert np.all(ours.sum(axis=1) <= 1 + 1e-5)


def test_split_phrases_by_hand():
    text = "Blunting of the left angle. The opacity, however, is unchanged!  Heart normal"
    assert split_phrases(text) == [("Blunting of the left angle.", 0, 27), ("The opacity, however, is unchanged!", 28, 63),
                                   ("Heart normal", 65, 77)]
    clauses = [p for p, _, _ in split_phrases(text, "clause")]
    assert clauses == ["Blunting of the left angle.", "The opacity,", "however,", "is unchanged!", "Heart normal"]
    assert split_phrases("   ") == []


def test_token_spans_and_phrase_averages():
    from progemu.model.text_tokenizer import train_text_tokenizer

    tokenizer = train_text_tokenizer(TEXTS * 3, codebook_size=8, vocab_size=300)
    text = "No new consolidation. Heart size is normal."
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoded, spans = token_char_spans(tokenizer, ids)
    assert decoded == text
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a <= b for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    phrases = split_phrases(decoded)
    rng = np.random.default_rng(0)
    token_maps = rng.random((len(ids), 4)).astype(np.float32) * 0.2
    maps = phrase_maps(token_maps, spans, phrases, (2, 2))
    assert list(maps) == ["No new consolidation.", "Heart size is normal."]
    first = [t for t, (a, b) in enumerate(spans) if b > a and a < phrases[0][2]]
    expected = token_maps[first].mean(axis=0)
    np.testing.assert_allclose(maps["No new consolidation."]["map"].ravel(), expected / expected.sum(), rtol=1e-5)
    assert maps["No new consolidation."]["image_mass"] == pytest.approx(float(expected.sum()), rel=1e-5)
    for entry in maps.values():
        assert entry["map"].shape == (2, 2) and entry["map"].sum() == pytest.approx(1.0, abs=1e-5)


def test_upsample_and_overlay():
    grid = np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    heat = upsample_map(grid, (8, 8))
    assert heat.shape == (8, 8) and heat.max() == pytest.approx(1.0) and heat.min() == pytest.approx(0.0)
    assert heat[0, 7] > heat[7, 0]  # the hot code sits top-right
    image = np.full((8, 8), 0.5, dtype=np.float32)
    rgb = overlay_map(image, heat)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[7, 0]) == (128, 128, 128)  # no heat: the radiograph unchanged
    assert rgb[0, 7, 0] > rgb[0, 7, 2]  # hot: red-yellow
    with pytest.raises(ValueError, match="differ"):
        overlay_map(image, heat[:4])


def test_bad_layer_index(setup):
    layout, model, sequence, image_positions, text_positions = setup
    with pytest.raises(ValueError, match="layers"):
        interpretation_attention(model, sequence, image_positions, text_positions, AttentionSettings(layers=(7,)))
