"""Constrained, batched, KV-cached sampling of ProgEmu continuations (the generation engine).

The engine sees only token ids and a :class:`~progemu.model.layout.TokenLayout`; images, text
and files are the pipeline's business. It replaces transformers' ``generate()`` with a
``prefix_allowed_tokens_fn`` (the reference, :mod:`progemu.generate.reference`) by a loop that
is token-identical under greedy decoding and much cheaper per token, following LlamaGen's
``prefill`` / ``decode_one_token`` / ``decode_n_tokens`` split and nanochat's engine:

- **Grammar, not a mask callback.** After the conditioning prefix the continuation is fixed up to
  the sampled ids (see :meth:`TokenLayout.image_tokens`)::

      BOI "h*w" <|image token|>   (w visual, EOL) x h   EOF EOI   text ... EOS

  Forced tokens are never sampled: the image header is appended to the prefix before the
  prefill, and the EOL that ends a row (plus EOF, EOI after the last row) is fed *together with*
  the last sampled code of the row in one multi-token forward. At a code position only the
  visual slice of the logits is looked at, at a text position only the text ids (plus EOS) — so
  the grid can never be malformed. Modes: ``joint`` (image then text), ``image`` (stop after
  EOI), ``text`` (the prefix already ends with the follow-up image; text only).
- **Prefix computed once.** Every distinct prefix (the prior + prompt of a request, the null
  prefix of classifier-free guidance, shared by all requests) is prefilled once at batch size 1;
  its keys / values are then copied into one left-padded batch cache, one row per
  (request, sample) and, with CFG, one unconditional row per conditional row. Rotary
  embeddings are applied before keys are cached, so a row keeps its own positions; padding is
  hidden by the 2-D attention mask and explicit ``position_ids``.
- **Batched CFG.** Conditional rows ``[0, B)`` and unconditional rows ``[B, 2B)`` run in one forward;
  the sampled id of row ``i`` is fed to both ``i`` and ``B + i``. Logits are combined as
  ``uncond + s * (cond - uncond)`` (LlamaGen). Emu3's reference combines log-softmaxed scores;
  the two differ by a constant per row, so greedy ids and sampling distributions are identical.
  After the image the unconditional rows are dropped unless a text scale != 1 is asked for.
- **Dual guidance** (InstructPix2Pix's two scales): a third group of rows ``[2B, 3B)`` continues the
  prior-only prefix (prior image, no prompt), and image logits become
  ``uncond + s_image * (prior_only - uncond) + s_prompt * (cond - prior_only)``: ``s_image`` says
  how strongly the counterfactual follows the prior, ``s_prompt`` how strongly it follows the prompt
  on top of it. With ``s_prompt == s_image`` the prior-only logits cancel and it is single CFG.
- **Rows leave when done.** A row that samples EOS is removed from the batch (cache rows too);
  left padding common to all remaining rows is trimmed.
- **Seeds per row.** Sample ``k`` of a request with seed ``s`` draws from its own
  ``torch.Generator`` seeded from ``(s, k)``, so a result does not depend on what else was in
  the batch, and the same seed gives the same output.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from progemu.model.layout import MODES, TokenLayout

__all__ = ["SamplingSettings", "SamplerOutput", "ConstrainedSampler", "row_seed", "allowed_text_ids"]


@dataclasses.dataclass
class SamplingSettings:
    """How to pick each free token (saved in every ``result.json``).

    ``temperature``: > 0 samples from ``softmax(logits / T)``; 0 means greedy (argmax).
    ``top_k``: keep the k most likely allowed ids (0 = off; Emu3 / ProgEmu use 2048).
    ``top_p``: nucleus sampling, keep the smallest set with probability >= p (1.0 = off).
    ``cfg_scale``: classifier-free guidance scale on image tokens (1.0 = off; Emu3-Gen uses 3).
    ``cfg_text_scale``: the same on interpretation tokens (1.0 = off, default: the released model
    was not guided on text).
    ``max_text_tokens``: cap on interpretation tokens including the final EOS (official: ~196).
    ``text_temperature``: temperature for interpretation tokens only (``None`` = ``temperature``;
    0 = greedy text). A small model's interpretation is most faithful when decoded greedily,
    while its image still benefits from sampling, so evaluation may set the two apart.
    ``cfg_prompt_scale``: ``None`` = single guidance (``cfg_scale`` on prior + prompt together);
    a number = dual guidance on image tokens, ``cfg_scale`` for the prior and this scale for the prompt
    (see the module docstring). Needs a model trained with prompt-only dropout
    (``progemu train --prompt-only-dropout``): otherwise the prior-only branch was never seen.
    ``anchor``: logit bonus (nats, >= 0) for the prior's code at the same cell of the counterfactual
    (0 = off). A counterfactual should be the patient's own radiograph with only the asked-for
    change: where the model is unsure, the bonus keeps the prior's code; where the prompt calls for
    a change the model's own preference still wins once it exceeds the bonus.
    """

    temperature: float = 1.0
    top_k: int = 2048
    top_p: float = 1.0
    cfg_scale: float = 1.0
    cfg_text_scale: float = 1.0
    max_text_tokens: int = 196
    text_temperature: float | None = None
    anchor: float = 0.0
    cfg_prompt_scale: float | None = None

    def for_text(self) -> "SamplingSettings":
        """The settings that apply to interpretation tokens."""
        if self.text_temperature is None:
            return self
        return dataclasses.replace(self, temperature=self.text_temperature)

    def validate(self) -> "SamplingSettings":
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.text_temperature is not None and not (self.text_temperature >= 0 and math.isfinite(self.text_temperature)):
            raise ValueError(f"text_temperature must be None or a finite number >= 0, got {self.text_temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("cfg_scale", "cfg_text_scale", "cfg_prompt_scale"):
            value = getattr(self, name)
            if value is None and name == "cfg_prompt_scale":
                continue
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if not (self.anchor >= 0 and math.isfinite(self.anchor)):
            raise ValueError(f"anchor must be a finite number >= 0 (0 = off), got {self.anchor}")
        if self.max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")
        return self


@dataclasses.dataclass
class SamplerOutput:
    """What :meth:`ConstrainedSampler.generate` returns.

    ``sequences[r][k]``: the continuation (python ints) generated after prefix ``r`` for sample
    ``k``; joint / image mode: the full ``IMG(...)`` (header included), then text ids and EOS if
    sampled; text mode: text ids (+ EOS). ``timings``: seconds (``prefill_s``, ``decode_s``)
    and counts (``forwards``, ``sampled_tokens``, ``total_tokens``). ``logits_trace`` (only when
    asked): for every sampling step, ``(continuation index, float32 logits [R, V])`` of the
    conditional rows *before* guidance, with ``R`` the rows active at that step, and
    ``(rows, ...)`` the original row ids (``r * samples + k``) of those rows.
    """

    sequences: list[list[list[int]]]
    timings: dict[str, float]
    logits_trace: list[tuple[int, list[int], torch.Tensor]] | None = None


def row_seed(seed: int, sample: int) -> int:
    """The 63-bit seed of sample ``sample`` of a request with seed ``seed`` (independent streams)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(sample)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def allowed_text_ids(layout: TokenLayout) -> list[int]:
    """Ids allowed in the interpretation: every text id except the image / sequence specials, plus EOS."""
    banned = {layout.bos_id, layout.pad_id, layout.eol_id, layout.eof_id, layout.boi_id, layout.eoi_id,
              layout.image_token_id}
    return [i for i in range(layout.text_vocab_size) if i not in banned]


