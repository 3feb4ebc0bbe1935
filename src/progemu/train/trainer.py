"""The ProgEmu training loop: one CPU process to many GPUs, resumable after a SIGKILL.

Output directory ``OUT/``::

    train_config.json              the resolved TrainConfig
    log.jsonl                      one line per logged step: step, loss, lr, tokens_per_s,
                                   loss_image, loss_text, grad_norm, epoch, elapsed_s
    checkpoints/step-0000100/      full checkpoint (progemu.model.checkpoint) + training_state.pt
                                   (optimiser, scheduler, step, data position, RNG); last K kept
    config.json, model.safetensors, tokenizer.json, progemu.json, image_tokenizer/
                                   the FINAL checkpoint is OUT itself: `progemu generate --model OUT`
    .image_tokenizer/              the image tokenizer's VQ-VAE, saved once and hard-linked into
                                   every checkpoint's image_tokenizer/

A step checkpoint directory is built under a temporary name and renamed into place, so it is
either complete or absent. ``--resume`` restarts from the newest one: the data position is the
step number (the epoch's batches are a pure function of seed and epoch), the weights are saved
in float32 and the optimiser and scheduler states exactly, so the resumed loss curve equals the
uninterrupted one (tested). ``log.jsonl`` lines after the restored step are dropped on resume.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from progemu.model.checkpoint import PROGEMU_META, save_checkpoint
from progemu.model.presets import get_preset
from progemu.train.data import DataConfig, ProgEmuExamples, collate, epoch_batches, identity_texts, load_codes
from progemu.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, no_sync, shutdown, wrap_model
from progemu.train.objective import TargetLoss
from progemu.train.optim import OptimConfig, build_optimizer, build_scheduler
from progemu.utils.atomic import append_jsonl, atomic_write_text, read_jsonl
from progemu.utils.config import config_to_dict, save_config

__all__ = ["TrainConfig", "train", "latest_checkpoint", "TRAINING_STATE"]

TRAINING_STATE = "training_state.pt"
CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class TrainConfig:
    """Everything ``progemu train`` needs; saved as ``OUT/train_config.json`` and in ``progemu.json``."""

    data: str = ""
    recipe: str = "progemu"  # progemu | official: whose defaults the unset flags took (progemu train --recipe)
    tokenizer: str = ""  # image tokenizer directory
    out: str = ""
    preset: str = "tiny"
    init: str | None = None
    text_tokenizer: str | None = None
    bpe_vocab_size: int | None = None
    data_config: DataConfig = dataclasses.field(default_factory=DataConfig)
    positions: str = "sequential"  # sequential (the paper) | aligned (follow-up cell (i, j) at a fixed offset from prior (i, j))
    prompt_budget: int = 128  # aligned: prompt tokens that fit before the follow-up image
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    epochs: int = 30
    max_steps: int | None = None
    batch_size: int = 8  # global batch per optimiser step (all processes and accumulation)
    micro_batch_size: int | None = None  # per process and forward; default batch_size / processes
    seed: int = 0
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    gradient_checkpointing: str = "auto"  # auto (on for CUDA) | on | off
    strategy: str = "ddp"  # ddp | fsdp (only used under torchrun)
    num_threads: int | None = None
    tensorboard: bool = False
    progress: bool = True
    resume: bool = False


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete ``OUT/checkpoints/step-*`` (has progemu.json and training_state.pt), or None."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / PROGEMU_META).is_file() and (p / TRAINING_STATE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _run_layout(bundle, config: TrainConfig):
    """The run's layout: a resumed run keeps its saved positions (a different ``--positions`` is refused)."""
    if bundle.source.startswith("resume:"):
        if bundle.layout.positions != config.positions or (bundle.layout.aligned and bundle.layout.prompt_budget != config.prompt_budget):
            raise ValueError(f"--positions {config.positions} (prompt budget {config.prompt_budget}) differs from the run being "
                             f"resumed ({bundle.layout.positions}, budget {bundle.layout.prompt_budget}); resume with the "
                             "run's own settings or choose another --out")
        return bundle.layout
    return bundle.layout.with_positions(config.positions, config.prompt_budget)


