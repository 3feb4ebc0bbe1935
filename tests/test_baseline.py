"""The diffusion baselines (InstructPix2Pix, PIE): model initialisation, guidance, DDIM arithmetic, training resume,
sampling, and their rows in ``progemu evaluate``."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from evaluate_fixtures import make_tiny_dataset, one_torch_thread  # noqa: F401 (autouse fixture)
from progemu.baseline.config import BaselineConfig, SampleConfig
from progemu.baseline.model import build_model, widen_conv_in
from progemu.baseline.sample import dual_guidance, guided_prediction, instructpix2pix_sample, pie_sample

PROMPTS = ["New left pleural effusion has developed.", "The cardiomegaly has resolved.", "No interval change."]


def tiny_config(method: str = "instructpix2pix", **changes) -> BaselineConfig:
    config = BaselineConfig(method=method, data="unused", out="unused", image_size=32, unshuffle=4, unet_channels=(16, 32),
                            unet_heads=4, unet_groups=8, text_hidden=32, text_layers=1, text_heads=4, text_max_length=16,
                            bpe_vocab_size=300)
    return dataclasses.replace(config, **changes)


def tiny_model(method: str = "instructpix2pix", seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(tiny_config(method, **changes), PROMPTS * 4).eval()


def _latents(model, batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.space.channels, model.space.latent_size, model.space.latent_size, generator=generator)


def test_zero_initialised_prior_channels_leave_a_fresh_model_independent_of_the_prior():
    model = tiny_model()
    assert model.unet.config.in_channels == 2 * model.space.channels == 32
    x, t = _latents(model), torch.tensor([10, 500])
    text = model.encode_prompts(PROMPTS[:2])
    with torch.no_grad():
        outputs = [model.predict(x, t, prior, text) for prior in (None, _latents(model, seed=2), 5 * _latents(model, seed=3))]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    # and the widened UNet computes what the UNet computed before widening
    plain = tiny_model(method="pie")  # same seed, same UNet, not widened
    with torch.no_grad():
        assert torch.equal(plain.predict(x, t, None, text), outputs[0])
    # once the prior's weights are trained (non-zero), the prior matters: the check above can fail
    with torch.no_grad():
        model.unet.conv_in.weight[:, model.space.channels:].normal_()
        assert not torch.allclose(model.predict(x, t, _latents(model, seed=2), text), outputs[0])


def test_widen_conv_in_keeps_old_weights_and_records_the_channels():
    conv_model = tiny_model(method="pie")
    before = conv_model.unet.conv_in.weight.detach().clone()
    widen_conv_in(conv_model.unet, 3)
    after = conv_model.unet.conv_in.weight
    assert after.shape[1] == before.shape[1] + 3 and conv_model.unet.config.in_channels == before.shape[1] + 3
    assert torch.equal(after[:, :before.shape[1]], before) and not after[:, before.shape[1]:].any()


def _trained_like(model):
    """Give the prior's input channels weights, as training would, so all three guidance branches differ."""
    with torch.no_grad():
        model.unet.conv_in.weight[:, model.space.channels:].normal_(std=0.2, generator=torch.Generator().manual_seed(4))
    return model


def test_dual_guidance_at_scale_one_equals_the_unguided_prediction():
    model = _trained_like(tiny_model())
    x, prior, t = _latents(model), _latents(model, seed=2), torch.tensor(300)
    text, null = model.encode_prompts(PROMPTS[:2]), model.encode_prompts(["", ""])
    with torch.no_grad():
        full = model.predict(x, t.expand(2), prior, text)
        image_only = model.predict(x, t.expand(2), prior, null)
        unconditional = model.predict(x, t.expand(2), torch.zeros_like(prior), null)
        assert not torch.allclose(full, image_only) and not torch.allclose(image_only, unconditional)
        torch.testing.assert_close(dual_guidance(unconditional, image_only, full, 1.0, 1.0), full, rtol=0, atol=1e-6)
        torch.testing.assert_close(guided_prediction(model, x, t, prior, text, null, 1.0, 1.0), full)
        # the batched three-branch forward equals the three separate ones, with the paper's formula
        guided = guided_prediction(model, x, t, prior, text, null, 1.5, 4.0)
        expected = unconditional + 1.5 * (image_only - unconditional) + 4.0 * (full - image_only)
        torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-5)


