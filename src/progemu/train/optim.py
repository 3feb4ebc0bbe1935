"""AdamW with the official ProgEmu settings and a warm-up + cosine-to-minimum schedule.

Official hyper-parameters (formats.md §4): AdamW betas (0.9, 0.95), eps 1e-6, weight decay
0.1, lr 1e-5 cosine to 1e-6 after 30 linear warm-up steps, gradient clipping 5.0. As in the
Hugging Face Trainer that the official code uses, 1-D parameters (RMSNorm weights, biases)
get no weight decay.
"""
from __future__ import annotations

import dataclasses

from torch import nn

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler"]


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-6
    clip_grad_norm: float = 5.0
    # horizon of the cosine (None = the run's own length). Larger than the run stops training early on a
    # longer schedule: the demo model is step 1000 of a 1500-step cosine, before the low-lr tail memorises
    # the 830 training images (see progemu/demo.py)
    schedule_steps: int | None = None


def build_optimizer(model: nn.Module, config: OptimConfig):
    """``torch.optim.AdamW`` with two groups: weight decay on >= 2-D tensors, none on 1-D ones."""
    import torch

    decay, no_decay = [], []
    for _, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)


def build_scheduler(optimizer, config: OptimConfig, total_steps: int):
    """Linear warm-up to ``lr`` then half-cosine to ``min_lr`` at ``total_steps`` (transformers' schedule)."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    warmup = min(int(config.warmup_steps), max(0, int(total_steps) - 1))
    rate = config.min_lr / config.lr if config.lr > 0 else 0.0
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=warmup,
                                                       num_training_steps=max(1, int(total_steps)), min_lr_rate=rate)
