"""Aligned positions and decoding-time anchoring, against slow reference paths.

Aligned layout: follow-up token (i, j) sits a constant number of positions after prior token
(i, j), whatever the prompt's length. Checked: hand-computed positions, KV-cached sampling ==
greedy full recompute with those positions, batched == looped, CFG at scale 1 == no guidance,
anchor 0 == plain sampling, checkpoint round trip, training batches and loss.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from generate_fixtures import N_TEXT, prior_codes, tiny_layout, tiny_model, tiny_prefix
from progemu.generate.sampler import ConstrainedSampler, SamplingSettings, allowed_text_ids
from progemu.model.layout import TokenLayout

torch.set_num_threads(1)

GREEDY = SamplingSettings(temperature=0.0, max_text_tokens=8)
BUDGET = 16


@pytest.fixture(scope="module")
def layout():
    return tiny_layout().with_positions("aligned", prompt_budget=BUDGET)


@pytest.fixture(scope="module")
def model(layout):
    return tiny_model(layout, eos_boost=3.0)


@pytest.fixture(scope="module", params=["dynamic", "static"])
def sampler(model, layout, request):
    return ConstrainedSampler(model, layout, cache=request.param)


def test_positions_by_hand():
    base = tiny_layout()  # 4x4 grid, "h*w" = 3 text ids: image = 3 + 2 + 4*5 + 2 = 27 tokens
    assert base.image_length == 27 and not base.aligned
    aligned = base.with_positions("aligned", prompt_budget=10)
    assert aligned.followup_position == 1 + 27 + 10 and aligned.prompt_budget == 10
    prior, follow = prior_codes(base, 0), prior_codes(base, 1)
    for prompt_length in (0, 3, 10):
        ids, _ = aligned.build(prior, list(range(prompt_length)), follow, [1, 2])
        positions = aligned.position_ids(ids)
        start = 1 + 27 + prompt_length  # index of the follow-up's BOI
        np.testing.assert_array_equal(positions[:start], np.arange(start))
        np.testing.assert_array_equal(positions[start:], 38 + np.arange(len(ids) - start))
        # follow-up cell (i, j) is exactly 37 positions after prior cell (i, j), whatever the prompt
        header = aligned.image_header_length
        for i, j in ((0, 0), (2, 3), (3, 1)):
            cell = header + i * 5 + j
            assert positions[start + cell] - positions[1 + cell] == 37
    null, _ = aligned.build(prior, [1, 2], follow, [1, 2], null_condition=True)
    assert aligned.position_ids(null)[1] == 38  # the unconditional branch puts the follow-up at the same place
    np.testing.assert_array_equal(base.position_ids(ids), np.arange(len(ids)))
    with pytest.raises(ValueError, match="more than the 10"):
        aligned.position_ids(aligned.build(prior, list(range(11)), follow, [1])[0])
    with pytest.raises(ValueError, match="aligned"):
        base.with_positions("diagonal")


def test_layout_dict_round_trip_and_old_layouts_are_sequential(layout):
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    old = layout.to_dict()
    del old["followup_position"]
    assert TokenLayout.from_dict(old).positions == "sequential"


def _recompute_greedy(model, layout, prefix, max_text_tokens):
    """Greedy decoding by a full forward over the whole sequence at every step (no cache)."""
    sequence = list(prefix) + layout.image_header()
    continuation = list(layout.image_header())
    visual = slice(layout.visual_offset, layout.visual_offset + layout.codebook_size)
    text_allowed = torch.zeros(layout.vocab_size, dtype=torch.bool)
    text_allowed[allowed_text_ids(layout)] = True

    def next_logits():
        ids = torch.tensor([sequence])
        positions = torch.from_numpy(layout.position_ids(sequence))[None]
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits[0, -1]

    for position in range(layout.image_body_length):
        forced = layout.image_body_forced_id(position)
        token = forced if forced is not None else int(torch.argmax(next_logits()[visual])) + layout.visual_offset
        sequence.append(token)
        continuation.append(token)
    for _ in range(max_text_tokens):
        logits = next_logits()[: layout.vocab_size].masked_fill(~text_allowed, float("-inf"))
        token = int(torch.argmax(logits))
        sequence.append(token)
        continuation.append(token)
        if token == layout.eos_id:
            break
    return continuation


def test_cached_greedy_equals_full_recompute(sampler, model, layout):
    prefixes = [tiny_prefix(layout, seed, prompt_length=1 + 5 * seed) for seed in range(3)]
    out = sampler.generate(prefixes, settings=GREEDY)
    for prefix, got in zip(prefixes, out.sequences):
        assert got[0] == _recompute_greedy(model, layout, prefix, GREEDY.max_text_tokens)


def test_batched_equals_looped_and_cfg_one_equals_none(sampler, layout):
    prefixes = [tiny_prefix(layout, seed, prompt_length=2 + 4 * seed) for seed in range(3)]
    settings = SamplingSettings(temperature=1.0, top_k=12, cfg_scale=2.0, max_text_tokens=8)
    batched = sampler.generate(prefixes, samples=2, seeds=[1, 2, 3], settings=settings)
    for r, prefix in enumerate(prefixes):
        assert batched.sequences[r] == sampler.generate([prefix], samples=2, seeds=[1 + r], settings=settings).sequences[0]
    plain = sampler.generate(prefixes, seeds=[4, 5, 6], settings=GREEDY)
    guided = sampler.generate(prefixes, seeds=[4, 5, 6], settings=GREEDY, keep_unconditional=True)
    assert plain.sequences == guided.sequences


def test_anchor_zero_is_plain_and_a_large_anchor_copies_the_prior(sampler, layout):
    seeds = [7, 8]
    prefixes = [tiny_prefix(layout, seed, prompt_length=3) for seed in range(2)]
    priors = [prior_codes(layout, seed).numpy() for seed in range(2)]
    settings = SamplingSettings(temperature=1.0, top_k=0, max_text_tokens=6)
    plain = sampler.generate(prefixes, samples=2, seeds=seeds, settings=settings)
    zero = sampler.generate(prefixes, samples=2, seeds=seeds, settings=settings, anchor_codes=priors)
    assert plain.sequences == zero.sequences
    strong = sampler.generate(prefixes, samples=2, seeds=seeds, settings=dataclasses.replace(settings, anchor=1e4),
                              anchor_codes=priors)
    for r in range(2):
        for sequence in strong.sequences[r]:
            codes, _ = layout.parse(sequence)
            np.testing.assert_array_equal(codes, priors[r])
    # a moderate anchor moves codes towards the prior without forcing all of them
    mild = sampler.generate(prefixes, samples=2, seeds=seeds, settings=dataclasses.replace(settings, anchor=3.0),
                            anchor_codes=priors)
    agree = lambda out: np.mean([np.mean(layout.parse(s)[0] == priors[r]) for r in range(2) for s in out.sequences[r]])
    assert agree(plain) < agree(mild) < 1.0
    with pytest.raises(ValueError, match="anchor_codes"):
        sampler.generate(prefixes, settings=dataclasses.replace(settings, anchor=1.0))
    with pytest.raises(ValueError, match="anchor"):
        SamplingSettings(anchor=-1.0).validate()


def test_checkpoint_round_trip_keeps_the_layout(tmp_path):
    from generate_fixtures import TEXTS, tiny_image_tokenizer
    from progemu.generate.pipeline import ProgEmuPipeline
    from progemu.model.checkpoint import load_checkpoint, save_checkpoint
    from progemu.model.text_tokenizer import train_text_tokenizer

    image_tokenizer = tiny_image_tokenizer()
    text_tokenizer = train_text_tokenizer(TEXTS * 3, codebook_size=image_tokenizer.codebook_size, vocab_size=300)
    layout = TokenLayout.from_tokenizer(text_tokenizer, image_tokenizer.grid, image_tokenizer.codebook_size)
    layout = layout.with_positions("aligned", prompt_budget=24)
    model = tiny_model(layout, init_range=0.1, eos_boost=2.0)
    save_checkpoint(tmp_path / "ckpt", model, text_tokenizer, layout, mode="joint", image_tokenizer=image_tokenizer,
                    preset="test")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.layout == layout and loaded.layout.aligned
    pipe = ProgEmuPipeline.from_pretrained(tmp_path / "ckpt")
    prior = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    result = pipe(prior, "New small left pleural effusion.", seed=0, temperature=0.0, max_text_tokens=6)
    assert result.counterfactuals[0].shape == (40, 40)
    assert set(result.attention) == set(result.phrases)  # attention maps work with jumping positions
    anchored = pipe(prior, "New small left pleural effusion.", seed=0, temperature=1.0, anchor=1e4, max_text_tokens=4,
                    attention=False)
    np.testing.assert_array_equal(anchored.codes[0], pipe.encode_priors([prior])[0])


def test_training_batch_positions_and_loss_match_a_plain_forward(layout, model):
    from progemu.train.data import collate
    from progemu.train.objective import TargetLoss

    examples = [layout.build(prior_codes(layout, s), list(range(1 + 3 * s)), prior_codes(layout, s + 9), [1, 2, 3])
                for s in range(3)]
    batch = collate(examples, layout.pad_id, layout)
    for row, (ids, _) in enumerate(examples):
        np.testing.assert_array_equal(batch["position_ids"][row, : len(ids)].numpy(), layout.position_ids(ids))
    assert "position_ids" not in collate(examples, layout.pad_id)  # sequential layouts leave positions to the model
    with torch.no_grad():
        sums = TargetLoss(model, layout.visual_offset, layout.codebook_size)(**batch)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            positions = torch.from_numpy(layout.position_ids(ids))[None]
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           position_ids=positions).logits[0, :-1]
            target = torch.tensor(labels[1:])
            keep = target != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
    assert int(sums[1]) == count
    assert float(sums[0]) == pytest.approx(total, rel=1e-4)
    # positions matter: the same batch with sequential positions gives another loss
    plain = {k: v for k, v in batch.items() if k != "position_ids"}
    with torch.no_grad():
        other = float(TargetLoss(model, layout.visual_offset, layout.codebook_size)(**plain)[0])
    assert other != pytest.approx(total, rel=1e-4)


def test_text_mode_of_the_cascade_uses_aligned_positions(sampler, model, layout):
    """ProgEmu²'s text half reads prior + prompt + follow-up: greedy cached text == full recompute."""
    prefixes, nulls = [], []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, N_TEXT, (2 + 3 * seed,), generator=generator).tolist()
        follow = prior_codes(layout, seed + 50)
        prefixes.append(layout.prefix(prior_codes(layout, seed), prompt, followup_codes=follow))
        nulls.append(layout.null_prefix(followup_codes=follow))
    settings = dataclasses.replace(GREEDY, cfg_text_scale=2.0)
    out = sampler.generate(prefixes, mode="text", settings=settings, null_prefixes=nulls)
    allowed = torch.zeros(layout.vocab_size, dtype=torch.bool)
    allowed[allowed_text_ids(layout)] = True

    def logits_after(sequence):
        ids = torch.tensor([sequence])
        positions = torch.from_numpy(layout.position_ids(sequence))[None]
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits[0, -1]

    for prefix, null, got in zip(prefixes, nulls, out.sequences):
        cond, uncond, expected = list(prefix), list(null), []
        for _ in range(settings.max_text_tokens):
            c, u = logits_after(cond), logits_after(uncond)
            guided = (u + settings.cfg_text_scale * (c - u)).masked_fill(~allowed, float("-inf"))
            token = int(torch.argmax(guided))
            expected.append(token)
            cond.append(token)
            uncond.append(token)
            if token == layout.eos_id:
                break
        assert got[0] == expected


