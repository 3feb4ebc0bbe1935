"""The diffusion baselines' training loop, with ``progemu train``'s conventions.

Output directory ``OUT/``::

    baseline_config.json        the resolved BaselineConfig
    log.jsonl                   one line per logged step: step, epoch, loss, lr, grad_norm, elapsed_s, cpu_s
    checkpoints/step-0000100/   a full model folder (progemu.baseline.model) + training_state.pt
                                (optimiser, scheduler, step, CPU seconds); the last --keep-last kept
    unet/, text_encoder/, scheduler/, baseline.json
                                the FINAL model is OUT itself (``progemu baseline generate --model OUT``)

Resumable like ``progemu train``: a step checkpoint is built under a temporary name and renamed,
``--resume`` restarts from the newest one, and because a step's batch is a pure function of
``(seed, epoch)`` and its noise, timesteps and condition dropout are drawn from a generator seeded
by ``(seed, step)``, the resumed run equals the uninterrupted one (tested). ``cpu_s`` is this
process's CPU time (``time.process_time``, all threads), summed over resumed runs: the training
budget in CPU-seconds that the benchmark compares with ProgEmu's.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from progemu.utils.atomic import append_jsonl, atomic_write_text, read_jsonl
from progemu.utils.config import config_to_dict, save_config

from .config import BaselineConfig, SampleConfig
from .data import condition_masks, epoch_batches, load_pair_images, prompts_with_dropout
from .model import BASELINE_META, build_model, load_baseline, save_baseline

__all__ = ["train_baseline", "BaselineTrainer", "latest_checkpoint", "TRAINING_STATE"]

TRAINING_STATE = "training_state.pt"
CHECKPOINTS = "checkpoints"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete ``OUT/checkpoints/step-*`` (has baseline.json and training_state.pt), or None."""
    root = Path(out) / CHECKPOINTS
    done = [p for p in root.glob("step-*") if (p / BASELINE_META).is_file() and (p / TRAINING_STATE).is_file()] \
        if root.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step's random draws (noise, timesteps, dropout)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, by the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return latents