def _hand_alphas_cumprod(steps: int = 1000) -> np.ndarray:
    """The squaredcos_cap_v2 schedule (Nichol & Dhariwal): beta_i = min(1 - abar(i+1)/abar(i), 0.999)."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)])
    return np.cumprod(1.0 - betas)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction", "epsilon"])
def test_one_ddim_step_matches_hand_computed_arithmetic(prediction_type):
    from progemu.baseline.sample import _step, ddim_scheduler

    model = tiny_model(prediction_type=prediction_type)
    scheduler = ddim_scheduler(model, 10)
    assert scheduler.timesteps.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    x = _latents(model, seed=5).double()
    output = _latents(model, seed=6).double()
    t, previous = 600, 500
    abar = _hand_alphas_cumprod()
    a, a_prev = abar[t], abar[previous]
    if prediction_type == "v_prediction":
        x0 = math.sqrt(a) * x - math.sqrt(1 - a) * output
        eps = math.sqrt(a) * output + math.sqrt(1 - a) * x
    elif prediction_type == "sample":
        x0 = output
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    else:
        eps = output
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps  # DDIM, eta 0
    got = _step(scheduler, output.float(), torch.tensor(t), x.float(), 0.0, [])
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_pie_keeps_the_prior_outside_the_mask_and_instructpix2pix_is_seeded():
    model = _trained_like(tiny_model())
    prior = _latents(model, seed=7).clamp(-1, 1)
    text, null = model.encode_prompts(PROMPTS[:2]), model.encode_prompts(["", ""])
    settings = SampleConfig(steps=4, rounds=2, strength=0.5)
    generators = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]  # noqa: E731
    one = instructpix2pix_sample(model, prior, text, null, settings, generators())
    assert torch.equal(one, instructpix2pix_sample(model, prior, text, null, settings, generators()))
    pie = tiny_model(method="pie")
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:7] = 1
    edited = pie_sample(pie, prior, mask, text, null, settings, generators())
    outside = mask.expand_as(prior) == 0
    assert torch.equal(edited[outside], prior[outside])
    assert not torch.allclose(edited[~outside], prior[~outside])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("baseline") / "data", n_train=12, n_test=4, size=32)


def _train_args(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--image-size", "32", "--unet-channels", "16", "32",
            "--text-hidden", "32", "--text-layers", "1", "--text-max-length", "16", "--bpe-vocab-size", "300",
            "--batch-size", "4", "--max-steps", "4", "--save-every", "2", "--warmup-steps", "1", "--no-progress", *extra]


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resume_after_a_crash_equals_the_uninterrupted_run(tiny_data, tmp_path):
    from progemu.baseline.cli import main
    from progemu.utils.atomic import read_jsonl

    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    assert main(_train_args(tiny_data, reference)) == 0
    assert main(_train_args(tiny_data, crashed)) == 0
    # what a kill after the step-2 checkpoint leaves: no final model, no step-4 checkpoint, a longer log
    shutil.rmtree(crashed / "checkpoints" / "step-0000004")
    for name in ("unet", "text_encoder", "scheduler", "baseline.json"):
        path = crashed / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileExistsError):  # a run is there: refuse to start afresh over it
        main(_train_args(tiny_data, crashed))
    assert main(_train_args(tiny_data, crashed, "--resume")) == 0
    losses = [r["loss"] for r in read_jsonl(reference / "log.jsonl")]
    assert [r["loss"] for r in read_jsonl(crashed / "log.jsonl")] == losses and len(losses) == 4
    ours, theirs = _weights(crashed), _weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    records = read_jsonl(crashed / "log.jsonl")
    assert all(r["cpu_s"] > 0 for r in records)
    # a changed model definition is refused on resume
    shutil.rmtree(crashed / "checkpoints" / "step-0000004")
    with pytest.raises(ValueError, match="--unet-channels"):
        main(_train_args(tiny_data, crashed, "--resume", "--unet-channels", "16", "16"))


def test_trained_baseline_generates_for_a_split_in_the_external_folder_format(tiny_data, tmp_path):
    from progemu.baseline.cli import main
    from progemu.baseline.model import copy_model, load_baseline
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.generations import pair_folder

    model_dir = tmp_path / "ip2p"
    assert main(_train_args(tiny_data, model_dir, "--max-steps", "2")) == 0
    out = tmp_path / "generations"
    assert main(["generate", "--model", str(model_dir), "--data", str(tiny_data), "--out", str(out), "--steps", "2"]) == 0
    pairs = load_pairs(tiny_data, split="test")
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{pair_folder(p.pair_id)}.png" for p in pairs)
    # fp16 copies (the committed demo weights) load back as float32 and give the same predictions to fp16 precision
    half = copy_model(model_dir, tmp_path / "half", fp16=True)
    (full, _), (small, _) = load_baseline(model_dir), load_baseline(half)
    assert next(small.unet.parameters()).dtype == torch.float32
    x = _latents(full)
    with torch.no_grad():
        text = full.encode_prompts(PROMPTS[:2])
        torch.testing.assert_close(small.predict(x, torch.tensor([3, 700]), x, small.encode_prompts(PROMPTS[:2])),
                                   full.predict(x, torch.tensor([3, 700]), x, text), rtol=2e-2, atol=2e-2)


def test_external_generations_missing_a_pair_name_that_pair(tiny_data, tmp_path):
    from progemu.baseline.rows import read_external
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.generations import pair_folder
    from progemu.utils.atomic import atomic_save_png

    pairs = load_pairs(tiny_data, split="test")
    folder = tmp_path / "cxr-irgen"
    for pair in pairs[1:]:
        atomic_save_png(folder / f"{pair_folder(pair.pair_id)}.png", np.full((32, 32), 0.5, np.float32))
    with pytest.raises(FileNotFoundError, match=pairs[0].pair_id.replace("/", ".")):
        read_external("cxr-irgen", folder, pairs)
    atomic_save_png(folder / f"{pair_folder(pairs[0].pair_id)}.png", np.zeros((40, 40), np.float32))
    images, texts = read_external("cxr-irgen", folder, pairs)
    assert texts is None and images[0].shape == (40, 40) and float(images[1].mean()) == pytest.approx(0.5, abs=0.003)
    for pair in pairs:
        (folder / f"{pair_folder(pair.pair_id)}.txt").write_text(f"text of {pair.pair_id}\n", encoding="utf-8")
    assert read_external("cxr-irgen", folder, pairs)[1] == [f"text of {p.pair_id}" for p in pairs]


def test_evaluate_generations_folder_missing_a_pair_is_refused_naming_that_pair(tiny_data, tmp_path, capsys):
    from progemu.cli import main
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.generations import pair_folder
    from progemu.utils.atomic import atomic_save_png

    pairs = load_pairs(tiny_data, split="test")
    folder = tmp_path / "my-method"
    for pair in pairs[:2] + pairs[3:]:
        atomic_save_png(folder / f"{pair_folder(pair.pair_id)}.png", np.zeros((32, 32), np.float32))
    empty = tmp_path / "no-evaluators"
    empty.mkdir()  # refused before any evaluator is loaded
    rc = main(["evaluate", "--data", str(tiny_data), "--out", str(tmp_path / "out"), "--evaluators", str(empty),
               "--generations", f"mine={folder}", "--no-meteor", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and f"pair {pairs[2].pair_id}" in err and "mine=" in err and "1 of 4 pairs" in err
    assert main(["evaluate", "--data", str(tiny_data), "--out", str(tmp_path / "out"), "--evaluators", str(empty),
                 "--baseline", f"copy-prior={folder}", "--no-meteor", "--quiet"]) == 2  # a reserved row name


@pytest.mark.slow
def test_evaluate_scores_baseline_and_external_rows_image_only(tiny_data, tmp_path):
    from evaluate_fixtures import train_tiny_evaluators
    from progemu.baseline.cli import main as baseline_main
    from progemu.cli import main
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.generations import pair_folder
    from progemu.evaluate.images import load_image
    from progemu.utils.atomic import atomic_save_png

    evaluators = train_tiny_evaluators(tiny_data, tmp_path / "evaluators", epochs=1)
    model = tmp_path / "ip2p"
    assert baseline_main(_train_args(tiny_data, model, "--max-steps", "2")) == 0
    external = tmp_path / "followups"  # an "external method" that outputs the real follow-up, with text
    for pair in load_pairs(tiny_data, split="test"):
        atomic_save_png(external / f"{pair_folder(pair.pair_id)}.png", load_image(pair.followup_image))
        (external / f"{pair_folder(pair.pair_id)}.txt").write_text(pair.interpretation, encoding="utf-8")
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(tiny_data), "--out", str(out), "--evaluators", str(evaluators), "--no-meteor",
            "--quiet", "--figure-pairs", "2", "--baseline", f"ip2p={model}", "--generations", f"oracle-copy={external}"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["rows"]) == ["ip2p", "oracle-copy", "copy-prior", "oracle"]
    assert metrics["rows"]["ip2p"]["BLEU-3"] is None and metrics["rows"]["ip2p"]["FID"] is not None
    assert metrics["rows"]["oracle-copy"]["ROUGE-L"] == pytest.approx(1.0)  # its text is the reference
    assert metrics["rows"]["oracle-copy"]["AUROC"] == pytest.approx(metrics["rows"]["oracle"]["AUROC"], abs=0.02)
    assert "| ip2p | " in (out / "table.md").read_text()
    assert len((out / "generations" / "ip2p" / "index.jsonl").read_text().splitlines()) == 4
    assert main(args) == 0  # cached: the second run generates nothing and gives the same numbers
    assert json.loads((out / "metrics.json").read_text())["rows"]["ip2p"] == metrics["rows"]["ip2p"]


def test_a_diffusers_vae_space_trains_saves_and_reloads(tmp_path):
    """The GPU path: a Stable-Diffusion-style AutoencoderKL folder instead of pixel-unshuffle (here a tiny random one)."""
    from diffusers import AutoencoderKL

    from progemu.baseline.model import load_baseline, save_baseline

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  norm_num_groups=8, scaling_factor=0.5).save_pretrained(str(tmp_path / "vae"))
    model = tiny_model(space="vae", vae=str(tmp_path / "vae"), unshuffle=1)
    images = torch.rand(2, 1, 32, 32)
    latents = model.space.encode(images)
    assert latents.shape == (2, 4, 16, 16) and model.unet.config.in_channels == 8
    assert model.space.decode(latents).shape == (2, 1, 32, 32)
    save_baseline(model, tmp_path / "model", {"sampling": {}})
    assert (tmp_path / "model" / "vae" / "config.json").is_file()  # the folder is self-contained
    loaded, _ = load_baseline(tmp_path / "model")
    torch.testing.assert_close(loaded.space.encode(images), latents)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction", "epsilon"])
def test_ddim_sampling_with_a_perfect_denoiser_returns_its_target(prediction_type):
    """The whole sampling loop (timesteps, scheduler steps, noise) is right: a denoiser that knows the answer gets it."""
    from diffusers import DDPMScheduler

    from progemu.baseline.model import scheduler_config

    schedule = scheduler_config(tiny_config(prediction_type=prediction_type))
    abar = DDPMScheduler.from_config(schedule).alphas_cumprod
    target = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1

    class Perfect:
        method, scheduler_config = "instructpix2pix", schedule

        def predict(self, x, t, prior, text):
            a = abar[t].view(-1, 1, 1, 1).float()
            eps = (x - a.sqrt() * target) / (1 - a).sqrt()
            if prediction_type == "sample":
                return target.expand_as(x)
            return a.sqrt() * eps - (1 - a).sqrt() * target if prediction_type == "v_prediction" else eps

    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = instructpix2pix_sample(Perfect(), target, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4),
                                 SampleConfig(steps=10, image_scale=1.0, text_scale=1.0), generators)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


def test_generate_one_prior_and_a_split_with_user_masks(tiny_data, tmp_path, capsys):
    """PIE with the user's masks: an empty mask leaves the prior untouched, pixel for pixel."""
    from progemu.baseline.cli import main
    from progemu.data.icgcxr import load_pairs
    from progemu.data.images import read_image
    from progemu.evaluate.generations import pair_folder
    from progemu.utils.atomic import atomic_save_png

    model = tmp_path / "pie"
    assert main(_train_args(tiny_data, model, "--method", "pie", "--max-steps", "2")) == 0
    pairs = load_pairs(tiny_data, split="test")
    masks = tmp_path / "masks"
    for k, pair in enumerate(pairs):
        mask = np.zeros((32, 32), np.float32)
        mask[8:20, 8:20] = float(k % 2)  # odd pairs: a square to edit; even pairs: nothing
        atomic_save_png(masks / f"{pair_folder(pair.pair_id)}.png", mask)
    out = tmp_path / "out"
    assert main(["generate", "--model", str(model), "--data", str(tiny_data), "--out", str(out), "--masks", str(masks),
                 "--steps", "2", "--rounds", "1", "--mask-dilate", "0"]) == 0
    for k, pair in enumerate(pairs):
        counterfactual, prior = read_image(out / f"{pair_folder(pair.pair_id)}.png"), read_image(pair.prior_image)
        outside = np.ones((32, 32), bool)
        outside[8:20, 8:20] = k % 2 == 0
        np.testing.assert_allclose(counterfactual[outside], prior[outside], atol=1 / 255)
        if k % 2:
            assert np.abs(counterfactual - prior)[8:20, 8:20].mean() > 0.01
    assert main(["generate", "--model", str(model), "--prior", str(pairs[0].prior_image), "--prompt", "New effusion.",
                 "--out", str(tmp_path / "one"), "--steps", "2"]) == 0
    assert read_image(tmp_path / "one" / "counterfactual_0.png").shape == (32, 32)
