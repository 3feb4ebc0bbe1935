"""The ProgEmu token layout: one object that owns every special id and builds / parses sequences.

A training sequence (the paper, Fig. 2; Emu3's image layout, formats.md §4)::

    BOS IMG(prior) prompt IMG(follow-up) interpretation EOS

with one image ``IMG(codes[h, w])`` written exactly as Emu3 writes it::

    BOI  "h*w"  <|image token|>  (w visual ids, EOL) x h  EOF  EOI

where ``"h*w"`` is the *text* "64*64" tokenised by the text tokenizer (``size_text_ids``),
a visual id is ``visual_offset + code`` and code ``k`` is the token ``<|visual token 00000k|>``.

Token names are Emu3's, so that the real Emu3 tokenizer yields Emu3's real ids
(BOS ``<|extra_203|>`` = 151849, EOS ``<|extra_204|>`` = 151850, pad ``<|endoftext|>`` = 151643,
EOL ``<|extra_200|>`` = 151846, EOF ``<|extra_201|>`` = 151847, ``<|image token|>`` = 151851,
BOI ``<|image start|>`` = 151852, EOI ``<|image end|>`` = 151853, visual offset 151854).
Small presets use a compact vocabulary with the same names: text BPE ids, then the specials,
then ``codebook_size`` visual tokens (see :mod:`progemu.model.text_tokenizer`).

Modes (the paper's ProgEmu and the two halves of its ProgEmu² ablation):

========  =========================================  ===================================
mode      conditioning prefix                         target (loss part)
========  =========================================  ===================================
joint     BOS IMG(prior) prompt                       IMG(follow-up) interpretation EOS
image     BOS IMG(prior) prompt                       IMG(follow-up) EOS
text      BOS IMG(prior) prompt IMG(follow-up)        interpretation EOS
========  =========================================  ===================================

**Null (unconditional) prefix** for prompt dropout in training and classifier-free guidance at
inference: the prior image *and* the prompt are removed entirely, leaving ``[BOS]`` (text mode
keeps the follow-up image: ``[BOS] IMG(follow-up)``). This mirrors Emu3's own ``null_prompt``
(an empty prompt string after BOS) and is the same list in training and generation, so the
unconditional branch at inference sees exactly the sequences it was trained on. Positions of the
target tokens therefore differ between the conditional and null branches; with rotary
embeddings only relative positions matter, and the generation engine left-pads the shorter one.

**Positions.** ``followup_position == 0`` (the paper, and what converted official weights use):
positions count tokens, so the follow-up image starts after a prompt of variable length.
``followup_position = P > 0`` (*aligned*): the follow-up's BOI always sits at position ``P``, so
follow-up token (row i, column j) is exactly ``P - 1`` positions after prior token (i, j) in every
pair (the prior's BOI is at position 1). With rotary embeddings that constant offset lets a small
model learn "look at the same place in the prior". Everything before the follow-up keeps
increasing positions; text after it continues from the image. :meth:`TokenLayout.position_ids`
computes them; callers must pass an explicit 2-D attention mask with them, because transformers
reads a jump in ``position_ids`` without a mask as several packed sequences.

Generation: the image header (``BOI "h*w" <|image token|>``) is deterministic, so a generator may
either let the model produce it or force it with :meth:`TokenLayout.image_header`; inside the
image body the layout is fixed (:meth:`TokenLayout.image_body_forced_id` tells which positions
must be EOL / EOF / EOI). :meth:`TokenLayout.parse` accepts the generated continuation in both
forms (with or without the header).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["TokenLayout", "SPECIAL_TOKEN_NAMES", "visual_token_name", "IGNORE_INDEX", "MODES", "LOSS_ON"]

#: label value ignored by ``torch.nn.CrossEntropyLoss`` / transformers' causal-LM loss
IGNORE_INDEX = -100
MODES = ("joint", "image", "text")
LOSS_ON = ("target", "all")

#: role -> Emu3's token name
SPECIAL_TOKEN_NAMES: dict[str, str] = {
    "pad": "<|endoftext|>",
    "eol": "<|extra_200|>",
    "eof": "<|extra_201|>",
    "bos": "<|extra_203|>",
    "eos": "<|extra_204|>",
    "image_token": "<|image token|>",
    "boi": "<|image start|>",
    "eoi": "<|image end|>",
}


def visual_token_name(code: int) -> str:
    """Emu3's name of the visual token for codebook entry ``code`` (``<|visual token 000123|>``)."""
    return f"<|visual token {int(code):06d}|>"