def test_dual_guidance_equals_a_full_recompute_of_three_branches(sampler, model, layout):
    """Image logits ``u + s_image (p - u) + s_prompt (c - p)`` with p the prior-only branch, greedy, vs a plain forward."""
    prompts = [torch.randint(0, N_TEXT, (2 + 3 * seed,), generator=torch.Generator().manual_seed(seed)).tolist()
               for seed in range(2)]
    priors = [prior_codes(layout, seed) for seed in range(2)]
    prefixes = [layout.prefix(p, prompt) for p, prompt in zip(priors, prompts)]
    prior_only = [layout.prefix(p, []) for p in priors]
    settings = dataclasses.replace(GREEDY, cfg_scale=1.5, cfg_prompt_scale=4.0)
    out = sampler.generate(prefixes, mode="image", settings=settings, prior_prefixes=prior_only)

    def logits_after(sequence):
        ids = torch.tensor([sequence])
        positions = torch.from_numpy(layout.position_ids(sequence))[None]
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits[0, -1]

    visual = slice(layout.visual_offset, layout.visual_offset + layout.codebook_size)
    h, w = layout.grid
    for prefix, only, got in zip(prefixes, prior_only, out.sequences):
        branches = [list(prefix) + layout.image_header(), layout.null_prefix() + layout.image_header(),
                    list(only) + layout.image_header()]
        codes = []
        for cell in range(h * w):
            c, u, p = (logits_after(b)[visual] for b in branches)
            code = int(torch.argmax(u + settings.cfg_scale * (p - u) + settings.cfg_prompt_scale * (c - p)))
            codes.append(code)
            fed = [code + layout.visual_offset] + ([layout.eol_id] if cell % w == w - 1 else [])
            for branch in branches:
                branch.extend(fed)
        np.testing.assert_array_equal(layout.parse(got[0])[0], np.array(codes).reshape(h, w))


