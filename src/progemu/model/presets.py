"""Named ProgEmu model shapes, all of them transformers' ``Emu3ForCausalLM`` (a Llama-like decoder).

=========  ======  ======  =====  ====  ======  =========  =======================================
name       hidden  layers  heads  kv    ffn     positions  for
=========  ======  ======  =====  ====  ======  =========  =======================================
tiny       192     4       4      2     512     1024       2 CPU cores, 128 px images (16x16 codes)
small      512     8       8      4     1408    4096       one small GPU, 256 px (32x32 codes)
base       1024    16      16     8     2816    9216       one GPU, 512 px (64x64 codes)
emu3-8b    4096    32      32     8     14336   9216       Emu3-Gen's shape; init from its weights
=========  ======  ======  =====  ====  ======  =========  =======================================

Small presets get their vocabulary size from the :class:`~progemu.model.layout.TokenLayout`
(BPE + 8 specials + codebook); ``emu3-8b`` keeps Emu3's 184,622. ``attention_dropout`` is 0
for every preset, so a training step is a deterministic function of its batch. The official
fine-tuning differs: it loads the checkpoint's own config (``Emu3Config.from_pretrained``, whose
class default is ``attention_dropout=0.1``), and its fork of the model applies that rate to the
attention weights and also to the embeddings and to each residual branch. docs/paper.md lists
this with the other differences from the paper and the official code.
"""
from __future__ import annotations

import dataclasses

__all__ = ["ModelPreset", "PRESETS", "get_preset", "text_config"]


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """Shape of one ``Emu3TextConfig``; ``vocab_size=None`` = taken from the layout."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float = 1_000_000.0
    vocab_size: int | None = None
    text_tokenizer: str = "bpe"  # "bpe" (trained on the dataset) or "emu3" (from --init / --text-tokenizer)
    bpe_vocab_size: int = 1024


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset("tiny", 192, 4, 4, 2, 512, 1024),
    "small": ModelPreset("small", 512, 8, 8, 4, 1408, 4096, bpe_vocab_size=2048),
    "base": ModelPreset("base", 1024, 16, 16, 8, 2816, 9216, bpe_vocab_size=4096),
    "emu3-8b": ModelPreset("emu3-8b", 4096, 32, 32, 8, 14336, 9216, vocab_size=184622, text_tokenizer="emu3"),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def text_config(preset: ModelPreset | str, layout=None, **overrides):
    """``transformers.Emu3TextConfig`` for ``preset`` with the layout's special ids.

    ``layout`` (a :class:`TokenLayout`) sets ``vocab_size`` (unless the preset fixes it; then
    it must be large enough) and the bos / eos / pad ids saved in ``config.json``.
    """
    from transformers import Emu3TextConfig

    preset = get_preset(preset) if isinstance(preset, str) else preset
    vocab_size = overrides.pop("vocab_size", preset.vocab_size)
    ids = {}
    if layout is not None:
        if vocab_size is None:
            vocab_size = layout.vocab_size
        elif vocab_size < layout.vocab_size:
            raise ValueError(f"preset {preset.name!r}: vocab_size {vocab_size} is smaller than the layout's {layout.vocab_size}")
        ids = {"bos_token_id": layout.bos_id, "eos_token_id": layout.eos_id, "pad_token_id": layout.pad_id}
    if vocab_size is None:
        raise ValueError(f"preset {preset.name!r} takes its vocab_size from a TokenLayout; pass layout=")
    kwargs = dict(
        vocab_size=int(vocab_size),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rope_theta},
        attention_dropout=0.0,
        tie_word_embeddings=False,
        **ids,
    )
    kwargs.update(overrides)
    return Emu3TextConfig(**kwargs)