class Trainer:
    """Holds a run's state; :meth:`run` trains to the end. Use :func:`train` from code."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out = Path(config.out)
        self.info: DistInfo = init_distributed(config.device)
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-save "Writing model shards" bars would break our own bar

    def log(self, message: str) -> None:
        if self.info.is_main:
            print(f"[progemu train] {message}", flush=True)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from progemu.data.icgcxr import load_pairs
        from progemu.tokenizer import ImageTokenizer
        from progemu.train.setup import build_model_bundle, training_texts

        config, info = self.config, self.info
        resume_dir = latest_checkpoint(self.out) if config.resume else None
        if not config.resume and (latest_checkpoint(self.out) is not None or (self.out / PROGEMU_META).exists()):
            raise FileExistsError(f"{self.out} already holds a training run; pass --resume to continue it or choose another --out")
        self.pairs = load_pairs(config.data, split=config.data_config.split, pairs_list=config.data_config.pairs_list)
        self.image_tokenizer = ImageTokenizer.from_pretrained(config.tokenizer)
        if info.is_main:
            self.codes = load_codes(config.data, self.pairs, self.image_tokenizer, progress=config.progress)
        barrier(info)
        if not info.is_main:
            self.codes = load_codes(config.data, self.pairs, self.image_tokenizer, encode_missing=False)
        texts = training_texts(self.pairs) + identity_texts(config.data_config)
        bundle = build_model_bundle(image_tokenizer=self.image_tokenizer, preset=config.preset, texts=texts,
                                    seed=config.seed, resume_dir=resume_dir, init=config.init,
                                    text_tokenizer_dir=config.text_tokenizer, bpe_vocab_size=config.bpe_vocab_size)
        self.model, self.text_tokenizer = bundle.model, bundle.text_tokenizer
        self.layout = _run_layout(bundle, config)
        self.log(f"model from {bundle.source}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M parameters, "
                 f"{len(self.pairs)} {config.data_config.split} pairs, mode {config.data_config.mode}, device {info.device}")
        self.examples = ProgEmuExamples(self.pairs, self.codes, self.text_tokenizer, self.layout, config.data_config,
                                        seed=config.seed, max_length=self.model.config.max_position_embeddings)
        world = info.world_size
        if config.batch_size % world:
            raise ValueError(f"--batch-size {config.batch_size} must be a multiple of the number of processes ({world})")
        self.local_batch = config.batch_size // world
        self.micro = min(config.micro_batch_size or self.local_batch, self.local_batch)
        if self.local_batch % self.micro:
            raise ValueError(f"per-process batch {self.local_batch} must be a multiple of --micro-batch-size {self.micro}")
        self.batches_per_epoch = len(epoch_batches(self.examples.lengths, config.batch_size, config.seed, 0,
                                                   config.data_config.bucket_batches))
        self.total_steps = int(config.max_steps) if config.max_steps else config.epochs * self.batches_per_epoch

        cuda = info.device.type == "cuda"
        self.autocast = torch.bfloat16 if (config.precision == "bf16" or (config.precision == "auto" and cuda)) else None
        if config.gradient_checkpointing == "on" or (config.gradient_checkpointing == "auto" and cuda):
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.model.config.use_cache = False
        self.model.to(info.device).train()
        self.module = wrap_model(TargetLoss(self.model, self.layout.visual_offset, self.layout.codebook_size,
                                             config.data_config.visual_loss_weight), info, config.strategy)
        self.optimizer = build_optimizer(self.module, config.optim)
        horizon = config.optim.schedule_steps or self.total_steps
        if horizon < self.total_steps:
            raise ValueError(f"--schedule-steps {horizon} is shorter than the run ({self.total_steps} steps); "
                             "the cosine must cover every step")
        self.scheduler = build_scheduler(self.optimizer, config.optim, horizon)
        self.step = 0
        if resume_dir is not None:
            self._load_state(resume_dir)
        # the image tokenizer is saved once (only its VQ-VAE, even when --tokenizer is a full Emu3
        # model) and hard-linked into every checkpoint
        self.image_tokenizer_dir = self.out / ".image_tokenizer"
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if resume_dir is not None:
                self._warn_changed_settings()
            save_config(config, self.out / "train_config.json", kind="TrainConfig")
            self._truncate_log()
            if not self.image_tokenizer_dir.is_dir():
                staging = self.out / ".image_tokenizer.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                self.image_tokenizer.save_pretrained(staging)
                os.replace(staging, self.image_tokenizer_dir)
        barrier(info)
        self.writer = None
        if config.tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                 "(log.jsonl is written either way)") from None
            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def _load_state(self, directory: Path) -> None:
        state = torch.load(directory / TRAINING_STATE, map_location="cpu", weights_only=False)
        if self.info.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.module, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        _set_rng_state(state["rng"])
        self.log(f"resumed from {directory} at step {self.step}")

    def _warn_changed_settings(self) -> None:
        """A resumed run should use the settings it started with; name the ones that differ."""
        path = self.out / "train_config.json"
        if not path.exists():
            return
        saved = json.loads(path.read_text(encoding="utf-8"))
        now = config_to_dict(self.config)
        ignore = {"resume", "progress", "num_threads", "_schema", "_kind", "_progemu_version"}
        changed = sorted(k for k in now if k not in ignore and k in saved and saved[k] != now[k])
        if changed:
            self.log(f"warning: resuming with changed settings {changed}; the loss curve will differ from the original run")

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the restored checkpoint (they are trained again)."""
        path = self.out / "log.jsonl"
        records = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= self.step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))

    # ------------------------------------------------------------------ one step
    def _batch(self, step: int) -> tuple[int, list[int]]:
        epoch, position = divmod(step, self.batches_per_epoch)
        if getattr(self, "_epoch_cache", (None,))[0] != epoch:
            self._epoch_cache = (epoch, epoch_batches(self.examples.lengths, self.config.batch_size, self.config.seed, epoch,
                                                      self.config.data_config.bucket_batches))
        return epoch, self._epoch_cache[1][position]

    def train_step(self, step: int) -> dict:
        info = self.info
        epoch, batch = self._batch(step)
        local = batch[info.rank * self.local_batch:(info.rank + 1) * self.local_batch]
        examples = [self.examples.example(i, epoch) for i in local]
        counts = torch.tensor([sum(sum(1 for t in labels[1:] if t != -100) for _, labels in examples),
                               sum(len(ids) for ids, _ in examples)], dtype=torch.float64)
        all_reduce_sum(counts, info)
        global_targets, global_tokens = float(counts[0]), float(counts[1])
        sums = torch.zeros(5, dtype=torch.float64)
        micro_batches = [examples[i:i + self.micro] for i in range(0, len(examples), self.micro)]
        for k, micro in enumerate(micro_batches):
            tensors = {key: value.to(info.device) for key, value in collate(micro, self.layout.pad_id, self.layout).items()}
            with no_sync(self.module, info, k == len(micro_batches) - 1):
                with torch.autocast(info.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    out = self.module(**tensors)
                # sum / global count * world: DDP averages gradients over processes
                loss = out[4] * (info.world_size / max(global_targets, 1.0))
                loss.backward()
            sums += out.detach().to("cpu", torch.float64)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.optim.clip_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        all_reduce_sum(sums, info)
        text_count = sums[1] - sums[3]
        return {"step": step + 1, "epoch": epoch, "loss": float(sums[0] / max(sums[1], 1.0)), "lr": lr,
                "loss_image": float(sums[2] / sums[3]) if sums[3] > 0 else None,
                "loss_text": float((sums[0] - sums[2]) / text_count) if text_count > 0 else None,
                "grad_norm": float(grad_norm), "tokens": int(global_tokens)}

    # ------------------------------------------------------------------ saving
    def _full_state(self):
        """(model state or None, optimiser state) gathered as full tensors (FSDP) or as they are."""
        if self.info.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(self.module, options=options)
            model_state = {k[len("model."):]: v for k, v in model_state.items() if k.startswith("model.")}
            return model_state, get_optimizer_state_dict(self.module, self.optimizer, options=options)
        return None, self.optimizer.state_dict()

    def _train_meta(self) -> dict:
        return {**config_to_dict(self.config), "step": self.step, "total_steps": self.total_steps}

    def save_step(self) -> None:
        model_state, optimizer_state = self._full_state()
        if self.info.is_main:
            root = self.out / CHECKPOINTS
            root.mkdir(parents=True, exist_ok=True)
            final = root / f"step-{self.step:07d}"
            temporary = root / f".tmp-step-{self.step:07d}"
            shutil.rmtree(temporary, ignore_errors=True)
            state = {"step": self.step, "epoch": self.step // self.batches_per_epoch,
                     "position": self.step % self.batches_per_epoch, "optimizer": optimizer_state,
                     "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "world_size": self.info.world_size}
            save_checkpoint(temporary, self.model, self.text_tokenizer, self.layout, mode=self.config.data_config.mode,
                            train_config=self._train_meta(), preset=self.config.preset, image_tokenizer=self.image_tokenizer_dir,
                            extra_files={TRAINING_STATE: lambda path: torch.save(state, path)}, state_dict=model_state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(temporary, final)
            for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[: -max(1, self.config.keep_last)]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(self.info)

    def save_final(self) -> None:
        model_state, _ = self._full_state()
        if self.info.is_main:
            save_checkpoint(self.out, self.model, self.text_tokenizer, self.layout, mode=self.config.data_config.mode,
                            train_config=self._train_meta(), preset=self.config.preset, image_tokenizer=self.image_tokenizer_dir,
                            state_dict=model_state)
        barrier(self.info)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not (config.progress and self.info.is_main), mininterval=2.0)
        started = time.perf_counter()
        last = {}
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            record = self.train_step(self.step)
            self.step += 1
            elapsed = time.perf_counter() - t0
            record["tokens_per_s"] = record["tokens"] / max(elapsed, 1e-9)
            record["elapsed_s"] = time.perf_counter() - started
            last = record
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"step {self.step}: loss is {record['loss']}; lower --lr or check the data")
            if self.info.is_main and (self.step % config.log_every == 0 or self.step == self.total_steps):
                append_jsonl(self.out / "log.jsonl", record)
                if self.writer is not None:
                    for key in ("loss", "lr", "tokens_per_s", "loss_image", "loss_text", "grad_norm"):
                        if record.get(key) is not None:
                            self.writer.add_scalar(f"train/{key}", record[key], self.step)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            if self.step % config.save_every == 0 or self.step == self.total_steps:
                self.save_step()
        bar.close()
        self.save_final()
        if self.writer is not None:
            self.writer.close()
        self.log(f"done: {self.step} steps, final loss {last.get('loss', float('nan')):.4f}; checkpoint in {self.out}")
        return last


def train(config: TrainConfig) -> dict:
    """Train to the end (or resume); returns the last log record. Cleans up the process group."""
    trainer = Trainer(config)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        shutdown(trainer.info)