def _as_codes(codes: Any, where: str) -> np.ndarray:
    """int64 [h, w] numpy array from a numpy array, torch tensor or nested list."""
    if hasattr(codes, "detach"):  # torch tensor, without importing torch here
        codes = codes.detach().cpu().numpy()
    array = np.asarray(codes)
    if array.ndim != 2:
        raise ValueError(f"{where}: image codes must have shape [h, w], got shape {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where}: image codes must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _as_ids(ids: Any) -> list[int]:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().tolist()
    return [int(i) for i in ids]


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Every special id of a ProgEmu vocabulary plus the image grid; builds and parses sequences.

    Ids below ``visual_offset`` are text (BPE + specials); ids in
    ``[visual_offset, visual_offset + codebook_size)`` are visual tokens. ``text_vocab_size``
    equals ``visual_offset`` (the number of non-visual ids) and ``vocab_size`` is the minimum
    embedding size a model needs.
    """

    grid_h: int
    grid_w: int
    codebook_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    eol_id: int
    eof_id: int
    boi_id: int
    eoi_id: int
    image_token_id: int
    visual_offset: int
    size_text_ids: tuple[int, ...]
    text_vocab_size: int
    followup_position: int = 0  # 0 = sequential positions; P > 0 = aligned (the follow-up's BOI at position P)

    def __post_init__(self) -> None:
        if self.grid_h <= 0 or self.grid_w <= 0:
            raise ValueError(f"TokenLayout: grid must be positive, got {self.grid_h}x{self.grid_w}")
        if self.codebook_size <= 0:
            raise ValueError(f"TokenLayout: codebook_size must be positive, got {self.codebook_size}")
        object.__setattr__(self, "size_text_ids", tuple(int(i) for i in self.size_text_ids))
        if not self.size_text_ids:
            raise ValueError("TokenLayout: size_text_ids (the tokenised text 'h*w') is empty")
        specials = self.special_ids
        if len(set(specials.values())) != len(specials):
            raise ValueError(f"TokenLayout: special ids must be distinct, got {specials}")
        for name, value in specials.items():
            if not 0 <= value < self.visual_offset:
                raise ValueError(f"TokenLayout: {name}_id={value} must lie below visual_offset={self.visual_offset}")
        if self.followup_position < 0 or (self.followup_position and self.followup_position <= self.image_length + 1):
            raise ValueError(f"TokenLayout: followup_position={self.followup_position} must be 0 (sequential) or leave room "
                             f"for BOS and the prior image (> {self.image_length + 1})")
        if any(not 0 <= i < self.visual_offset for i in self.size_text_ids):
            raise ValueError(f"TokenLayout: size_text_ids {self.size_text_ids} must be text ids (< {self.visual_offset})")

    # ------------------------------------------------------------------ ids
    @property
    def special_ids(self) -> dict[str, int]:
        """role -> id for the eight special tokens (``bos``, ``eos``, ``pad``, ``eol``, ...)."""
        return {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, "eol": self.eol_id,
                "eof": self.eof_id, "boi": self.boi_id, "eoi": self.eoi_id, "image_token": self.image_token_id}

    @property
    def vocab_size(self) -> int:
        """Smallest embedding / lm-head size that covers every id of this layout."""
        return self.visual_offset + self.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return (self.grid_h, self.grid_w)

    def is_visual(self, token_id: int) -> bool:
        return self.visual_offset <= int(token_id) < self.visual_offset + self.codebook_size

    @property
    def image_header_length(self) -> int:
        """Tokens before the first visual id: BOI + "h*w" + image token."""
        return 2 + len(self.size_text_ids)

    @property
    def image_body_length(self) -> int:
        """Tokens after the header: h rows of (w visual + EOL), then EOF, EOI."""
        return self.grid_h * (self.grid_w + 1) + 2

    @property
    def image_length(self) -> int:
        """Total tokens of one ``IMG(codes)``; 4,170 for Emu3's 64x64 grid."""
        return self.image_header_length + self.image_body_length

    # --------------------------------------------------------- positions
    @property
    def aligned(self) -> bool:
        """True when the follow-up image sits at a fixed position (see the module docstring)."""
        return self.followup_position > 0

    @property
    def prompt_budget(self) -> int:
        """Aligned layouts: the most prompt tokens that fit before the follow-up (0 when sequential)."""
        return max(0, self.followup_position - 1 - self.image_length) if self.aligned else 0

    def with_positions(self, positions: str, prompt_budget: int = 128) -> "TokenLayout":
        """This layout with ``positions`` = ``"sequential"`` or ``"aligned"`` (room for ``prompt_budget`` prompt tokens)."""
        if positions == "sequential":
            return dataclasses.replace(self, followup_position=0)
        if positions != "aligned":
            raise ValueError(f"positions must be 'sequential' or 'aligned', got {positions!r}")
        if prompt_budget < 1:
            raise ValueError(f"prompt_budget must be >= 1, got {prompt_budget}")
        return dataclasses.replace(self, followup_position=1 + self.image_length + int(prompt_budget))

    @property
    def positions(self) -> str:
        return "aligned" if self.aligned else "sequential"

    def position_ids(self, ids: Sequence[int]) -> np.ndarray:
        """int64 [len(ids)]: the rotary position of every token of a sequence that holds the follow-up image.

        Sequential layouts: ``0 .. n-1``. Aligned layouts: increasing up to the follow-up's BOI (the
        last BOI of the sequence: every training sequence and every generation prefix with its image
        header ends the conditioning with the follow-up's start), which gets ``followup_position``;
        increasing again from there. Raises ``ValueError`` when the prompt overruns its budget.
        """
        ids = _as_ids(ids)
        positions = np.arange(len(ids), dtype=np.int64)
        if not self.aligned:
            return positions
        starts = [i for i, token in enumerate(ids) if token == self.boi_id]
        if not starts:
            raise ValueError("position_ids: an aligned layout needs the follow-up image (no BOI in the sequence)")
        start = starts[-1]
        if start > self.followup_position:
            raise ValueError(f"position_ids: the prompt is {start - 1 - self.image_length} tokens, more than the "
                             f"{self.prompt_budget} this checkpoint's aligned layout leaves room for; shorten the prompt")
        positions[start:] = self.followup_position + np.arange(len(ids) - start)
        return positions

    # ------------------------------------------------------------ images
    def image_header(self) -> list[int]:
        """``[BOI, *size_text_ids, image_token]``: the deterministic start of every image."""
        return [self.boi_id, *self.size_text_ids, self.image_token_id]

    def image_tokens(self, codes: Any) -> list[int]:
        """``IMG(codes)``: header, h rows of w visual ids each followed by EOL, then EOF, EOI.

        ``codes``: int [h, w] (numpy, torch or nested list), values in ``[0, codebook_size)``,
        shape must equal the layout's grid.
        """
        array = _as_codes(codes, "image_tokens")
        if array.shape != self.grid:
            raise ValueError(f"image_tokens: codes have shape {tuple(array.shape)} but the layout grid is {self.grid}; "
                             "encode images at the image tokenizer's native size")
        if array.size and (array.min() < 0 or array.max() >= self.codebook_size):
            raise ValueError(f"image_tokens: codes must lie in [0, {self.codebook_size}), got [{array.min()}, {array.max()}]")
        body = np.empty((self.grid_h, self.grid_w + 1), dtype=np.int64)
        body[:, : self.grid_w] = array + self.visual_offset
        body[:, self.grid_w] = self.eol_id
        return self.image_header() + body.reshape(-1).tolist() + [self.eof_id, self.eoi_id]

    def image_body_forced_id(self, position: int) -> int | None:
        """For constrained decoding: the id forced at ``position`` of the image body, or ``None``.

        ``position`` counts tokens after the header (0 = first visual token). ``None`` means
        "any visual token"; rows end with EOL at positions ``w, 2w+1, ...``; then EOF, EOI.
        """
        if position < 0 or position >= self.image_body_length:
            raise ValueError(f"image_body_forced_id: position {position} outside [0, {self.image_body_length})")
        rows_end = self.grid_h * (self.grid_w + 1)
        if position == rows_end:
            return self.eof_id
        if position == rows_end + 1:
            return self.eoi_id
        return self.eol_id if position % (self.grid_w + 1) == self.grid_w else None

    def codes_from_visual_ids(self, ids: Iterable[int]) -> np.ndarray:
        """int64 [h, w] codes from the visual ids of one image, in row-major order.

        Non-visual ids (EOL, EOF, EOI, header) are skipped, so both a bare list of h*w visual ids
        and a full ``IMG(...)`` are accepted. Raises ``ValueError`` if the count is not h*w.
        """
        visual = [i - self.visual_offset for i in _as_ids(ids) if self.is_visual(i)]
        if len(visual) != self.grid_h * self.grid_w:
            raise ValueError(f"codes_from_visual_ids: got {len(visual)} visual tokens, expected "
                             f"{self.grid_h}*{self.grid_w}={self.grid_h * self.grid_w}")
        return np.asarray(visual, dtype=np.int64).reshape(self.grid_h, self.grid_w)

    # --------------------------------------------------------- sequences
    def prefix(self, prior_codes: Any, prompt_ids: Sequence[int], followup_codes: Any = None) -> list[int]:
        """Conditioning prefix: ``BOS IMG(prior) prompt`` (+ ``IMG(follow-up)`` for text mode)."""
        ids = [self.bos_id, *self.image_tokens(prior_codes), *self._check_text(prompt_ids, "prompt_ids")]
        if followup_codes is not None:
            ids += self.image_tokens(followup_codes)
        return ids

    def null_prefix(self, followup_codes: Any = None) -> list[int]:
        """Unconditional prefix (prompt dropout / CFG): ``[BOS]`` (+ ``IMG(follow-up)`` for text mode).

        Prior image and prompt are removed entirely, as Emu3's empty null prompt; the same
        list is used in training and generation (see the module docstring).
        """
        ids = [self.bos_id]
        if followup_codes is not None:
            ids += self.image_tokens(followup_codes)
        return ids

    def target(self, mode: str, followup_codes: Any = None, interpretation_ids: Sequence[int] = ()) -> list[int]:
        """The loss part of a sequence for ``mode`` (see the module table), ending in EOS."""
        _check_mode(mode)
        if mode in ("joint", "image") and followup_codes is None:
            raise ValueError(f"target: mode {mode!r} needs followup_codes")
        if mode == "joint":
            return [*self.image_tokens(followup_codes), *self._check_text(interpretation_ids, "interpretation_ids"), self.eos_id]
        if mode == "image":
            return [*self.image_tokens(followup_codes), self.eos_id]
        return [*self._check_text(interpretation_ids, "interpretation_ids"), self.eos_id]

    def build(self, prior_codes: Any, prompt_ids: Sequence[int], followup_codes: Any,
              interpretation_ids: Sequence[int], mode: str = "joint", loss_on: str = "target",
              null_condition: bool = False) -> tuple[list[int], list[int]]:
        """One training example ``(input_ids, labels)``, both of the same length.

        ``labels`` equal ``input_ids`` on the target part and :data:`IGNORE_INDEX` (-100)
        elsewhere (``loss_on='target'``, the paper); ``loss_on='all'`` puts the loss on every
        token (the released code). ``labels`` are *not* shifted: transformers' causal-LM loss
        shifts them. ``null_condition=True`` swaps the prefix for :meth:`null_prefix` (prompt
        dropout); ``prior_codes`` / ``prompt_ids`` are then unused.
        """
        _check_mode(mode)
        if loss_on not in LOSS_ON:
            raise ValueError(f"build: loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        if followup_codes is None:
            raise ValueError("build: followup_codes are required in every mode")
        prefix_followup = followup_codes if mode == "text" else None
        if null_condition:
            head = self.null_prefix(prefix_followup)
        else:
            head = self.prefix(prior_codes, prompt_ids, prefix_followup)
        tail = self.target(mode, followup_codes, interpretation_ids)
        input_ids = head + tail
        if loss_on == "all":
            labels = list(input_ids)
        else:
            labels = [IGNORE_INDEX] * len(head) + list(tail)
        return input_ids, labels

    def parse(self, generated_ids: Sequence[int]) -> tuple[np.ndarray | None, list[int]]:
        """Split a generated continuation into ``(codes[h, w] | None, interpretation_ids)``.

        ``generated_ids``: the tokens produced after the conditioning prefix (joint / image
        mode: an image then text; text mode: text only). A leading image header is optional
        (generators may force it). Codes are ``None`` when no complete, well-formed image
        (h rows of exactly w visual ids) is found. Interpretation ids are the text tokens after
        the image (or all text tokens when there is no image) up to the first EOS / pad, with
        special and visual ids removed.
        """
        ids = _as_ids(generated_ids)
        header = self.image_header()
        start = 0
        if ids[: len(header)] == header:
            start = len(header)
        elif ids[:1] == [self.boi_id]:
            start = 1  # tolerate a header whose size text differs; the rows decide
            while start < len(ids) and not self.is_visual(ids[start]) and ids[start] != self.image_token_id:
                start += 1
            if start < len(ids) and ids[start] == self.image_token_id:
                start += 1
        has_image = start > 0 or (len(ids) > 0 and self.is_visual(ids[0]))
        codes: np.ndarray | None = None
        text_start = 0
        if has_image:
            rows: list[list[int]] = []
            current: list[int] = []
            position = start
            end_of_image = len(ids)
            while position < len(ids):
                token = ids[position]
                if self.is_visual(token):
                    current.append(token - self.visual_offset)
                elif token == self.eol_id:
                    rows.append(current)
                    current = []
                elif token in (self.eof_id, self.eoi_id, self.eos_id, self.bos_id, self.boi_id):
                    break
                # other ids inside an image (should not occur) are ignored
                position += 1
            if current:
                rows.append(current)
            if len(rows) == self.grid_h and all(len(row) == self.grid_w for row in rows):
                codes = np.asarray(rows, dtype=np.int64)
            # the text starts after EOI (or after EOF when EOI is missing)
            end_of_image = position
            while end_of_image < len(ids) and ids[end_of_image] in (self.eof_id, self.eoi_id):
                end_of_image += 1
            text_start = end_of_image
        interpretation: list[int] = []
        specials = set(self.special_ids.values())
        for token in ids[text_start:]:
            if token in (self.eos_id, self.pad_id):
                break
            if token in specials or self.is_visual(token):
                continue
            interpretation.append(token)
        return codes, interpretation

    # ------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(cls, text_tokenizer: Any, grid: tuple[int, int] | Sequence[int], codebook_size: int) -> "TokenLayout":
        """Layout for a Hugging Face tokenizer with Emu3's special-token names.

        ``text_tokenizer`` must know the eight specials and the visual tokens
        ``<|visual token 000000|>`` .. ``<|visual token {codebook_size-1:06d}|>`` with
        consecutive ids (true for Emu3's tokenizer and for :mod:`progemu.model.text_tokenizer`).
        """
        grid_h, grid_w = (int(g) for g in grid)
        vocab = text_tokenizer.get_vocab()

        def lookup(name: str) -> int:
            if name not in vocab:
                raise ValueError(f"text tokenizer has no token {name!r}; use Emu3's tokenizer or one built by "
                                 "progemu.model.text_tokenizer.train_text_tokenizer (they carry Emu3's special-token names)")
            return int(vocab[name])

        ids = {role: lookup(name) for role, name in SPECIAL_TOKEN_NAMES.items()}
        visual_offset = lookup(visual_token_name(0))
        last = lookup(visual_token_name(codebook_size - 1))
        if last != visual_offset + codebook_size - 1:
            raise ValueError(f"text tokenizer: visual tokens are not consecutive ({visual_token_name(0)}={visual_offset}, "
                             f"{visual_token_name(codebook_size - 1)}={last})")
        size_text_ids = tuple(text_tokenizer.encode(f"{grid_h}*{grid_w}", add_special_tokens=False))
        return cls(grid_h=grid_h, grid_w=grid_w, codebook_size=int(codebook_size), bos_id=ids["bos"], eos_id=ids["eos"],
                   pad_id=ids["pad"], eol_id=ids["eol"], eof_id=ids["eof"], boi_id=ids["boi"], eoi_id=ids["eoi"],
                   image_token_id=ids["image_token"], visual_offset=visual_offset, size_text_ids=size_text_ids,
                   text_vocab_size=visual_offset)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["size_text_ids"] = list(self.size_text_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TokenLayout":
        names = {f.name for f in dataclasses.fields(cls)}
        data = {"followup_position": 0, **data}  # layouts saved before aligned positions existed are sequential
        unknown = set(data) - names
        missing = names - set(data)
        if unknown or missing:
            raise ValueError(f"TokenLayout.from_dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return cls(**{**data, "size_text_ids": tuple(data["size_text_ids"])})

    # ----------------------------------------------------------- helpers
    def _check_text(self, ids: Sequence[int], name: str) -> list[int]:
        out = _as_ids(ids)
        for token in out:
            if not 0 <= token < self.visual_offset:
                raise ValueError(f"{name}: id {token} is not a text id (must be in [0, {self.visual_offset}))")
        return out


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