class _Batch:
    """Mutable decoding state: the shared cache, padding mask, next positions and row bookkeeping.

    Rows ``[0, B)`` are conditional; with ``groups >= 2``, rows ``[B, 2B)`` are their unconditional
    twins and with ``groups == 3`` rows ``[2B, 3B)`` their prior-only twins (same order).
    ``rows[i]`` is the original row id of conditional row ``i``.
    """

    def __init__(self, cache: Any, mask: torch.Tensor | None, next_pos: torch.Tensor, rows: torch.Tensor,
                 groups: int, logits: torch.Tensor, static: bool = False):
        self.cache = cache
        self.static = static  # a preallocated StaticCache: the mask spans its full length and never grows
        self.mask = mask  # bool [R, cache length] or None when no row is padded
        self.next_pos = next_pos  # long [R]
        self.rows = rows  # long [B]
        self.groups = groups
        self.logits = logits  # float32 [R, V]: next-token logits of every row

    @property
    def size(self) -> int:
        return int(self.rows.numel())

    @property
    def guided(self) -> bool:
        return self.groups > 1

    def select(self, keep: torch.Tensor, groups: int | None = None) -> None:
        """Keep conditional rows ``keep`` (indices into ``[0, B)``) and their twins of the first ``groups`` groups."""
        batch = self.size
        self.groups = min(self.groups, groups or self.groups)
        index = torch.cat([keep + g * batch for g in range(self.groups)])
        if index.numel() != self.logits.shape[0] or not torch.equal(index, torch.arange(index.numel(), device=index.device)):
            if self.static:  # StaticLayer has no batch_select_indices; a rare copy is fine (nothing is compiled here)
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[index], layer.values[index]
                    layer.batch_size = int(index.numel())
            else:
                self.cache.batch_select_indices(index)
            self.next_pos = self.next_pos[index]
            self.logits = self.logits[index]
            if self.mask is not None:
                self.mask = self.mask[index]
        self.rows = self.rows[keep]
        self._trim_left_padding()

    def _trim_left_padding(self) -> None:
        """Drop cache columns that are padding for every remaining row (attention over them is wasted)."""
        if self.mask is None:
            return
        if self.static:
            if bool(self.mask.all()):
                self.mask = None
            return
        valid_any = self.mask.any(dim=0)
        first = int(torch.nonzero(valid_any)[0, 0]) if bool(valid_any.any()) else 0
        if first > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            self.mask = self.mask[:, first:]
        if bool(self.mask.all()):
            self.mask = None


