"""The reference way to generate: transformers' ``generate()`` with a prefix-constraint function.

This is how Emu3's and ProgEmu's released inference code samples images (a
``prefix_allowed_tokens_fn`` that forces EOL every ``w + 1`` tokens, then EOF, EOI, then text
only; guidance by ``guidance_scale`` + ``negative_prompt_ids``, i.e. transformers'
``UnbatchedClassifierFreeGuidanceLogitsProcessor``, a second forward per token). It is slow
(the constraint builds a vocabulary mask from Python lists at every step) but simple, and it is
the yardstick :class:`~progemu.generate.sampler.ConstrainedSampler` is tested and benchmarked
against: same weights, greedy decoding -> identical ids.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from progemu.model.layout import MODES, TokenLayout

from .sampler import SamplingSettings, allowed_text_ids

__all__ = ["prefix_constraint", "reference_generate"]


def prefix_constraint(layout: TokenLayout, prefix_length: int, mode: str = "joint") -> Callable[[int, torch.Tensor], list[int]]:
    """A ``prefix_allowed_tokens_fn`` for one prefix of ``prefix_length`` tokens, as Emu3's code writes it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    header = layout.image_header()
    visual = list(range(layout.visual_offset, layout.visual_offset + layout.codebook_size))
    text = allowed_text_ids(layout)
    image_length = 0 if mode == "text" else layout.image_length

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        position = input_ids.shape[-1] - prefix_length
        if position < image_length:
            if position < len(header):
                return [header[position]]
            forced = layout.image_body_forced_id(position - len(header))
            return visual if forced is None else [forced]
        if mode == "image":
            return [layout.eos_id]
        return text

    return allowed


@torch.inference_mode()
def reference_generate(model: Any, layout: TokenLayout, prefix: Sequence[int], *, mode: str = "joint",
                       settings: SamplingSettings | None = None, null_prefix: Sequence[int] | None = None) -> list[int]:
    """One continuation of ``prefix`` with ``model.generate`` (batch 1); returns the ids after the prefix.

    Image mode stops after EOI (the id budget ends there), as the engine does.
    ``settings.temperature == 0`` -> greedy. Guidance, when ``cfg_scale != 1``, applies to every
    token (transformers has no per-part scale), so compare with ``cfg_text_scale == cfg_scale``.
    """
    settings = (settings or SamplingSettings()).validate()
    device = next(model.parameters()).device
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    budget = {"joint": layout.image_length + settings.max_text_tokens, "image": layout.image_length,
              "text": settings.max_text_tokens}[mode]
    kwargs: dict[str, Any] = {}
    if settings.cfg_scale != 1.0:
        negative = list(null_prefix) if null_prefix is not None else layout.null_prefix()
        kwargs["guidance_scale"] = settings.cfg_scale
        kwargs["negative_prompt_ids"] = torch.tensor([negative], dtype=torch.long, device=device)
    if settings.temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_k=settings.top_k or None,
                      top_p=settings.top_p)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, min_new_tokens=0,
                         prefix_allowed_tokens_fn=prefix_constraint(layout, ids.shape[1], mode),
                         eos_token_id=layout.eos_id, pad_token_id=layout.pad_id, **kwargs)
    return out[0, ids.shape[1]:].tolist()
