"""The diffusion baselines' model: a compact image space, a text encoder and a diffusers UNet.

- :class:`UnshuffleSpace` / :class:`VaeSpace`: where the denoiser works. On a CPU the demo uses
  pixel-unshuffle (``float [B, 1, S, S]`` in [0, 1] -> ``[B, f*f, S/f, S/f]`` in [-1, 1]; lossless,
  no weights to train); on a GPU the same code takes a diffusers ``AutoencoderKL`` folder
  (Stable Diffusion's ``vae/``). The project's image tokenizer is a VQ-VAE (discrete codes) and
  has no continuous latent of its own to offer.
- the text encoder: transformers' ``CLIPTextModel``, either a small fresh one with a BPE trained
  on the prompts (``progemu.model.text_tokenizer``) or a CLIP text tower from a folder the user gives.
- the denoiser: diffusers' ``UNet2DConditionModel`` (fresh, or from a folder such as Stable
  Diffusion's ``unet/``). For InstructPix2Pix its ``conv_in`` is widened by
  :func:`widen_conv_in` with zero-initialised input channels for the prior's latent, so a fresh
  (or pretrained) UNet starts out exactly as it was: independent of the prior (tested).

Saved layout of a baseline folder (``save_baseline``)::

    DIR/unet/            diffusers UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
    DIR/text_encoder/    transformers CLIPTextModel (config.json + model.safetensors) + its tokenizer files
    DIR/scheduler/       diffusers DDPMScheduler config (the training noise schedule)
    DIR/vae/             the AutoencoderKL, when --space vae
    DIR/baseline_config.json   the resolved BaselineConfig
    DIR/baseline.json    written last (the folder's done marker): method, space, sampling defaults, training meta
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import BaselineConfig, SampleConfig

__all__ = ["UnshuffleSpace", "VaeSpace", "BaselineModel", "widen_conv_in", "build_model", "save_baseline",
           "load_baseline", "is_baseline", "BASELINE_META"]

BASELINE_META = "baseline.json"


class UnshuffleSpace(torch.nn.Module):
    """Pixel-unshuffle space: ``encode`` maps ``float [B, 1, S, S]`` in [0, 1] to
    ``[B, f*f, S/f, S/f]`` in [-1, 1]; ``decode`` is its exact inverse (clipped to [0, 1])."""

    def __init__(self, image_size: int, factor: int):
        super().__init__()
        if image_size % factor:
            raise ValueError(f"pixel-unshuffle factor {factor} must divide the image size {image_size}")
        self.image_size, self.factor = int(image_size), int(factor)
        self.channels = self.factor ** 2
        self.latent_size = self.image_size // self.factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images * 2.0 - 1.0, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((F.pixel_shuffle(latents, self.factor) + 1.0) / 2.0).clamp(0.0, 1.0)

    def mask(self, masks: torch.Tensor) -> torch.Tensor:
        """``float [B, 1, S, S]`` region mask -> ``[B, 1, S/f, S/f]``: a latent cell is inside if any pixel is."""
        return F.max_pool2d(masks, self.factor)


class VaeSpace(torch.nn.Module):
    """A diffusers ``AutoencoderKL`` (e.g. Stable Diffusion's): greyscale is repeated to the VAE's
    channels, latents are the posterior mode times ``scaling_factor``; decoded channels are averaged."""

    def __init__(self, directory: str | os.PathLike, image_size: int):
        super().__init__()
        from diffusers import AutoencoderKL

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"--vae {directory}: no config.json; give a diffusers AutoencoderKL folder "
                                    "(e.g. the vae/ folder of a Stable Diffusion download)")
        self.vae = AutoencoderKL.from_pretrained(str(directory)).eval().requires_grad_(False)
        self.image_size = int(image_size)
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.channels = int(self.vae.config.latent_channels)
        self.latent_size = self.image_size // self.factor
        self.scale = float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = (images * 2.0 - 1.0).repeat(1, self.vae.config.in_channels, 1, 1)
        return self.vae.encode(x).latent_dist.mode() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode(latents / self.scale).sample
        return ((x.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)

    def mask(self, masks: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(masks, self.factor)


def widen_conv_in(unet, extra_channels: int) -> None:
    """Give ``unet.conv_in`` ``extra_channels`` more input channels, their weights zero (in place).

    InstructPix2Pix's initialisation: the new channels carry the prior's latent, and with zero
    weights the widened UNet computes exactly what it computed before, whatever the prior.
    """
    if extra_channels <= 0:
        return
    old = unet.conv_in
    new = torch.nn.Conv2d(old.in_channels + extra_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)


def _fresh_unet(config: BaselineConfig, channels: int, sample_size: int, cross_dim: int):
    from diffusers import UNet2DConditionModel

    levels = len(config.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                                down_block_types=down, up_block_types=up, block_out_channels=tuple(config.unet_channels),
                                layers_per_block=config.unet_layers, cross_attention_dim=cross_dim,
                                attention_head_dim=config.unet_heads, norm_num_groups=config.unet_groups)


def _fresh_text_encoder(config: BaselineConfig, texts: Sequence[str]):
    from transformers import CLIPTextConfig, CLIPTextModel

    from progemu.model.text_tokenizer import train_text_tokenizer

    tokenizer = train_text_tokenizer(texts, codebook_size=0, vocab_size=config.bpe_vocab_size)
    tokenizer.model_max_length = config.text_max_length
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=config.text_hidden,
                                 intermediate_size=4 * config.text_hidden, num_hidden_layers=config.text_layers,
                                 num_attention_heads=config.text_heads, max_position_embeddings=config.text_max_length,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, attention_dropout=0.0, dropout=0.0)
    return tokenizer, CLIPTextModel(text_config)


def _load_text_encoder(directory: Path):
    from transformers import AutoTokenizer, CLIPTextModel

    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json; give a CLIP text tower folder (CLIPTextModel)")
    tokenizer_dir = next((d for d in (directory, directory.parent / "tokenizer")
                          if any((d / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))), None)
    if tokenizer_dir is None:
        raise FileNotFoundError(f"{directory}: no tokenizer files in it or in {directory.parent / 'tokenizer'}")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir)), CLIPTextModel.from_pretrained(str(directory))


class BaselineModel(torch.nn.Module):
    """Space + text encoder + UNet of one baseline (``method`` instructpix2pix or pie).

    :meth:`predict` is the denoiser: ``noisy [B, C, h, w]`` (``C`` latent channels), integer
    timesteps ``[B]``, ``prior [B, C, h, w]`` or ``None`` (zeros: the dropped image condition;
    ignored by pie) and prompt states ``[B, L, D]`` -> the UNet's prediction ``[B, C, h, w]``.
    """

    def __init__(self, config: BaselineConfig, space, tokenizer, text_encoder, unet, scheduler_config: dict):
        super().__init__()
        self.config, self.space, self.tokenizer = config, space, tokenizer
        self.text_encoder, self.unet = text_encoder, unet
        self.scheduler_config = dict(scheduler_config)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, text_max_length, D]`` last hidden states of the text encoder (the empty prompt = the null text)."""
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                               max_length=self.config.text_max_length, return_tensors="pt")
        return self.text_encoder(input_ids=batch["input_ids"].to(self.device)).last_hidden_state

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, prior: torch.Tensor | None,
                text_states: torch.Tensor) -> torch.Tensor:
        x = noisy
        if self.method == "instructpix2pix":
            x = torch.cat([noisy, prior if prior is not None else torch.zeros_like(noisy)], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=text_states).sample

    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.scheduler_config)


