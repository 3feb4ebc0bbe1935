"""Sampling the diffusion baselines: InstructPix2Pix with dual guidance, PIE by masked img2img rounds.

The loops are written here rather than taken from diffusers' ``StableDiffusionInstructPix2PixPipeline``
/ ``StableDiffusionInpaintPipelineLegacy`` because those pipelines are bound to an RGB VAE and a CLIP
tokenizer, while the baselines work in a greyscale pixel-unshuffle space with their own text
encoder; the arithmetic of every denoising step is diffusers' own (``DDIMScheduler.step`` /
``add_noise``), and the guidance is InstructPix2Pix's:

    e = e(∅, ∅) + s_I · (e(prior, ∅) - e(∅, ∅)) + s_T · (e(prior, prompt) - e(prior, ∅))

(``∅``: the empty prompt / a zero prior latent), so ``s_I = s_T = 1`` is the plain conditional
prediction. PIE (progressive image editing) starts from the prior, re-noises it to ``strength`` of
the schedule, denoises with text guidance, and after every step puts back the prior (noised to the
same level) outside the region mask; ``rounds`` such rounds edit progressively.

:class:`BaselinePipeline` has the ``generate_batch`` interface of ``progemu.generate`` (priors as
``float32 [H, W]`` in [0, 1], one seed per request) so evaluation treats it like ProgEmu; its
results have no interpretation (the baselines are image-only, as in the paper's Table 1).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import SampleConfig
from .model import BaselineModel, load_baseline, sampling_defaults

__all__ = ["dual_guidance", "guided_prediction", "instructpix2pix_sample", "pie_sample", "BaselinePipeline",
           "BaselineResult", "ddim_scheduler"]


def dual_guidance(unconditional: torch.Tensor, image_only: torch.Tensor, full: torch.Tensor, image_scale: float,
                  text_scale: float) -> torch.Tensor:
    """InstructPix2Pix's two-scale classifier-free guidance of three predictions of the same shape."""
    return unconditional + image_scale * (image_only - unconditional) + text_scale * (full - image_only)


def guided_prediction(model: BaselineModel, x: torch.Tensor, t: torch.Tensor, prior: torch.Tensor | None,
                      text: torch.Tensor, null: torch.Tensor, image_scale: float, text_scale: float) -> torch.Tensor:
    """One guided denoiser call for a batch ``x [B, C, h, w]`` at timestep ``t`` (scalar tensor).

    instructpix2pix: the three branches in one batched forward (dual guidance); both scales 1 is the
    conditional prediction alone. pie: the text branch and the null branch (``text_scale``).
    """
    batch = x.shape[0]
    steps = t.reshape(1).expand(batch).to(x.device)
    if model.method == "instructpix2pix":
        if image_scale == 1.0 and text_scale == 1.0:
            return model.predict(x, steps, prior, text)
        priors = torch.cat([prior, prior, torch.zeros_like(prior)])
        full, image_only, unconditional = model.predict(torch.cat([x, x, x]), steps.repeat(3), priors,
                                                        torch.cat([text, null, null])).chunk(3)
        return dual_guidance(unconditional, image_only, full, image_scale, text_scale)
    if text_scale == 1.0:
        return model.predict(x, steps, None, text)
    conditional, unconditional = model.predict(torch.cat([x, x]), steps.repeat(2), None, torch.cat([text, null])).chunk(2)
    return unconditional + text_scale * (conditional - unconditional)


