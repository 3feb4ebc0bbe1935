"""The training objective: summed next-token cross-entropy on the labelled (target) tokens.

The loss of a step is ``sum of CE over every labelled token of the global batch / number of
labelled tokens of the global batch`` -- the same number however the global batch is split
into micro-batches and processes. Each micro-batch therefore returns *sums*; the trainer
divides by the global token count (all-reduced once per step).

Only positions that carry a label go through the language-model head: with Emu3's 184,622-
token vocabulary the full ``[B, T, V]`` logits of one 8k-token sequence would take 6 GB in
float32, and in the paper's target-only loss about half the positions need none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from progemu.model.layout import IGNORE_INDEX

__all__ = ["TargetLoss"]


class TargetLoss(nn.Module):
    """Wraps an ``Emu3ForCausalLM`` so that DDP / FSDP see one ``forward`` returning loss sums.

    ``forward(input_ids long[B,T], attention_mask long[B,T], labels long[B,T])`` ->
    ``float32 [4]``: (CE sum over all labelled tokens, count, CE sum over visual-token labels,
    count of visual-token labels). Labels are unshifted (label t is the token at t); the
    prediction for label t comes from position t-1.
    """

    def __init__(self, model: nn.Module, visual_offset: int, codebook_size: int):
        super().__init__()
        self.model = model
        self.visual_offset = int(visual_offset)
        self.visual_end = int(visual_offset) + int(codebook_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        logits = self.model.lm_head(hidden[:, :-1][selected])
        wanted = targets[selected]
        losses = F.cross_entropy(logits.float(), wanted, reduction="none")
        visual = (wanted >= self.visual_offset) & (wanted < self.visual_end)
        return torch.stack([
            losses.sum(),
            selected.sum().to(losses.dtype),
            (losses * visual).sum(),
            visual.sum().to(losses.dtype),
        ])