def scheduler_config(config: BaselineConfig) -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule,
                              prediction_type=config.prediction_type, clip_sample=False).config)


def build_space(config: BaselineConfig, directory: Path | None = None):
    if config.space == "vae":
        return VaeSpace(directory / "vae" if directory is not None else config.vae, config.image_size)
    return UnshuffleSpace(config.image_size, config.unshuffle)


def build_model(config: BaselineConfig, texts: Sequence[str]) -> BaselineModel:
    """A fresh (or pretrained-initialised) model for ``config``; ``texts`` train the BPE of a fresh text encoder.

    Initialisation draws from torch's global generator: seed it before calling (the trainer does).
    """
    space = build_space(config)
    if config.text_encoder:
        tokenizer, text_encoder = _load_text_encoder(Path(config.text_encoder))
    else:
        tokenizer, text_encoder = _fresh_text_encoder(config, texts)
    cross_dim = int(text_encoder.config.hidden_size)
    if config.unet:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(config.unet)
        if unet.config.in_channels != space.channels:
            raise ValueError(f"--unet {config.unet}: its input has {unet.config.in_channels} channels, the space "
                             f"{space.channels}; use the matching --space / --vae")
    else:
        unet = _fresh_unet(config, space.channels, space.latent_size, cross_dim)
    if config.method == "instructpix2pix":
        widen_conv_in(unet, space.channels)
    return BaselineModel(config, space, tokenizer, text_encoder, unet, scheduler_config(config))