def ddim_scheduler(model: BaselineModel, steps: int):
    """diffusers' ``DDIMScheduler`` on the model's training noise schedule, set to ``steps`` steps."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(int(steps))
    return scheduler


def _noise(shape: Sequence[int], generators: Sequence[torch.Generator], device) -> torch.Tensor:
    """``[B, ...]`` standard normal noise, example ``b`` from ``generators[b]`` (a pair's result does not
    depend on the batch it is drawn in)."""
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators]).to(device)


def _step(scheduler, prediction, t, x, eta: float, generators):
    variance = _noise(x.shape, generators, x.device) if eta > 0 else None
    return scheduler.step(prediction, t, x, eta=eta, variance_noise=variance).prev_sample


@torch.no_grad()
def instructpix2pix_sample(model: BaselineModel, prior: torch.Tensor, text: torch.Tensor, null: torch.Tensor,
                           settings: SampleConfig, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Counterfactual latents ``[B, C, h, w]`` from pure noise, conditioned on the prior's latents."""
    scheduler = ddim_scheduler(model, settings.steps)
    x = _noise(prior.shape, generators, prior.device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        prediction = guided_prediction(model, x, t, prior, text, null, settings.image_scale, settings.text_scale)
        x = _step(scheduler, prediction, t, x, settings.eta, generators)
    return x


@torch.no_grad()
def pie_sample(model: BaselineModel, prior: torch.Tensor, mask: torch.Tensor, text: torch.Tensor, null: torch.Tensor,
               settings: SampleConfig, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """PIE: ``settings.rounds`` img2img rounds from the prior's latents, editing only where ``mask``
    (``[B, 1, h, w]`` in {0, 1}, latent resolution) is 1; outside it the result is the prior."""
    scheduler = ddim_scheduler(model, settings.steps)
    first = min(int(round(settings.steps * (1.0 - settings.strength))), settings.steps - 1)
    timesteps = scheduler.timesteps[first:]
    batch = prior.shape[0]
    x = prior
    for _ in range(settings.rounds):
        noise = _noise(prior.shape, generators, prior.device)
        current = scheduler.add_noise(x, noise, timesteps[:1].expand(batch))
        for index, t in enumerate(timesteps):
            prediction = guided_prediction(model, current, t, None, text, null, 1.0, settings.text_scale)
            current = _step(scheduler, prediction, t, current, settings.eta, generators)
            if index + 1 < len(timesteps):  # the prior at the next step's noise level, kept outside the region
                known = scheduler.add_noise(prior, noise, timesteps[index + 1:index + 2].expand(batch))
            else:
                known = prior
            current = mask * current + (1.0 - mask) * known
        x = current
    return x


@dataclasses.dataclass
class BaselineResult:
    """One request's output, shaped like ``progemu.generate``'s ``GenerationResult`` for evaluation."""

    counterfactuals: list[np.ndarray]  # float32 [H, W] in [0, 1], the prior's shape
    interpretation: str | None = None  # image-only method
    phrases: list[str] = dataclasses.field(default_factory=list)
    attention: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)
    timings: dict = dataclasses.field(default_factory=dict)


class BaselinePipeline:
    """A trained baseline ready to sample: ``BaselinePipeline.from_pretrained(DIR)``."""

    def __init__(self, model: BaselineModel, defaults: SampleConfig, directory: str | None = None):
        self.model, self.defaults, self.directory = model, defaults, directory

    @staticmethod
    def quiet() -> None:
        """Hide transformers' / diffusers' per-load progress bars and hints (our own bars stay)."""
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> "BaselinePipeline":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cls.quiet()
        model, meta = load_baseline(directory, device)
        return cls(model, sampling_defaults(meta), str(directory))

    @property
    def method(self) -> str:
        return self.model.method

    def settings(self, **overrides) -> SampleConfig:
        """The model's saved sampling settings with ``overrides`` (SampleConfig field names) applied."""
        names = {f.name for f in dataclasses.fields(SampleConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown} for a {self.method} baseline; known: {sorted(names)}")
        settings = dataclasses.replace(self.defaults, **overrides)
        settings.validate()
        return settings

    def generate_batch(self, priors: Sequence[np.ndarray], prompts: Sequence[str], *, samples: int = 1,
                       seed: int | Sequence[int] = 0, masks: Sequence[np.ndarray | None] | None = None,
                       attention: bool = False, **overrides) -> list[BaselineResult]:
        """Counterfactuals for ``priors`` (``float [H, W]`` in [0, 1]) and ``prompts``; sample ``k`` of request
        ``i`` uses seed ``seed[i] + 1000 * k``. ``masks[i]``: the pie region (``float [H, W]``, prior frame);
        ``None`` = the whole image. ``attention`` is accepted and ignored (no attention maps)."""
        from progemu.data.images import model_input, resize

        del attention
        settings = self.settings(**overrides)
        seeds = [int(seed) + i for i in range(len(priors))] if np.isscalar(seed) else [int(s) for s in seed]
        model, device, size = self.model, self.model.device, self.model.config.image_size
        began = time.perf_counter()
        images = torch.from_numpy(np.stack([model_input(np.asarray(p, np.float32), size) for p in priors])[:, None]).to(device)
        with torch.no_grad():
            prior_latents = model.space.encode(images)
            text = model.encode_prompts(list(prompts))
            null = model.encode_prompts([""] * len(prompts))
            region = self._region(masks, len(priors), size, settings.mask_dilate).to(device)
            outputs = []
            for k in range(samples):
                generators = [torch.Generator().manual_seed(s + 1000 * k) for s in seeds]
                if self.method == "instructpix2pix":
                    latents = instructpix2pix_sample(model, prior_latents, text, null, settings, generators)
                else:
                    latents = pie_sample(model, prior_latents, model.space.mask(region), text, null, settings, generators)
                outputs.append(model.space.decode(latents)[:, 0].float().cpu().numpy())
        seconds = (time.perf_counter() - began) / max(len(priors), 1)
        shared = dataclasses.asdict(settings)
        results = []
        for i, prior in enumerate(priors):
            prior = np.asarray(prior, np.float32)
            images = [resize(out[i], prior.shape) for out in outputs]
            if self.method == "pie" and masks is not None and masks[i] is not None:
                # outside the region PIE keeps the prior: its own pixels, not their round trip through the model size
                keep = resize(region[i, 0].cpu().numpy(), prior.shape) < 0.5
                images = [np.where(keep, prior, image) for image in images]
            results.append(BaselineResult(counterfactuals=images, settings={**shared, "seed": seeds[i], "method": self.method},
                                          timings={"seconds": seconds}))
        return results

    @staticmethod
    def _region(masks, count: int, size: int, dilate: int) -> torch.Tensor:
        """``float [B, 1, size, size]`` in {0, 1}: the given masks (resized, dilated by ``dilate`` px), or ones."""
        from progemu.data.images import resize
        from scipy.ndimage import binary_dilation

        region = np.ones((count, 1, size, size), np.float32)
        for i, mask in enumerate(masks or []):
            if mask is None:
                continue
            inside = resize(np.asarray(mask, np.float32), size) > 0.5
            if dilate > 0:
                inside = binary_dilation(inside, iterations=int(dilate))
            region[i, 0] = inside
        return torch.from_numpy(region)