class ConstrainedSampler:
    """Generates ProgEmu continuations with a transformers causal LM (e.g. ``Emu3ForCausalLM``).

    ``model``: any transformers causal LM whose forward accepts ``input_ids``, ``attention_mask``,
    ``position_ids``, ``cache`` and ``logits_to_keep`` (Emu3 / Llama family), in eval mode.
    ``layout``: the checkpoint's token layout (special ids, grid, visual id range).
    ``cache``: ``"dynamic"`` (transformers' ``DynamicCache``: grows by concatenation, cheapest for
    short sequences on CPU), ``"static"`` (``StaticCache`` preallocated for prefix + continuation:
    no per-step copy of the whole cache, which dominates at Emu3 scale on a GPU) or ``"auto"``
    (static on CUDA, dynamic elsewhere).
    """

    def __init__(self, model: Any, layout: TokenLayout, cache: str = "auto"):
        if cache not in ("auto", "dynamic", "static"):
            raise ValueError(f"cache must be 'auto', 'dynamic' or 'static', got {cache!r}")
        if int(model.config.vocab_size) < layout.vocab_size:
            raise ValueError(f"model vocab_size {model.config.vocab_size} is smaller than the layout's {layout.vocab_size}; "
                             "the checkpoint and its progemu.json do not belong together")
        self.model = model
        self.layout = layout
        self.device = next(model.parameters()).device
        self.static_cache = cache == "static" or (cache == "auto" and self.device.type == "cuda")
        vocab = int(model.config.vocab_size)
        text = torch.zeros(vocab, dtype=torch.bool)
        text[allowed_text_ids(layout)] = True
        self._text_blocked = (~text).to(self.device)  # True where an interpretation token may not go
        self._visual = slice(layout.visual_offset, layout.visual_offset + layout.codebook_size)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def generate(self, prefixes: Sequence[Sequence[int]], *, mode: str = "joint", samples: int = 1,
                 seeds: Sequence[int] | int = 0, settings: SamplingSettings | None = None,
                 null_prefixes: Sequence[Sequence[int]] | None = None, keep_unconditional: bool = False,
                 record_logits: bool = False, progress: Callable[[int, int, str], Any] | None = None,
                 anchor_codes: Sequence[Any] | None = None,
                 prior_prefixes: Sequence[Sequence[int]] | None = None) -> SamplerOutput:
        """Continue each prefix ``samples`` times in one batch.

        ``prefixes``: conditioning prefixes (``layout.prefix(...)``), one per request.
        ``null_prefixes``: unconditional prefixes for CFG, one per request (default
        ``layout.null_prefix()``; text mode needs them, they hold the follow-up image).
        ``seeds``: one per request (or one int for all). ``keep_unconditional``: run the guided
        batch even at scale 1 (to check that guidance at scale 1 equals no guidance).
        ``prior_prefixes``: prior-only prefixes (``layout.prefix(prior, [])``), one per request; needed
        by dual guidance (``settings.cfg_prompt_scale`` set), which the image part of joint / image mode uses.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        settings = (settings or SamplingSettings()).validate()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        prefixes = [list(map(int, p)) for p in prefixes]
        if not prefixes or any(len(p) == 0 for p in prefixes):
            raise ValueError("generate: every request needs a non-empty prefix")
        seeds = [int(seeds)] * len(prefixes) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
        if len(seeds) != len(prefixes):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prefixes)} prefixes")
        # the unconditional rows are needed only where a scale != 1 applies (image part, text part or both)
        dual = mode != "text" and settings.cfg_prompt_scale is not None
        guided = keep_unconditional or dual or {"joint": settings.cfg_scale != 1.0 or settings.cfg_text_scale != 1.0,
                                                "image": settings.cfg_scale != 1.0, "text": settings.cfg_text_scale != 1.0}[mode]
        if dual:
            if prior_prefixes is None or len(prior_prefixes) != len(prefixes):
                raise ValueError("generate: dual guidance (cfg_prompt_scale) needs the prior-only prefixes "
                                 "(prior_prefixes), one per request")
            prior_prefixes = [list(map(int, p)) for p in prior_prefixes]
        if guided:
            if null_prefixes is None:
                if mode == "text":
                    raise ValueError("generate: text mode with CFG needs null_prefixes (they hold the follow-up image)")
                null_prefixes = [self.layout.null_prefix()] * len(prefixes)
            null_prefixes = [list(map(int, p)) for p in null_prefixes]
            if len(null_prefixes) != len(prefixes):
                raise ValueError(f"generate: {len(null_prefixes)} null prefixes for {len(prefixes)} prefixes")

        anchors = None
        if settings.anchor > 0 and mode != "text":
            if anchor_codes is None or len(anchor_codes) != len(prefixes):
                raise ValueError("generate: anchor > 0 needs the prior's codes (anchor_codes), one per request")
            anchors = torch.stack([torch.as_tensor(np.asarray(c), dtype=torch.long) for c in anchor_codes]).to(self.device)
            if tuple(anchors.shape[1:]) != tuple(self.layout.grid):
                raise ValueError(f"generate: anchor_codes have shape {tuple(anchors.shape[1:])}, the layout grid is {self.layout.grid}")
            anchors = anchors.repeat_interleave(samples, dim=0)  # one per (request, sample) row
        header = self.layout.image_header() if mode != "text" else []
        row_prefixes = [p + header for p in prefixes for _ in range(samples)]
        if guided:
            row_prefixes += [p + header for p in null_prefixes for _ in range(samples)]
        if dual:
            row_prefixes += [p + header for p in prior_prefixes for _ in range(samples)]
        n_rows = len(prefixes) * samples
        generators = [self._generator(row_seed(seeds[r], k)) for r in range(len(prefixes)) for k in range(samples)]
        sequences: list[list[int]] = [list(header) for _ in range(n_rows)]
        trace: list | None = [] if record_logits else None
        timings = {"prefill_s": 0.0, "decode_s": 0.0, "forwards": 0, "sampled_tokens": 0, "total_tokens": 0}

        new_tokens = {"joint": self.layout.image_body_length + settings.max_text_tokens,
                      "image": self.layout.image_body_length, "text": settings.max_text_tokens}[mode]
        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        longest = max(self._next_position(p) for p in row_prefixes)
        if limit and longest + new_tokens > limit:
            raise ValueError(f"generate: a prefix reaching position {longest} plus up to {new_tokens} generated tokens exceeds "
                             f"the model's {limit} positions; shorten the prompt or lower max_text_tokens")
        start = self._now()
        batch = self._prefill(row_prefixes, n_rows, 3 if dual else 2 if guided else 1, timings, new_tokens)
        timings["prefill_s"] = self._now() - start
        start = self._now()
        h, w = self.layout.grid
        image_steps = 0 if mode == "text" else h * w
        total_steps = image_steps + (0 if mode == "image" else settings.max_text_tokens)
        report = (lambda done, what: progress(done, total_steps, what)) if progress is not None else None
        if mode != "text":
            self._decode_image(batch, sequences, generators, settings, mode, trace, timings, report, anchors)
        if mode != "image":
            # the prior-only rows serve the image only; the unconditional ones serve text guidance
            text_guided = settings.cfg_text_scale != 1.0 or keep_unconditional
            batch.select(torch.arange(batch.size, device=self.device), groups=2 if text_guided else 1)
            self._decode_text(batch, sequences, generators, settings, trace, timings, report, image_steps)
        if report is not None:
            report(total_steps, "done")
        timings["decode_s"] = self._now() - start
        timings["total_tokens"] = sum(len(s) for s in sequences)
        nested = [sequences[r * samples:(r + 1) * samples] for r in range(len(prefixes))]
        return SamplerOutput(sequences=nested, timings=timings, logits_trace=trace)

    # ----------------------------------------------------------------- prefill
    def _prefill(self, row_prefixes: list[list[int]], n_cond: int, groups: int, timings: dict, new_tokens: int) -> _Batch:
        """Run every distinct prefix once (batch 1) and copy its keys / values into a left-padded batch cache.

        ``new_tokens``: the most tokens the continuation can still feed (sizes a static cache).
        """
        from transformers import DynamicCache, StaticCache

        unique: dict[tuple[int, ...], int] = {}
        for prefix in row_prefixes:
            unique.setdefault(tuple(prefix), len(unique))
        states: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]] = []
        for prefix in unique:
            ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
            if self.layout.aligned:
                # a jump in positions needs an explicit mask, or transformers reads it as packed sequences
                positions = torch.from_numpy(self.layout.position_ids(prefix)).to(self.device)[None]
                out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                                 use_cache=True, logits_to_keep=1)
            else:
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            timings["forwards"] += 1
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            layers = [(layer.keys, layer.values) for layer in cache.layers]
            states.append((layers, out.logits[0, -1].float()))
        lengths = [len(p) for p in row_prefixes]
        longest = max(lengths)
        which = [unique[tuple(p)] for p in row_prefixes]
        n_rows = len(row_prefixes)
        capacity = longest + new_tokens
        if self.static_cache:
            batch_cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        else:
            batch_cache = DynamicCache(config=self.model.config)
        for layer_idx in range(len(states[0][0])):
            k0, v0 = states[0][0][layer_idx]
            keys = k0.new_zeros((n_rows, k0.shape[1], longest, k0.shape[3]))
            values = v0.new_zeros((n_rows, v0.shape[1], longest, v0.shape[3]))
            for row, (u, length) in enumerate(zip(which, lengths)):
                k, v = states[u][0][layer_idx]
                keys[row, :, longest - length:] = k[0]
                values[row, :, longest - length:] = v[0]
            batch_cache.update(keys, values, layer_idx)
        mask = None
        if min(lengths) != longest:
            # static: the mask covers the whole preallocated length (slots not yet written are hidden by causality)
            position = torch.arange(capacity if self.static_cache else longest, device=self.device)
            pads = torch.tensor([longest - n for n in lengths], device=self.device)
            mask = position[None, :] >= pads[:, None]
        logits = torch.stack([states[u][1] for u in which])
        next_pos = torch.tensor([self._next_position(p) for p in row_prefixes], dtype=torch.long, device=self.device)
        return _Batch(batch_cache, mask, next_pos, torch.arange(n_cond, device=self.device), groups, logits,
                      static=self.static_cache)

    # ------------------------------------------------------------------ decode
    def decode_n_tokens(self, batch: _Batch, tokens: torch.Tensor, timings: dict) -> None:
        """Feed ``tokens`` (long [B, n], conditional rows; twins get the same) and store the next logits.

        One forward for all ``n`` tokens: forced ids after a sampled one cost no extra step.
        """
        if batch.groups > 1:
            tokens = tokens.repeat(batch.groups, 1)
        n = tokens.shape[1]
        positions = batch.next_pos[:, None] + torch.arange(n, device=self.device)[None, :]
        mask = batch.mask
        if batch.mask is not None and not batch.static:
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.mask.shape[0], n))], dim=1)
            mask = batch.mask
        out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=batch.cache,
                         use_cache=True, logits_to_keep=1)
        timings["forwards"] += 1
        batch.next_pos = batch.next_pos + n
        batch.logits = out.logits[:, -1].float()

    def _guided_logits(self, batch: _Batch, scale: float, trace: list | None, position: int,
                       prompt_scale: float | None = None) -> torch.Tensor:
        """float32 [B, V]: conditional logits, combined with the twins when guided.

        ``prompt_scale`` (dual guidance, needs the prior-only group): see the module docstring.
        """
        size = batch.size
        cond = batch.logits[:size]
        if trace is not None:
            trace.append((position, batch.rows.tolist(), cond.detach().cpu().clone()))
        if batch.groups == 3 and prompt_scale is not None:
            if scale == 1.0 and prompt_scale == 1.0:
                return cond
            uncond, prior_only = batch.logits[size:2 * size], batch.logits[2 * size:]
            return uncond + scale * (prior_only - uncond) + prompt_scale * (cond - prior_only)
        if not batch.guided or scale == 1.0:
            return cond  # exactly the conditional logits (u + 1 * (c - u) may differ from c in the last bit)
        uncond = batch.logits[size:2 * size]
        return uncond + scale * (cond - uncond)

    def _decode_image(self, batch: _Batch, sequences: list[list[int]], generators: list, settings: SamplingSettings,
                      mode: str, trace: list | None, timings: dict, report: Callable | None = None,
                      anchors: torch.Tensor | None = None) -> None:
        layout = self.layout
        h, w = layout.grid
        rows = batch.rows.tolist()
        for r in range(h):
            for c in range(w):
                logits = self._guided_logits(batch, settings.cfg_scale, trace, len(sequences[rows[0]]),
                                             settings.cfg_prompt_scale)
                visual = logits[:, self._visual]
                if anchors is not None:
                    # rows do not leave the batch before the image is complete: row i is still original row rows[i]
                    visual = visual.clone()
                    prior = anchors[batch.rows, r, c]
                    visual[torch.arange(visual.shape[0], device=self.device), prior] += settings.anchor
                codes = self._sample(visual, batch.rows, generators, settings)
                ids = codes + layout.visual_offset
                forced = [layout.eol_id] if c == w - 1 else []
                last = r == h - 1 and c == w - 1
                if last:
                    forced += [layout.eof_id, layout.eoi_id]
                tokens = torch.cat([ids[:, None], torch.tensor([forced] * batch.size, dtype=torch.long,
                                                               device=self.device).reshape(batch.size, len(forced))], dim=1)
                timings["sampled_tokens"] += batch.size
                for i, row in enumerate(rows):
                    sequences[row].extend(tokens[i].tolist())
                if report is not None and c == w - 1:
                    report((r + 1) * w, f"image row {r + 1}/{h}")
                if last and mode == "image":
                    return  # nothing follows the image: no forward needed
                self.decode_n_tokens(batch, tokens, timings)

    def _decode_text(self, batch: _Batch, sequences: list[list[int]], generators: list, settings: SamplingSettings,
                     trace: list | None, timings: dict, report: Callable | None = None, done_before: int = 0) -> None:
        eos = self.layout.eos_id
        for step in range(settings.max_text_tokens):
            if report is not None and step % 8 == 0:
                report(done_before + step, "interpretation")
            rows = batch.rows.tolist()
            logits = self._guided_logits(batch, settings.cfg_text_scale, trace, len(sequences[rows[0]]))
            logits = logits.masked_fill(self._text_blocked[None, :], float("-inf"))
            ids = self._sample(logits, batch.rows, generators, settings.for_text())
            timings["sampled_tokens"] += batch.size
            ids_list = ids.tolist()
            for row, token in zip(rows, ids_list):
                sequences[row].append(token)
            if step == settings.max_text_tokens - 1:
                break
            running = ids != eos
            if not bool(running.any()):
                break
            if not bool(running.all()):
                keep = torch.nonzero(running)[:, 0]
                batch.select(keep)
                ids = ids[keep]
            self.decode_n_tokens(batch, ids[:, None], timings)

    # ---------------------------------------------------------------- sampling
    def _sample(self, logits: torch.Tensor, rows: torch.Tensor, generators: list, settings: SamplingSettings) -> torch.Tensor:
        """long [B]: one id per row from float32 logits [B, V'] (-inf = not allowed); ids index ``logits``."""
        if settings.temperature == 0:
            return torch.argmax(logits, dim=-1)
        logits = logits / settings.temperature
        if settings.top_k and settings.top_k < logits.shape[-1]:
            kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if settings.top_p < 1.0:
            # transformers' TopPLogitsWarper rule: drop the low tail whose mass is <= 1 - top_p
            sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
            tail = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - settings.top_p
            tail[:, -1] = False  # always keep the most likely id
            logits = logits.masked_fill(tail.scatter(1, order, tail), float("-inf"))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float64)
        cdf = probs.cumsum(dim=-1)
        # inverse-CDF sampling with one uniform per row from that row's own generator
        uniform = torch.stack([torch.rand((), generator=generators[int(i)], device=self.device, dtype=torch.float64)
                               for i in rows.tolist()])
        ids = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).squeeze(1)
        ids = ids.clamp_(max=logits.shape[-1] - 1)
        # rounding can land on a zero-probability id at the edge of a masked run: step to the nearest allowed one
        bad = probs.gather(1, ids[:, None]).squeeze(1) == 0
        if bool(bad.any()):
            ids[bad] = torch.argmax(probs[bad], dim=-1)
        return ids

    # ----------------------------------------------------------------- helpers
    def _next_position(self, prefix: Sequence[int]) -> int:
        """The position the first token after ``prefix`` gets (its length, unless the layout is aligned)."""
        if not self.layout.aligned:
            return len(prefix)
        return int(self.layout.position_ids(prefix)[-1]) + 1

    def _generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()