def save_baseline(model: BaselineModel, directory: str | os.PathLike, meta: dict, *, fp16: bool = False) -> Path:
    """Write the model folder (see the module docstring); ``baseline.json`` last. ``fp16`` halves the
    weights on disk (they are loaded back as float32)."""
    from progemu.utils.atomic import atomic_write_json
    from progemu.utils.config import save_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / BASELINE_META).unlink(missing_ok=True)
    for name, module in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        (_half_copy(module) if fp16 else module).save_pretrained(str(directory / name), safe_serialization=True)
    model.tokenizer.save_pretrained(str(directory / "text_encoder"))
    atomic_write_json(directory / "scheduler" / "scheduler_config.json", model.scheduler_config)
    if isinstance(model.space, VaeSpace) and not (directory / "vae").is_dir():
        model.space.vae.save_pretrained(str(directory / "vae"), safe_serialization=True)
    save_config(model.config, directory / "baseline_config.json", kind="BaselineConfig")
    atomic_write_json(directory / BASELINE_META, {"method": model.method, "space": model.config.space, **meta})
    return directory


def _half_copy(module):
    import copy

    return copy.deepcopy(module).to(torch.float16)


def is_baseline(directory: str | os.PathLike) -> bool:
    return (Path(directory) / BASELINE_META).is_file()


def load_baseline(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[BaselineModel, dict]:
    """``(model in eval mode, float32 on device, meta of baseline.json)``; raises ``FileNotFoundError``
    naming the folder when it is not a finished baseline."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from progemu.utils.config import load_config

    directory = Path(directory)
    if not is_baseline(directory):
        raise FileNotFoundError(f"{directory}: not a finished baseline model ({BASELINE_META} missing); train one with "
                                "`progemu baseline train --method instructpix2pix|pie --data DATA --out DIR`")
    meta = json.loads((directory / BASELINE_META).read_text(encoding="utf-8"))
    config = load_config(BaselineConfig, directory / "baseline_config.json")
    unet = UNet2DConditionModel.from_pretrained(str(directory / "unet"), torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(str(directory / "text_encoder"), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "text_encoder"))
    schedule = json.loads((directory / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    model = BaselineModel(config, build_space(config, directory if config.space == "vae" else None), tokenizer,
                          text_encoder, unet, schedule)
    return model.to(device).eval(), meta


def sampling_defaults(meta: dict) -> SampleConfig:
    """The sampling settings saved with a model (``baseline.json`` ``"sampling"``), else the code's defaults."""
    from progemu.utils.config import config_from_dict

    return config_from_dict(SampleConfig, meta.get("sampling") or {}, where=BASELINE_META)


def copy_model(source: str | os.PathLike, target: str | os.PathLike, *, fp16: bool = False,
               sampling: dict | None = None) -> Path:
    """Copy a finished baseline folder (weights halved with ``fp16``), e.g. into the demo assets;
    ``sampling`` replaces the sampling defaults saved with it."""
    model, meta = load_baseline(source)
    if sampling is not None:
        meta = {**meta, "sampling": dict(sampling)}
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    return save_baseline(model, target, meta, fp16=fp16)