def test_dual_guidance_at_scale_one_is_plain_and_at_equal_scales_is_single_cfg(sampler, layout):
    priors = [prior_codes(layout, seed) for seed in range(3)]
    prefixes = [tiny_prefix(layout, seed, prompt_length=2 + 4 * seed) for seed in range(3)]
    prior_only = [layout.prefix(p, []) for p in priors]
    settings = SamplingSettings(temperature=1.0, top_k=12, max_text_tokens=8)
    plain = sampler.generate(prefixes, samples=2, seeds=[1, 2, 3], settings=settings)
    dual_one = sampler.generate(prefixes, samples=2, seeds=[1, 2, 3], prior_prefixes=prior_only,
                                settings=dataclasses.replace(settings, cfg_prompt_scale=1.0))
    assert plain.sequences == dual_one.sequences
    single = sampler.generate(prefixes, samples=2, seeds=[1, 2, 3], settings=dataclasses.replace(GREEDY, cfg_scale=2.5))
    dual = sampler.generate(prefixes, samples=2, seeds=[1, 2, 3], prior_prefixes=prior_only,
                            settings=dataclasses.replace(GREEDY, cfg_scale=2.5, cfg_prompt_scale=2.5))
    assert single.sequences == dual.sequences  # the prior-only logits cancel
    with pytest.raises(ValueError, match="prior_prefixes"):
        sampler.generate(prefixes, settings=dataclasses.replace(GREEDY, cfg_prompt_scale=2.0))
    with pytest.raises(ValueError, match="cfg_prompt_scale"):
        SamplingSettings(cfg_prompt_scale=float("nan")).validate()
