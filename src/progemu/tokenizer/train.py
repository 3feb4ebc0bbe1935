"""Train a domain image tokenizer with the Emu3 VQ-VAE architecture (Emu3 never released this code).

The network is transformers' ``Emu3VQVAE``; training composes its own modules
(:meth:`ImageTokenizer.encode_latents` -> nearest code -> :meth:`ImageTokenizer.decode_latents`)
with a straight-through estimator, so the trained weights load and run with
``Emu3VQVAE.encode`` / ``decode`` unchanged.

Loss (images in [0, 1], ``x`` original, ``x^`` reconstruction, ``z`` latent, ``e`` its code vector)::

    L = w1 |x - x^|_1 + w2 |x - x^|_2^2 + we |grad x - grad x^|_1           (reconstruction + edges)
      + wc |sg(z) - e|^2 + beta |z - sg(e)|^2                               (codebook + commitment)

The edge term (finite differences along both axes) keeps thin structures such as the
costophrenic angle and the pleural line sharp, which a pure L2 loss blurs.

Codebook health: usage counts are accumulated between restarts; every ``restart_every``
steps each code not used since the last check is re-initialised to a random latent of the
current batch (plus small noise) and its Adam moments are cleared ("dead-code restart").
The codebook starts from latents of the first batch, not from Emu3's tiny uniform init.

Determinism and resume: every random draw (batch indices, crops, restarts) comes from one
``torch.Generator`` whose state is saved in ``checkpoint.pt`` together with the model,
optimizer, schedule, usage counts and step, so ``--resume`` continues exactly (the losses
after resuming equal those of an uninterrupted run). The TemporalResnet blocks' BatchNorm3d
layers are kept in eval mode: with one frame per image and small batches their batch
statistics would be noisy and make training differ from inference.

Outputs in ``OUT/``: ``config.json`` + ``model.safetensors`` + ``progemu_tokenizer.json``
(:meth:`ImageTokenizer.save_pretrained`), ``train_config.json``, ``log.jsonl`` (one line per
``log_every`` steps), ``train_summary.json``, and ``checkpoint.pt`` (full training state).
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from progemu.tokenizer.presets import TokenizerConfig, get_preset
from progemu.tokenizer.vqvae import ImageTokenizer
from progemu.utils.atomic import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from progemu.utils.config import config_from_dict, config_to_dict, save_config

__all__ = ["TrainConfig", "train_tokenizer", "train_config_for", "vq_forward", "vq_losses", "psnr", "load_train_config"]

CHECKPOINT_NAME = "checkpoint.pt"
_LOGGED = ("loss", "l1", "l2", "edge", "codebook", "commitment", "consistency")
LOG_NAME = "log.jsonl"


@dataclasses.dataclass
class TrainConfig:
    """Settings of one tokenizer training run (saved as ``train_config.json``)."""

    preset: str = "demo"
    seed: int = 0
    max_steps: int = 2000
    batch_size: int = 16
    crop_size: int = 64  # random square crops (px) for speed; 0 = whole images. Eval always uses whole images.
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    edge_weight: float = 1.0
    codebook_weight: float = 1.0
    commitment_weight: float = 0.25
    # code stability: latents of a perturbed view (1-px shift, noise, exposure) are pulled onto the
    # clean view's codes, so that small acquisition changes do not flip codes (0 = off, the plain VQ-VAE)
    consistency_weight: float = 0.0
    consistency_noise: float = 0.03  # max Gaussian noise sd of the perturbed view (intensity units)
    consistency_shift: int = 1  # max shift of the perturbed view in px (each axis)
    consistency_intensity: float = 0.08  # max relative exposure change of the perturbed view
    restart_every: int = 25  # steps between dead-code restarts (0 = never)
    restart_noise: float = 0.01
    output_init_scale: float = 0.01  # scales the decoder's last conv at init
    log_every: int = 10
    eval_every: int = 250
    eval_images: int = 16  # held-out images scored at each eval
    checkpoint_every: int = 250
    holdout: float = 0.1  # folder datasets: fraction of folders held out (curated: the non-train splits)
    threads: int | None = None
    device: str = "cpu"  # "cuda" for the gpu512 preset; random draws stay on a CPU generator (same on any device)
    tokenizer: TokenizerConfig | None = None  # resolved architecture (from the preset when None)


#: per-preset training defaults: the demo fits ~15 min on 2 idle CPU cores; gpu512 is sized for one GPU
TRAIN_DEFAULTS: dict[str, dict] = {
    "demo": {"max_steps": 1000, "batch_size": 16, "crop_size": 64},
    "small256": {"max_steps": 3000, "batch_size": 16, "crop_size": 128},
    "gpu512": {"max_steps": 40000, "batch_size": 32, "crop_size": 256, "lr": 1e-3, "eval_every": 1000,
               "checkpoint_every": 1000, "restart_every": 100},
}


def train_config_for(preset: str, **overrides) -> TrainConfig:
    """``TrainConfig`` with the preset's architecture and training defaults, then ``overrides`` (None = keep)."""
    values = {**TRAIN_DEFAULTS.get(preset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    config = dataclasses.replace(TrainConfig(preset=preset), **values)
    if config.tokenizer is None:
        config.tokenizer = get_preset(preset)
    return config


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (data range 1), over the whole batch."""
    mse = float(torch.mean((reference.double() - test.double()) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def vq_forward(tokenizer: ImageTokenizer, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Differentiable pass: ``float [B, 1, H, W]`` in [0, 1] -> reconstruction + quantisation tensors.

    Returns ``recon`` ``[B, 1, H, W]`` in ~[0, 1] (not clamped, so gradients flow), ``latents``
    and ``quantized`` ``[B, D, h, w]``, ``codes`` ``int64 [B, h, w]``.
    """
    pixels = tokenizer.to_model_pixels(images)
    latents = tokenizer.encode_latents(pixels)
    codes = tokenizer.nearest_codes(latents.detach())
    quantized = tokenizer.model.quantize.embedding(codes).permute(0, 3, 1, 2)
    straight_through = latents + (quantized - latents).detach()
    output = tokenizer.decode_latents(straight_through)
    recon = (output.mean(dim=1, keepdim=True) + 1.0) / 2.0
    return {"recon": recon, "latents": latents, "quantized": quantized, "codes": codes}


def vq_losses(images: torch.Tensor, out: dict[str, torch.Tensor], config: TrainConfig) -> dict[str, torch.Tensor]:
    recon = out["recon"]
    diff = recon - images
    l1 = diff.abs().mean()
    l2 = (diff ** 2).mean()
    edge = ((recon.diff(dim=-1) - images.diff(dim=-1)).abs().mean()
            + (recon.diff(dim=-2) - images.diff(dim=-2)).abs().mean())
    codebook = F.mse_loss(out["quantized"], out["latents"].detach())
    commitment = F.mse_loss(out["latents"], out["quantized"].detach())
    total = (config.l1_weight * l1 + config.l2_weight * l2 + config.edge_weight * edge
             + config.codebook_weight * codebook + config.commitment_weight * commitment)
    return {"loss": total, "l1": l1, "l2": l2, "edge": edge, "codebook": codebook, "commitment": commitment}


def perturb_views(images: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A perturbed copy of ``float [B, 1, H, W]`` images in [0, 1]: the acquisition changes codes must survive.

    Per image, drawn from ``generator``: a shift of up to ``consistency_shift`` px per axis (edge
    replicated, so no black border appears), an exposure factor in ``1 +- consistency_intensity``
    and Gaussian noise of sd up to ``consistency_noise``.
    """
    count = images.shape[0]
    limit = int(config.consistency_shift)
    shifts = torch.randint(-limit, limit + 1, (count, 2), generator=generator).tolist() if limit else [[0, 0]] * count
    scale = 1 + config.consistency_intensity * (2 * torch.rand(count, generator=generator) - 1)
    sd = config.consistency_noise * torch.rand(count, generator=generator)
    noise = torch.randn(images.shape, generator=generator) * sd[:, None, None, None]
    views = []
    for image, (dy, dx) in zip(images.cpu(), shifts):
        padded = F.pad(image[None], (limit, limit, limit, limit), mode="replicate")[0] if limit else image
        top, left = limit - dy, limit - dx
        views.append(padded[:, top:top + image.shape[-2], left:left + image.shape[-1]])
    out = torch.stack(views) * scale[:, None, None, None] + noise
    return out.clamp(0.0, 1.0).to(images.device)


def consistency_loss(tokenizer: ImageTokenizer, views: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the perturbed views' latents ``[B, D, h, w]`` to the clean codes' vectors."""
    latents = tokenizer.encode_latents(tokenizer.to_model_pixels(views))
    return F.mse_loss(latents, quantized.detach())


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if step < config.warmup_steps:
        return (step + 1) / max(1, config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _sample_batch(data: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``uint8 [N, S, S]`` -> ``float32 [B, 1, c, c]`` in [0, 1] (random images, random crops)."""
    count, size = data.shape[0], data.shape[-1]
    index = torch.randint(count, (config.batch_size,), generator=generator)
    batch = data[index]
    crop = config.crop_size if 0 < config.crop_size < size else size
    if crop < size:
        tops = torch.randint(size - crop + 1, (config.batch_size,), generator=generator)
        lefts = torch.randint(size - crop + 1, (config.batch_size,), generator=generator)
        batch = torch.stack([batch[i, t:t + crop, l:l + crop] for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist()))])
    return batch[:, None].float() / 255.0


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def _init_codebook(tokenizer: ImageTokenizer, images: torch.Tensor, generator: torch.Generator, noise: float) -> None:
    """Data-dependent init: codebook vectors drawn from latents of real images."""
    latents = tokenizer.encode_latents(tokenizer.to_model_pixels(images))
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    weight = tokenizer.model.quantize.embedding.weight
    pick = torch.randint(flat.shape[0], (weight.shape[0],), generator=generator).to(flat.device)
    spread = flat.std(dim=0, keepdim=True).clamp_min(1e-6)
    weight.copy_(flat[pick] + noise * spread * _randn(weight.shape, generator, flat))


@torch.no_grad()
def _restart_dead_codes(tokenizer: ImageTokenizer, latents: torch.Tensor, counts: torch.Tensor,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, noise: float) -> int:
    """Re-initialise unused codes to random batch latents; returns how many were restarted."""
    dead = torch.nonzero(counts == 0).flatten()
    if dead.numel() == 0:
        return 0
    flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    pick = torch.randint(flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
    spread = flat.std(dim=0, keepdim=True).clamp_min(1e-6)
    weight = tokenizer.model.quantize.embedding.weight
    dead = dead.to(weight.device)
    weight[dead] = flat[pick] + noise * spread * _randn((dead.numel(), flat.shape[1]), generator, flat)
    state = optimizer.state.get(weight, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead] = 0  # a restarted code must not inherit the dead code's momentum
    return int(dead.numel())


def load_training_images(data_dir: str | os.PathLike, size: int, holdout: float, progress: bool = True,
                         failures: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) images as ``uint8 [N, size, size]``; curated: split train vs the others.

    Unreadable images are skipped with a warning and recorded in ``failures`` ({path: reason}).
    """
    from progemu.tokenizer.images import dataset_images, is_curated, load_images

    train_paths = dataset_images(data_dir, "train", holdout=holdout)
    if is_curated(data_dir):
        held_paths = sorted(set(dataset_images(data_dir, None)) - set(train_paths))
    else:
        try:
            held_paths = dataset_images(data_dir, "test", holdout=holdout)
        except FileNotFoundError:
            held_paths = []
    failures = {} if failures is None else failures
    train, _, bad = load_images(train_paths, size, progress=progress, desc="reading training images", skip_unreadable=True)
    failures.update(bad)
    held = train[:0]
    if held_paths:
        held, _, bad = load_images(held_paths, size, progress=progress, desc="reading held-out images", skip_unreadable=True)
        failures.update(bad)
    return train, held


def _save_checkpoint(out: Path, tokenizer: ImageTokenizer, optimizer, step: int, generator: torch.Generator,
                     counts: torch.Tensor, config: TrainConfig, last: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"step": step, "last": dict(last), "model": tokenizer.model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "usage_counts": counts.clone(),
                "train_config": config_to_dict(config)}, buffer)
    atomic_write_bytes(out / CHECKPOINT_NAME, buffer.getvalue())


def train_tokenizer(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig | None = None, *,
                    resume: bool = False, progress: bool = True, images: tuple[np.ndarray, np.ndarray] | None = None,
                    stop_at: int | None = None) -> dict:
    """Train (or resume) a tokenizer; returns the summary written to ``train_summary.json``.

    ``stop_at``: checkpoint and return after this step without finishing (a time-boxed run or a
    simulated interruption; ``--resume`` continues it exactly).

    ``images``: optional pre-loaded (train, held-out) ``uint8 [N, S, S]`` arrays (tests, benchmarks);
    by default they are read from ``data_dir`` (see :func:`load_training_images`).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    config = dataclasses.replace(config or TrainConfig())
    checkpoint = None
    if resume:
        if not (out / CHECKPOINT_NAME).exists():
            raise FileNotFoundError(f"{out / CHECKPOINT_NAME}: nothing to resume; run without --resume to start training")
        checkpoint = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
        saved = _train_config_from_dict(checkpoint["train_config"], where=str(out / CHECKPOINT_NAME))
        # only the length of the run may change on resume; everything else must match to continue exactly
        config = dataclasses.replace(saved, max_steps=config.max_steps, threads=config.threads, device=config.device)
    elif (out / CHECKPOINT_NAME).exists():
        raise FileExistsError(f"{out}: holds a training checkpoint; pass --resume to continue it or choose another --out")
    if config.tokenizer is None:
        config.tokenizer = get_preset(config.preset)
    arch = config.tokenizer.validate()
    if config.threads:
        torch.set_num_threads(config.threads)

    failures: dict[str, str] = {}
    train_images, held_images = images if images is not None else load_training_images(
        data_dir, arch.image_size, config.holdout, progress, failures)
    if len(train_images) == 0:
        raise ValueError(f"{data_dir}: no training images")
    if train_images.shape[-1] != arch.image_size:
        raise ValueError(f"training images are {train_images.shape[-1]} px but the tokenizer's native size is {arch.image_size}")
    data = torch.from_numpy(np.ascontiguousarray(train_images))
    held = torch.from_numpy(np.ascontiguousarray(held_images[: config.eval_images]))[:, None].float() / 255.0
    if held.shape[0] == 0:
        held = data[: config.eval_images][:, None].float() / 255.0  # no hold-out: report training-set PSNR

    tokenizer = ImageTokenizer.from_config(arch, seed=config.seed)
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(tokenizer.model.parameters(), lr=config.lr, betas=tuple(config.betas))
    counts = torch.zeros(arch.codebook_size, dtype=torch.long)
    step = 0
    last: dict = {}
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        tokenizer.model.load_state_dict(checkpoint["model"])
        tokenizer.to(device)
        optimizer.load_state_dict(checkpoint["optimizer"])  # after .to(): moments follow the parameters' device
        generator.set_state(checkpoint["generator"])
        counts = checkpoint["usage_counts"].clone()
        step = int(checkpoint["step"])
        last = dict(checkpoint.get("last", {}))
        # drop log lines written after the checkpoint so the resumed log has no duplicates
        records = [r for r in read_jsonl(out / LOG_NAME) if int(r.get("step", 0)) <= step]
        atomic_write_bytes(out / LOG_NAME, "".join(_json_line(r) for r in records).encode("utf-8"))
    else:
        (out / LOG_NAME).unlink(missing_ok=True)
        with torch.no_grad():
            # Emu3's kaiming(fan_out) init gives the 1-channel output conv outputs of std ~10: start
            # from a flat grey image instead, so the first steps learn structure, not scale
            tokenizer.model.decoder.conv_out.weight.mul_(config.output_init_scale)
        tokenizer.to(device)
        _init_codebook(tokenizer, _sample_batch(data, config, generator).to(device), generator, config.restart_noise)
    save_config(config, out / "train_config.json", kind="TokenizerTrainConfig")

    tokenizer.model.train()
    _freeze_batchnorm(tokenizer.model)
    window = {"loss": 0.0, "l1": 0.0, "l2": 0.0, "edge": 0.0, "codebook": 0.0, "commitment": 0.0, "consistency": 0.0, "n": 0}
    restarted = 0
    start_time, start_step = time.perf_counter(), step
    bar = tqdm(total=config.max_steps, initial=step, desc="tokenizer train", disable=not progress, unit="step")
    while step < config.max_steps:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        batch = _sample_batch(data, config, generator).to(device)
        outputs = vq_forward(tokenizer, batch)
        losses = vq_losses(batch, outputs, config)
        if config.consistency_weight > 0:
            losses["consistency"] = consistency_loss(tokenizer, perturb_views(batch, config, generator), outputs["quantized"])
            losses["loss"] = losses["loss"] + config.consistency_weight * losses["consistency"]
        else:
            losses["consistency"] = torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(tokenizer.model.parameters(), config.grad_clip)
        optimizer.step()
        counts += torch.bincount(outputs["codes"].flatten(), minlength=arch.codebook_size).cpu()
        step += 1
        for key in _LOGGED:
            window[key] += float(losses[key].detach())
        window["n"] += 1
        if config.restart_every and step % config.restart_every == 0:
            usage = float((counts > 0).float().mean())
            restarted = _restart_dead_codes(tokenizer, outputs["latents"], counts, optimizer, generator, config.restart_noise)
            last["usage_window"] = usage
            counts.zero_()
        if step % config.log_every == 0 or step == config.max_steps:
            record = {"step": step, "lr": optimizer.param_groups[0]["lr"],
                      **{k: window[k] / window["n"] for k in _LOGGED},
                      "train_psnr": 10 * math.log10(1.0 / max(window["l2"] / window["n"], 1e-12)),
                      "usage": last.get("usage_window"), "restarted": restarted,
                      "elapsed_s": round(time.perf_counter() - start_time, 3)}
            if config.eval_every and (step % config.eval_every == 0 or step == config.max_steps):
                tokenizer.model.eval()
                recon = tokenizer.decode(tokenizer.encode(held, batch_size=config.batch_size), batch_size=config.batch_size)
                record["heldout_psnr"] = psnr(held, recon)
                tokenizer.model.train()
                _freeze_batchnorm(tokenizer.model)
            append_jsonl(out / LOG_NAME, record)
            last.update(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['train_psnr']:.1f}",
                            usage=f"{record['usage'] or 0:.2f}")
            window = {k: 0.0 for k in window} | {"n": 0}
        stopping = stop_at is not None and stop_at <= step < config.max_steps
        if step % config.checkpoint_every == 0 or step == config.max_steps or stopping:
            _save_checkpoint(out, tokenizer, optimizer, step, generator, counts, config, last)
            if step < config.max_steps:
                # OUT/ is a loadable tokenizer at every checkpoint (train_summary.json appears at the end)
                tokenizer.save_pretrained(out)
        bar.update(1)
        if stopping:
            bar.close()
            return {"stopped_at": step, "last": last}
    bar.close()
    elapsed = time.perf_counter() - start_time
    tokenizer.model.eval()
    tokenizer.to("cpu")  # saved weights and the identity do not depend on the training device
    tokenizer.save_pretrained(out)
    summary = {"identity": tokenizer.refresh_identity(), "steps": step, "train_images": int(len(train_images)),
               "heldout_images": int(len(held_images)), "last": last,
               "train_images_per_s": (step - start_step) * config.batch_size / elapsed if elapsed > 0 and step > start_step else None,
               "crop_size": config.crop_size, "skipped_images": failures}
    atomic_write_json(out / "train_summary.json", summary)
    return summary


def _train_config_from_dict(data: dict, where: str) -> TrainConfig:
    """``TrainConfig`` from JSON, with the nested (optional) tokenizer architecture rebuilt."""
    config = config_from_dict(TrainConfig, data, where=where)
    if isinstance(config.tokenizer, dict):
        config.tokenizer = config_from_dict(TokenizerConfig, config.tokenizer, where=f"{where}.tokenizer")
    config.betas = tuple(config.betas)
    return config


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a saved ``train_config.json``."""
    import json

    return _train_config_from_dict(json.loads(Path(path).read_text(encoding="utf-8")), where=str(path))


def _json_line(record: dict) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"
