"""Text tokenizers with Emu3's special-token names: Emu3's own, or a small BPE for small presets.

* Emu3 presets read Emu3's tokenizer from a local directory (``AutoTokenizer.from_pretrained``);
  its ids are the real ones (formats.md §4).
* Small presets train a byte-level BPE with Hugging Face ``tokenizers`` on the dataset's own
  prompts and interpretations (vocab ~1-2k). The compact id space is: BPE ids
  ``[0, n_bpe)``, then the eight specials in Emu3's id order (``<|endoftext|>``,
  ``<|extra_200|>``, ``<|extra_201|>``, ``<|extra_203|>``, ``<|extra_204|>``, ``<|image token|>``,
  ``<|image start|>``, ``<|image end|>``), then ``codebook_size`` visual tokens
  ``<|visual token 000000|>``... The result is a ``PreTrainedTokenizerFast`` saved with the
  checkpoint, so ``AutoTokenizer.from_pretrained(ckpt)`` reloads it with transformers alone.

Digits are split one per token (as Qwen / Emu3 do), so the image size text "16*16" is 5 tokens.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from progemu.model.layout import SPECIAL_TOKEN_NAMES, visual_token_name

__all__ = ["train_text_tokenizer", "load_text_tokenizer"]


def train_text_tokenizer(texts: Iterable[str], codebook_size: int, vocab_size: int = 1024,
                         min_frequency: int = 2):
    """Train a byte-level BPE on ``texts`` and append Emu3's specials and visual tokens.

    ``vocab_size`` bounds the BPE part (the 256 byte symbols included); the full vocabulary
    is ``n_bpe + 8 + codebook_size``. Deterministic for the same texts in the same order.
    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_text_tokenizer: no text to train on (are prompts and interpretations empty?)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # specials first (Emu3's relative order), then the visual tokens: consecutive ids by construction
    tokenizer.add_special_tokens(list(SPECIAL_TOKEN_NAMES.values()))
    tokenizer.add_special_tokens([visual_token_name(k) for k in range(int(codebook_size))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIAL_TOKEN_NAMES["bos"],
                                   eos_token=SPECIAL_TOKEN_NAMES["eos"], pad_token=SPECIAL_TOKEN_NAMES["pad"],
                                   clean_up_tokenization_spaces=False)


def load_text_tokenizer(directory: str | os.PathLike):
    """``AutoTokenizer.from_pretrained(directory)`` with a clear error when files are missing.

    For Emu3 use the Hugging Face conversion (e.g. ``Emu3-community/Emu3-Gen-hf``) downloaded
    to a local directory; progemu never downloads weights or tokenizers itself.
    """
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: text tokenizer directory not found; download Emu3's tokenizer "
                                "(huggingface-cli download Emu3-community/Emu3-Gen-hf --local-dir DIR) or use a progemu checkpoint")
    if not any((directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"{directory}: no tokenizer.json / tokenizer_config.json; it does not hold a Hugging Face tokenizer")
    return AutoTokenizer.from_pretrained(str(directory))
