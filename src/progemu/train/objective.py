"""The training objective: summed next-token cross-entropy on the labelled (target) tokens.

The loss of a step is ``sum of CE over every labelled token of the global batch / number of
labelled tokens of the global batch`` -- the same number however the global batch is split
into micro-batches and processes. Each micro-batch therefore returns *sums*; the trainer
divides by the global token count (all-reduced once per step).

``visual_loss_weight`` (default 1 = the paper's plain mean) scales the cross-entropy of
image-code labels in the *optimised* sum only; the logged losses stay unweighted. Why: on a
small model most of the image-code loss is irreducible (a VQ code of a noisy radiograph is
never certain: ~2.5 nats per code on the demo world, against ~0.2 per text token), and 270
image labels per pair against ~80 text labels let it drown the gradient that teaches the
interpretation. Down-weighting it (the demo uses 0.25) is our choice, measured in
BENCHMARKS.md ("demo").

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

    ``forward(input_ids long[B,T], attention_mask long[B,T], labels long[B,T], position_ids long[B,T] | None)`` ->
    ``float32 [5]``: (CE sum over all labelled tokens, count, CE sum over visual-token labels,
    count of visual-token labels, the optimised sum = text CE + ``visual_loss_weight`` x visual CE).
    Labels are unshifted (label t is the token at t); the prediction for label t comes from position t-1.
    """

    def __init__(self, model: nn.Module, visual_offset: int, codebook_size: int, visual_loss_weight: float = 1.0):
        super().__init__()
        if not visual_loss_weight >= 0:
            raise ValueError(f"visual_loss_weight must be >= 0, got {visual_loss_weight}")
        self.visual_loss_weight = float(visual_loss_weight)
        self.model = model
        self.visual_offset = int(visual_offset)
        self.visual_end = int(visual_offset) + int(codebook_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        logits = self.model.lm_head(hidden[:, :-1][selected])
        wanted = targets[selected]
        losses = F.cross_entropy(logits.float(), wanted, reduction="none")
        visual = (wanted >= self.visual_offset) & (wanted < self.visual_end)
        total, visual_sum = losses.sum(), (losses * visual).sum()
        optimised = total - (1.0 - self.visual_loss_weight) * visual_sum  # weight 1: exactly ``total``
        return torch.stack([total, selected.sum().to(losses.dtype), visual_sum, visual.sum().to(losses.dtype), optimised])
