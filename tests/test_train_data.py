"""Training data: deterministic batches, prompt dropout, sentence shuffle, collation, the target-only loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from progemu.model.layout import IGNORE_INDEX
from progemu.train.data import DataConfig, ProgEmuExamples, collate, epoch_batches, load_codes, shuffle_sentences


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from train_fixtures import make_dataset, make_image_tokenizer

    from progemu.data.icgcxr import load_pairs
    from progemu.model.layout import TokenLayout
    from progemu.model.text_tokenizer import train_text_tokenizer
    from progemu.tokenizer.vqvae import ImageTokenizer

    root = tmp_path_factory.mktemp("train_data")
    data = make_dataset(root / "data", n_pairs=8)
    image_tokenizer = ImageTokenizer.from_pretrained(make_image_tokenizer(root / "tok"))
    pairs = load_pairs(data, split="train")
    codes = load_codes(data, pairs, image_tokenizer, progress=False)
    text_tokenizer = train_text_tokenizer([t for p in pairs for t in (p.prompt, p.interpretation)], 32, vocab_size=300)
    layout = TokenLayout.from_tokenizer(text_tokenizer, image_tokenizer.grid, 32)
    return {"data": data, "pairs": pairs, "codes": codes, "text_tokenizer": text_tokenizer, "layout": layout,
            "image_tokenizer": image_tokenizer}


def test_codes_come_from_the_cache_and_match_the_tokenizer(world):
    from progemu.tokenizer.images import load_image

    pair = world["pairs"][0]
    codes = world["codes"][str(pair.prior_image)]
    tokenizer = world["image_tokenizer"]
    direct = tokenizer.encode(torch.from_numpy(load_image(pair.prior_image, tokenizer.image_size))[None, None])[0]
    np.testing.assert_array_equal(codes, direct.numpy())
    assert codes.shape == (8, 8)


def test_epoch_batches_deterministic_and_bucketed():
    lengths = np.arange(40) * 3 % 17
    a = epoch_batches(lengths, 4, seed=1, epoch=2, bucket_batches=2)
    assert a == epoch_batches(lengths, 4, seed=1, epoch=2, bucket_batches=2)
    assert a != epoch_batches(lengths, 4, seed=1, epoch=3, bucket_batches=2)
    assert len(a) == 10 and sorted(i for b in a for i in b) == list(range(40))
    # every pair of batches from one chunk of 8 holds the 4 shortest and 4 longest of that chunk
    plain = epoch_batches(lengths, 4, seed=1, epoch=2, bucket_batches=1)
    assert sorted(i for b in plain for i in b) == list(range(40))
    assert len(epoch_batches(np.ones(10), 4, seed=0, epoch=0)) == 2  # incomplete last batch dropped
    with pytest.raises(ValueError, match="fewer than one global batch"):
        epoch_batches(np.ones(3), 4, seed=0, epoch=0)


def test_examples_prompt_dropout_rate_and_determinism(world):
    config = DataConfig(prompt_dropout=0.25, sentence_shuffle=0.0)
    examples = ProgEmuExamples(world["pairs"], world["codes"], world["text_tokenizer"], world["layout"], config, seed=3)
    layout = world["layout"]
    nulls = 0
    trials = 0
    for epoch in range(50):
        for index in range(len(examples)):
            ids, labels = examples.example(index, epoch)
            assert (ids, labels) == examples.example(index, epoch)
            trials += 1
            if ids[1] != layout.boi_id:  # null prefix: BOS then directly the follow-up image
                raise AssertionError("every joint sequence continues with an image after BOS")
            nulls += int(labels[1] != IGNORE_INDEX)  # null prefix = [BOS]: the target starts at position 1
    rate = nulls / trials
    # binomial(400, 0.25): standard deviation 0.022
    assert 0.17 < rate < 0.33


def test_sentence_shuffle():
    rng = np.random.default_rng(0)
    text = "One. Two is here. Three!"
    seen = {shuffle_sentences(text, rng) for _ in range(50)}
    assert len(seen) == 6
    assert all(sorted(s.replace("!", ".").split(". ")) for s in seen)
    assert shuffle_sentences("Only one sentence.", rng) == "Only one sentence."


def test_collate_right_pads():
    batch = collate([([5, 6, 7], [-100, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("loss_on", ["target", "all"])
def test_target_loss_matches_transformers_loss(world, loss_on):
    """TargetLoss (lm-head on labelled positions only, summed) == transformers' own mean causal-LM loss."""
    from transformers import Emu3ForCausalLM

    from progemu.model.presets import text_config
    from progemu.train.objective import TargetLoss

    layout = world["layout"]
    torch.manual_seed(0)
    model = Emu3ForCausalLM(text_config("tiny", layout)).eval()
    config = DataConfig(prompt_dropout=0.0, sentence_shuffle=0.0, loss_on=loss_on)
    examples = ProgEmuExamples(world["pairs"], world["codes"], world["text_tokenizer"], layout, config)
    batch = collate([examples.example(i, 0) for i in range(3)], layout.pad_id)
    with torch.no_grad():
        sums = TargetLoss(model, layout.visual_offset, layout.codebook_size)(**batch)
        reference = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert sums[1].item() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    torch.testing.assert_close(sums[0] / sums[1], reference, rtol=1e-5, atol=1e-6)
    # image part: the CE of the visual-token labels only, computed the slow way
    targets = batch["labels"][:, 1:]
    visual = (targets >= layout.visual_offset) & (targets != IGNORE_INDEX)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][visual], targets[visual], reduction="sum")
    torch.testing.assert_close(sums[2], ce, rtol=1e-5, atol=1e-4)
    assert sums[3].item() == visual.sum().item() == 3 * layout.grid_h * layout.grid_w * (1 if loss_on == "target" else 2)
    torch.testing.assert_close(sums[4], sums[0])  # weight 1: the optimised sum is the plain sum
    # visual_loss_weight w: optimised = text CE + w * visual CE, the logged sums unchanged
    with torch.no_grad():
        weighted = TargetLoss(model, layout.visual_offset, layout.codebook_size, visual_loss_weight=0.25)(**batch)
    text_ce = sums[0] - ce
    torch.testing.assert_close(weighted[4], text_ce + 0.25 * ce, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(weighted[:4], sums[:4])
