"""Interpretation maps: where each phrase of the interpretation looks in the counterfactual (paper, Fig. 4).

For a finished sequence ``... IMG(counterfactual) interpretation EOS`` we measure, for every
interpretation token, the attention its *generating step* paid to the counterfactual's h x w
visual tokens (the query at position ``p - 1`` produced token ``p``: "while writing this word,
the model looked here"), average it over the chosen layers and heads and over the tokens of a
phrase, and return one ``float32 [h, w]`` map per phrase that sums to 1.

How the weights are obtained (the choice the issue asks to document): the fast sampler runs SDPA
attention, which returns no weights, so after sampling we re-run the model once over the final
sequence. The part before the first interpretation query is prefilled with the model's normal
attention (no weights needed there); only the interpretation queries (at most ~196) are run with
``attn_implementation="eager"``, reusing that cache. Forward hooks on the chosen layers' attention
modules keep just the columns of the image tokens, so memory is ``layers x heads x T x h*w``
instead of ``layers x heads x T x L`` (an 8B model would otherwise hold gigabytes of weights).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["AttentionSettings", "split_phrases", "token_char_spans", "interpretation_attention", "phrase_maps",
           "upsample_map", "overlay_map"]

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_CLAUSE_END = re.compile(r"(?<=[.!?;,])\s+")


@dataclasses.dataclass
class AttentionSettings:
    """Which attention to read.

    ``layers``: layer indices (negative counts from the end); ``None`` = every layer.
    ``heads``: head indices; ``None`` = every head (averaged).
    ``phrases``: ``"sentence"`` (split after . ! ? ;) or ``"clause"`` (also after commas).
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    phrases: str = "sentence"

    def validate(self, num_layers: int, num_heads: int) -> "AttentionSettings":
        if self.phrases not in ("sentence", "clause"):
            raise ValueError(f"attention phrases must be 'sentence' or 'clause', got {self.phrases!r}")
        for name, values, size in (("layers", self.layers, num_layers), ("heads", self.heads, num_heads)):
            for value in values or ():
                if not -size <= int(value) < size:
                    raise ValueError(f"attention {name}: index {value} out of range for a model with {size} {name}")
        return self


