"""Typed configs of the diffusion baselines; the command-line flags are derived from them.

Two methods of the paper's Table 1, trained on the same ICG-CXR pairs as ProgEmu:

- ``instructpix2pix`` (BiomedJourney's approach): the denoiser sees the noisy follow-up *and* the
  prior (extra input channels, zero-initialised), and the prompt through a text encoder;
  conditioning dropout of text, image and both trains the unconditional branches of the dual
  classifier-free guidance used at inference (an image scale and a text scale).
- ``pie`` (progressive image editing): a text-conditioned denoiser of follow-up images; at
  inference the prior is edited by repeated img2img rounds that keep the latents outside a
  region mask.

Every field's ``metadata["help"]`` is the help text of the flag ``--field-name`` that
:func:`progemu.baseline.cli.add_config_arguments` derives from it, so a setting has one name
and one default in code, in ``--help`` and in the saved ``baseline_config.json``.
"""
from __future__ import annotations

import dataclasses

__all__ = ["BaselineConfig", "SampleConfig", "METHODS", "SPACES"]

METHODS = ("instructpix2pix", "pie")
#: compact spaces the denoiser works in: pixel-unshuffle (CPU, lossless) or a diffusers AutoencoderKL
SPACES = ("unshuffle", "vae")


def _field(default, help: str, **extra):
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass
class BaselineConfig:
    """Everything ``progemu baseline train`` needs; saved as ``OUT/baseline_config.json``."""

    method: str = _field("instructpix2pix", "instructpix2pix (prior as extra input channels, dual guidance) | "
                         "pie (text-conditioned denoiser; inference edits the prior inside a region mask)",
                         choices=METHODS)
    data: str = _field("", "curated ICG-CXR dataset directory (progemu curate)", required=True)
    out: str = _field("", "output directory: final model, log.jsonl, checkpoints/", required=True)
    split: str = _field("train", "split of --data to train on")
    # ---- the compact space ---------------------------------------------------------------------
    image_size: int = _field(128, "side of the model input (px), through progemu.data.images.model_input")
    space: str = _field("unshuffle", "unshuffle = pixel-unshuffle (lossless, CPU-sized) | vae = the AutoencoderKL "
                        "of --vae (e.g. Stable Diffusion's vae/ folder)", choices=SPACES)
    unshuffle: int = _field(4, "pixel-unshuffle factor: 128 px -> factor^2 channels of (128 / factor)^2")
    vae: str | None = _field(None, "diffusers AutoencoderKL folder (with --space vae)")
    # ---- the denoiser (diffusers UNet2DConditionModel) -------------------------------------------
    unet: str | None = _field(None, "start from a diffusers UNet2DConditionModel folder (e.g. Stable Diffusion's "
                              "unet/); its input is widened by zero-initialised prior channels")
    unet_channels: tuple[int, ...] = _field((32, 64, 64), "block_out_channels of a fresh UNet (one per level)")
    unet_layers: int = _field(1, "layers_per_block of a fresh UNet")
    unet_heads: int = _field(4, "attention heads of a fresh UNet (diffusers' attention_head_dim argument)")
    unet_groups: int = _field(8, "GroupNorm groups of a fresh UNet (divides every width)")
    # ---- the text encoder (transformers CLIPTextModel) -------------------------------------------
    text_encoder: str | None = _field(None, "CLIP text tower folder (CLIPTextModel + its tokenizer, e.g. Stable "
                                      "Diffusion's text_encoder/ with tokenizer/ beside it); default: a small one "
                                      "trained here with a BPE learnt on the prompts")
    text_hidden: int = _field(64, "hidden size of a fresh text encoder (= the UNet's cross-attention width)")
    text_layers: int = _field(2, "layers of a fresh text encoder")
    text_heads: int = _field(4, "attention heads of a fresh text encoder")
    text_max_length: int = _field(32, "prompt tokens kept (longer prompts are cut)")
    bpe_vocab_size: int = _field(512, "vocabulary of the BPE trained on the prompts (fresh text encoder)")
    train_text_encoder: bool = _field(True, "train the text encoder with the UNet (off: keep a given CLIP frozen)")
    # ---- diffusion -----------------------------------------------------------------------------
    train_timesteps: int = _field(1000, "DDPM training timesteps")
    beta_schedule: str = _field("squaredcos_cap_v2", "diffusers beta schedule (squaredcos_cap_v2 suits pixel-like "
                                "spaces; scaled_linear is Stable Diffusion's)")
    # "sample" (the UNet predicts the clean follow-up): with a CPU-sized budget in a pixel-like space, epsilon / v
    # targets leave per-pixel noise the small UNet never learns to remove (measured: 200 steps of v-prediction gave
    # noise-covered counterfactuals); an x0 estimate is smooth from the start. Stable Diffusion's epsilon and SD 2's
    # v_prediction stay available for a pretrained --unet
    prediction_type: str = _field("sample", "what the UNet predicts: sample (the clean follow-up) | epsilon | "
                                  "v_prediction", choices=("epsilon", "v_prediction", "sample"))
    text_dropout: float = _field(0.05, "share of examples trained with the empty prompt only")
    image_dropout: float = _field(0.05, "share of examples trained without the prior only (instructpix2pix)")
    both_dropout: float = _field(0.05, "share of examples trained with neither (instructpix2pix)")
    # ---- optimisation (the same names and meanings as progemu train) -----------------------------
    epochs: int = _field(30, "passes over the split (unless --max-steps)")
    max_steps: int | None = _field(None, "optimiser steps (overrides --epochs)")
    batch_size: int = _field(16, "pairs per optimiser step")
    lr: float = _field(1e-3, "peak learning rate (AdamW)")
    min_lr: float | None = _field(None, "final learning rate of the cosine (default lr / 10)")
    warmup_steps: int = _field(30, "linear warm-up steps (0 = none)")
    weight_decay: float = _field(0.01, "AdamW weight decay")
    clip: float = _field(1.0, "gradient-norm clipping threshold")
    seed: int = _field(0, "seed of initialisation, data order, noise and dropout")
    save_every: int = _field(100, "steps between step checkpoints")
    keep_last: int = _field(2, "step checkpoints kept")
    log_every: int = _field(1, "steps between log.jsonl lines")
    device: str = _field("auto", "auto = CUDA when available", choices=("auto", "cpu", "cuda"))
    precision: str = _field("auto", "auto = bf16 autocast on CUDA, else fp32", choices=("auto", "fp32", "bf16"))
    threads: int | None = _field(None, "torch CPU threads (default: torch's choice)")
    progress: bool = _field(True, "progress bar (--no-progress: none)")
    resume: bool = _field(False, "continue from the newest checkpoint in OUT/checkpoints")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag of an impossible setting."""
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r}: choose one of {METHODS}")
        for name in ("image_size", "batch_size", "epochs", "save_every", "keep_last", "log_every", "train_timesteps",
                     "unet_layers", "text_layers", "text_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise ValueError(f"--lr must be > 0 and --warmup-steps >= 0 (got {self.lr}, {self.warmup_steps})")
        if self.space == "vae" and not self.vae:
            raise ValueError("--space vae needs --vae DIR (a diffusers AutoencoderKL folder)")
        if self.space == "unshuffle" and (self.unshuffle < 1 or self.image_size % self.unshuffle):
            raise ValueError(f"--unshuffle {self.unshuffle} must divide --image-size {self.image_size}")
        for name in ("text_dropout", "image_dropout", "both_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.text_dropout + self.image_dropout + self.both_dropout >= 1:
            raise ValueError("--text-dropout + --image-dropout + --both-dropout must stay below 1")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"--text-hidden {self.text_hidden} must be a multiple of --text-heads {self.text_heads}")
        if not self.unet and (not self.unet_channels or any(c % self.unet_groups or c % self.unet_heads
                                                            for c in self.unet_channels)):
            raise ValueError(f"--unet-channels {self.unet_channels}: every width must be a multiple of --unet-groups "
                             f"{self.unet_groups} and --unet-heads {self.unet_heads}")


@dataclasses.dataclass
class SampleConfig:
    """How a baseline draws a counterfactual; saved with the model as its defaults (``baseline.json``)."""

    # 10 DDIM steps keep the demo's two baseline rows to ~1 CPU minute for 83 pairs (an x0-predicting UNet
    # changes little with more steps)
    steps: int = _field(10, "DDIM steps from pure noise (instructpix2pix) or over the full schedule (pie)")
    image_scale: float = _field(1.5, "instructpix2pix image guidance scale (1 = off)")
    text_scale: float = _field(4.0, "text guidance scale (1 = off)")
    eta: float = _field(0.0, "DDIM eta (0 = deterministic given the starting noise)")
    strength: float = _field(0.5, "pie: share of the schedule each img2img round re-noises (0..1)")
    rounds: int = _field(3, "pie: img2img rounds (PIE's progressive editing)")
    mask_dilate: int = _field(4, "pie: pixels added around the region mask")

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if not 0 < self.strength <= 1:
            raise ValueError(f"--strength must be in (0, 1], got {self.strength}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