class BaselineTrainer:
    """Holds one run's state; :meth:`run` trains to the end. Use :func:`train_baseline` from code."""

    def __init__(self, config: BaselineConfig):
        config.validate()
        self.config, self.out = config, Path(config.out)
        if config.threads:
            torch.set_num_threads(int(config.threads))
        wanted = config.device
        self.device = torch.device("cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu")
        from .sample import BaselinePipeline

        BaselinePipeline.quiet()  # per-save "Writing model shards" bars would break our own bar
        self.autocast = torch.bfloat16 if config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda") else None

    def log(self, message: str) -> None:
        print(f"[progemu baseline train] {message}", flush=True)

    def setup(self) -> None:
        from progemu.train.optim import OptimConfig, build_optimizer, build_scheduler

        config = self.config
        resume_dir = latest_checkpoint(self.out) if config.resume else None
        if not config.resume and (latest_checkpoint(self.out) is not None or (self.out / BASELINE_META).exists()):
            raise FileExistsError(f"{self.out} already holds a baseline training run; pass --resume to continue it "
                                  "or choose another --out")
        self.data = load_pair_images(config.data, config.split, config.image_size, progress=config.progress)
        if resume_dir is not None:
            self.model, _ = load_baseline(resume_dir)
            self._check_same_model(resume_dir)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.model = build_model(config, sorted(set(self.data.prompts)))
        self.model.to(self.device).train()
        self.model.space.eval()
        self.model.text_encoder.requires_grad_(config.train_text_encoder)
        self.scheduler_ddpm = self.model.noise_scheduler()
        parameters = sum(p.numel() for p in self.model.unet.parameters()) + sum(p.numel() for p in self.model.text_encoder.parameters())
        self.log(f"{config.method}: {parameters / 1e6:.2f} M parameters (UNet + text encoder), {len(self.data)} "
                 f"{config.split} pairs, latent {self.model.space.channels}x{self.model.space.latent_size}^2, device {self.device}")
        self.batches_per_epoch = len(epoch_batches(len(self.data), config.batch_size, config.seed, 0))
        self.total_steps = int(config.max_steps) if config.max_steps else config.epochs * self.batches_per_epoch
        self.optim_config = OptimConfig(lr=config.lr, min_lr=config.min_lr if config.min_lr is not None else config.lr / 10,
                                        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, beta2=0.999,
                                        eps=1e-8, clip_grad_norm=config.clip)
        trainable = torch.nn.ModuleDict({"unet": self.model.unet, "text_encoder": self.model.text_encoder})
        self.optimizer = build_optimizer(trainable, self.optim_config)
        self.lr_scheduler = build_scheduler(self.optimizer, self.optim_config, self.total_steps)
        self.step, self.cpu_before = 0, 0.0
        if resume_dir is not None:
            state = torch.load(resume_dir / TRAINING_STATE, map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr_scheduler.load_state_dict(state["scheduler"])
            self.step, self.cpu_before = int(state["step"]), float(state.get("cpu_s", 0.0))
            self.log(f"resumed from {resume_dir} at step {self.step}")
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(config, self.out / "baseline_config.json", kind="BaselineConfig")
        records = [r for r in read_jsonl(self.out / "log.jsonl") if int(r.get("step", 0)) <= self.step]
        atomic_write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def _check_same_model(self, resume_dir: Path) -> None:
        """A resumed run continues the model it started: refuse a changed model definition."""
        saved = json.loads((resume_dir / "baseline_config.json").read_text(encoding="utf-8"))
        now = config_to_dict(self.config)
        fixed = ("method", "image_size", "space", "unshuffle", "vae", "unet", "unet_channels", "unet_layers", "unet_heads",
                 "unet_groups", "text_encoder", "text_hidden", "text_layers", "text_heads", "text_max_length",
                 "bpe_vocab_size", "train_timesteps", "beta_schedule", "prediction_type", "data", "split", "seed")
        changed = [f"--{k.replace('_', '-')} {saved[k]} (now {now[k]})" for k in fixed if k in saved and saved[k] != now[k]]
        if changed:
            raise ValueError(f"--out {self.out}: --resume continues the run started there, made with {', '.join(changed)}; "
                             "resume with the same settings or train afresh with a new --out")

    def train_step(self, step: int) -> dict:
        config, model = self.config, self.model
        epoch, position = divmod(step, self.batches_per_epoch)
        index = epoch_batches(len(self.data), config.batch_size, config.seed, epoch)[position]
        generator = step_generator(config.seed, step)
        keep_text, keep_image = condition_masks(torch.rand(len(index), generator=generator), config.text_dropout,
                                                config.image_dropout, config.both_dropout)
        with torch.no_grad():
            latents = model.space.encode(self.data.followups[index].to(self.device))
            prior = model.space.encode(self.data.priors[index].to(self.device))
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        timesteps = torch.randint(0, self.scheduler_ddpm.config.num_train_timesteps, (len(index),), generator=generator).to(self.device)
        noisy = self.scheduler_ddpm.add_noise(latents, noise, timesteps)
        target = diffusion_target(self.scheduler_ddpm, latents, noise, timesteps)
        prior = prior * keep_image.to(self.device, prior.dtype)[:, None, None, None]
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            text = model.encode_prompts(prompts_with_dropout([self.data.prompts[i] for i in index], keep_text))
            prediction = model.predict(noisy, timesteps, prior, text)
        loss = F.mse_loss(prediction.float(), target.float())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                                   self.optim_config.clip_grad_norm)
        lr = self.lr_scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"step": step + 1, "epoch": epoch, "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}

    def _meta(self) -> dict:
        return {"train": {"step": self.step, "total_steps": self.total_steps, "cpu_s": round(self.cpu_s(), 1),
                          "pairs": len(self.data)},
                "sampling": config_to_dict(SampleConfig())}

    def cpu_s(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu_started

    def save_step(self) -> None:
        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final, temporary = root / f"step-{self.step:07d}", root / f".tmp-step-{self.step:07d}"
        shutil.rmtree(temporary, ignore_errors=True)
        save_baseline(self.model, temporary, self._meta())
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.lr_scheduler.state_dict(),
                    "cpu_s": self.cpu_s()}, temporary / TRAINING_STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[: -max(1, self.config.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def run(self) -> dict:
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {config.method}", unit="step",
                   disable=not config.progress, mininterval=2.0)
        started, self.cpu_started = time.perf_counter(), time.process_time()
        last: dict = {}
        while self.step < self.total_steps:
            record = self.train_step(self.step)
            self.step += 1
            record.update(elapsed_s=round(time.perf_counter() - started, 2), cpu_s=round(self.cpu_s(), 2))
            last = record
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"step {self.step}: loss is {record['loss']}; lower --lr or check the data")
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                append_jsonl(self.out / "log.jsonl", record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            bar.update(1)
            if self.step % config.save_every == 0 or self.step == self.total_steps:
                self.save_step()
        bar.close()
        save_baseline(self.model, self.out, self._meta())
        self.log(f"done: {self.step} steps, final loss {last.get('loss', float('nan')):.4f}, "
                 f"{self.cpu_s():.0f} CPU s; model in {self.out}")
        return last


def train_baseline(config: BaselineConfig) -> dict:
    """Train (or resume) to the end; returns the last log record."""
    trainer = BaselineTrainer(config)
    trainer.setup()
    return trainer.run()