def split_phrases(text: str, mode: str = "sentence") -> list[tuple[str, int, int]]:
    """``[(phrase, start, end)]`` character spans of the non-empty sentences (or clauses) of ``text``."""
    pattern = _SENTENCE_END if mode == "sentence" else _CLAUSE_END
    spans: list[tuple[str, int, int]] = []
    start = 0
    for match in list(pattern.finditer(text)) + [None]:
        end = match.start() if match is not None else len(text)
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            offset = start + (len(piece) - len(piece.lstrip()))
            spans.append((stripped, offset, offset + len(stripped)))
        if match is not None:
            start = match.end()
    return spans


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` and give each token its ``[start, end)`` characters in the decoded text.

    Uses prefix decoding (``decode(ids[:i+1])``), which is exact for byte-level BPE even when one
    character spans several tokens (such tokens get an empty span, then the full one).
    """
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    spans: list[tuple[int, int]] = []
    previous = 0
    for i in range(len(ids)):
        length = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
        length = max(previous, min(length, len(text)))
        spans.append((previous, length))
        previous = length
    return text, spans


@contextlib.contextmanager
def _eager_attention(model: Any):
    """Temporarily switch the model to eager attention (the only kind that returns weights)."""
    config = model.config
    before = config._attn_implementation
    try:
        config._attn_implementation = "eager"
        yield
    finally:
        config._attn_implementation = before


@torch.inference_mode()
def interpretation_attention(model: Any, sequence: Sequence[int], image_positions: Sequence[int],
                             text_positions: Sequence[int], settings: AttentionSettings | None = None,
                             position_ids: Sequence[int] | None = None) -> np.ndarray:
    """Attention of each text token's generating step to the image tokens.

    ``sequence``: the whole id sequence (prefix + continuation). ``image_positions``: indices in
    ``sequence`` of the counterfactual's h*w visual tokens (row-major). ``text_positions``:
    indices of the interpretation tokens (each > 0). Returns ``float32 [T, h*w]``: for token
    ``t``, the attention of query ``text_positions[t] - 1``, averaged over the chosen layers and
    heads (each row sums to the attention mass on the image, <= 1). ``position_ids``: the rotary
    position of every token of ``sequence`` (:meth:`TokenLayout.position_ids`; default ``0 .. n-1``).
    """
    text_positions = [int(p) for p in text_positions]
    if not text_positions:
        return np.zeros((0, len(image_positions)), dtype=np.float32)
    layers_all = model.model.layers
    settings = (settings or AttentionSettings()).validate(len(layers_all), int(model.config.num_attention_heads))
    device = next(model.parameters()).device
    queries = [p - 1 for p in text_positions]
    first, last = min(queries), max(queries)
    ids = torch.tensor([list(sequence)[: last + 1]], dtype=torch.long, device=device)
    image_index = torch.tensor(list(image_positions), dtype=torch.long, device=device)
    query_index = torch.tensor([q - first for q in queries], dtype=torch.long, device=device)
    heads = None if settings.heads is None else torch.tensor(list(settings.heads), device=device)
    chosen = sorted({int(i) % len(layers_all) for i in (settings.layers or range(len(layers_all)))})
    collected: list[torch.Tensor] = []

    def keep_image_columns(module, args, output):
        weights = output[1]  # [1, heads, q, k]
        if weights is None:
            raise RuntimeError("attention weights missing: the eager attention pass did not return them")
        weights = weights[0].index_select(-1, image_index).float()  # [heads, q, h*w]
        if heads is not None:
            weights = weights.index_select(0, heads)
        collected.append(weights.mean(dim=0).index_select(0, query_index))

    if position_ids is None:
        position_ids = range(last + 1)
    positions = torch.tensor([list(position_ids)[: last + 1]], dtype=torch.long, device=device)
    # an explicit mask: positions may jump (aligned layouts), which transformers would otherwise read as packing
    mask = torch.ones_like(ids)
    cache = None
    if first > 0:
        out = model(input_ids=ids[:, :first], attention_mask=mask[:, :first], position_ids=positions[:, :first],
                    use_cache=True, logits_to_keep=1)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    hooks = [layers_all[i].self_attn.register_forward_hook(keep_image_columns) for i in chosen]
    try:
        with _eager_attention(model):
            model(input_ids=ids[:, first:], attention_mask=mask, position_ids=positions[:, first:], cache=cache,
                  use_cache=cache is not None, logits_to_keep=1)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(collected).mean(dim=0).cpu().numpy().astype(np.float32)


def phrase_maps(token_maps: np.ndarray, token_spans: Sequence[tuple[int, int]], phrases: Sequence[tuple[str, int, int]],
                grid: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """Average token maps over each phrase's tokens.

    ``token_maps``: float [T, h*w] (from :func:`interpretation_attention`); ``token_spans``: the
    character span of each token; ``phrases``: from :func:`split_phrases`. Returns
    ``{phrase: {"map": float32 [h, w] summing to 1, "image_mass": mean attention mass on the image,
    "tokens": [first, last+1]}}``; a phrase with no token (cannot happen for decoded text) is skipped.
    Repeated phrases get a ``" (2)"`` suffix so every key is unique.
    """
    out: dict[str, dict[str, Any]] = {}
    for phrase, start, end in phrases:
        members = [t for t, (a, b) in enumerate(token_spans) if b > a and a < end and b > start]
        if not members:
            continue
        raw = token_maps[members].mean(axis=0)
        mass = float(raw.sum())
        normalised = raw / mass if mass > 0 else np.full_like(raw, 1.0 / raw.size)
        key, n = phrase, 2
        while key in out:
            key, n = f"{phrase} ({n})", n + 1
        out[key] = {"map": normalised.reshape(grid).astype(np.float32), "image_mass": mass,
                    "tokens": [members[0], members[-1] + 1]}
    return out


def upsample_map(attention_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an ``[h, w]`` map to ``size = (H, W)``, rescaled to [0, 1] (max = 1)."""
    tensor = torch.as_tensor(np.asarray(attention_map, dtype=np.float32))[None, None]
    up = torch.nn.functional.interpolate(tensor, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    peak = float(up.max())
    return (up / peak if peak > 0 else up).numpy()


def _heat(values: np.ndarray) -> np.ndarray:
    """float [H, W] in [0, 1] -> float [H, W, 3], a black-red-yellow ramp (matplotlib's "hot" without the white end,
    so the hottest region stays visible on a bright radiograph)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([2 * v, 2 * v - 1, np.zeros_like(v)], axis=-1), 0.0, 1.0)


def overlay_map(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: the greyscale ``image`` (float [0, 1]) with ``heat`` ([0, 1], same size) blended on.

    The blend weight grows with the heat so cold regions show the radiograph unchanged.
    """
    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    heat = np.asarray(heat, dtype=np.float32)
    if image.shape != heat.shape:
        raise ValueError(f"overlay_map: image {image.shape} and heat map {heat.shape} differ in size")
    grey = np.repeat(image[..., None], 3, axis=-1)
    weight = alpha * heat[..., None]
    rgb = (1 - weight) * grey + weight * _heat(heat)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
