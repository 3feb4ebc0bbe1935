"""BAAI's Emu3 text tokenizer (tiktoken files) as a ``PreTrainedTokenizerFast`` with the same ids.

BAAI's folder holds two files that define the vocabulary (``Emu3Tokenizer`` in baaivision/Emu3,
``emu3/mllm/tokenization_emu3.py``):

- ``emu3.tiktoken``: one line per byte-level BPE token, ``base64(token bytes) rank``; the rank is
  the token id (Qwen's 151,643 tokens for the real Emu3);
- ``emu3_vision_tokens.txt``: one special token per line (``<|image token|>``, ``<|image start|>``,
  ``<|image end|>``, then ``<|visual token 000000|>`` ...).

Special ids are fixed, not appended: BAAI numbers ``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>`` and then the lines of the vision file
consecutively from id 151643, whatever the BPE size. Text is NFC-normalised, split with Qwen's
pattern (:data:`PAT_STR`; digits one by one) and byte-pair merged by rank; special tokens are
recognised anywhere in the text.

The Hugging Face tokenizer built here reproduces that exactly: ``tokenizers``' BPE model with the
ranks as vocabulary, the merges derived by transformers' ``TikTokenConverter`` (every split of a
token into two lower-ranked tokens, ordered by the token's rank) and ``ignore_merges`` (a piece
that is itself a token is emitted whole, as tiktoken does), an NFC normaliser, a ``Split`` on
:data:`PAT_STR` followed by byte-level mapping, and the special tokens added at BAAI's ids. The
tiktoken file is read here (one base64 token and rank per line), so conversion needs no
``tiktoken`` install; the tests compare the ids with ``tiktoken`` itself.
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from .safetensors_io import WeightFormatError

__all__ = ["PAT_STR", "SPECIAL_START_ID", "FIXED_SPECIALS", "VOCAB_FILE", "VISION_TOKENS_FILE", "is_baai_tokenizer_dir",
           "is_hf_tokenizer_dir", "read_ranks", "read_special_tokens", "build_text_tokenizer", "tokenizer_files"]

PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL_START_ID = 151643
FIXED_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))
VOCAB_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
_HINT = ("BAAI's Emu3 folders (BAAI/Emu3-Gen) hold emu3.tiktoken and emu3_vision_tokens.txt; a checkpoint saved by the "
         "official ProgEmu training code holds none: pass --tokenizer with a local copy of BAAI/Emu3-Gen")


def is_baai_tokenizer_dir(directory: Path) -> bool:
    return (Path(directory) / VOCAB_FILE).is_file()


def is_hf_tokenizer_dir(directory: Path) -> bool:
    return (Path(directory) / "tokenizer.json").is_file()


def tokenizer_files(directory: Path) -> list[Path]:
    """The files that define the tokenizer in ``directory`` (for provenance hashes)."""
    directory = Path(directory)
    names = (VOCAB_FILE, VISION_TOKENS_FILE) if is_baai_tokenizer_dir(directory) else ("tokenizer.json", "tokenizer_config.json")
    return [directory / name for name in names if (directory / name).is_file()]


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """``emu3.tiktoken`` -> ``{token bytes: rank}``; names the line of a damaged file."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise WeightFormatError(f"{path}: line {number} is not 'base64-token rank'; the tokenizer file is damaged: "
                                        "download it again") from None
    if len(set(ranks.values())) != len(ranks):
        raise WeightFormatError(f"{path}: two tokens share a rank; the tokenizer file is damaged: download it again")
    if ranks and max(ranks.values()) >= SPECIAL_START_ID:
        raise WeightFormatError(f"{path}: ranks reach {max(ranks.values())}, into BAAI's special ids (from {SPECIAL_START_ID}); "
                                "not an Emu3 vocabulary")
    return ranks


def read_special_tokens(directory: Path) -> dict[str, int]:
    """BAAI's special tokens and their ids (fixed ones, then the vision file's lines, from 151643)."""
    path = Path(directory) / VISION_TOKENS_FILE
    if not path.is_file():
        raise WeightFormatError(f"{directory}: {VISION_TOKENS_FILE} is missing next to {VOCAB_FILE}; {_HINT}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = FIXED_SPECIALS + tuple(lines)
    if len(set(names)) != len(names):
        raise WeightFormatError(f"{path}: a special token is listed twice; the file is damaged: download it again")
    return {name: SPECIAL_START_ID + index for index, name in enumerate(names)}


def _vocab_and_merges(vocab_path: Path, ranks: dict[bytes, int]):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return ranks

    return _Converter(vocab_file=str(vocab_path), pattern=PAT_STR).extract_vocab_merges_from_model(str(vocab_path))


def build_text_tokenizer(directory: str | os.PathLike, model_max_length: int | None = None):
    """The tokenizer in ``directory`` as a ``transformers.PreTrainedTokenizerFast``.

    BAAI's tiktoken files are converted (see the module docstring); a folder that already holds a
    Hugging Face ``tokenizer.json`` is loaded as it is. Raises :class:`WeightFormatError` when
    the folder holds neither.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    if not is_baai_tokenizer_dir(directory):
        if is_hf_tokenizer_dir(directory):
            return AutoTokenizer.from_pretrained(str(directory))
        raise WeightFormatError(f"{directory}: no text tokenizer ({VOCAB_FILE} or tokenizer.json); {_HINT}")
    vocab_path = directory / VOCAB_FILE
    ranks = read_ranks(vocab_path)
    specials = read_special_tokens(directory)
    vocab, merges = _vocab_and_merges(vocab_path, ranks)
    vocab.update(specials)  # specials sit at BAAI's fixed ids, in the vocabulary itself
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
    model.ignore_merges = True
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    wrong = [name for name, index in specials.items() if tokenizer.token_to_id(name) != index]
    if wrong:  # pragma: no cover - tokenizers keeps ids of tokens already in the vocabulary
        raise RuntimeError(f"special tokens got other ids than BAAI's: {wrong[:3]}")
    kwargs = {} if model_max_length is None else {"model_max_length": int(model_max_length)}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|extra_203|>", eos_token="<|extra_204|>",
                                   pad_token="<|endoftext|>", clean_up_tokenization_spaces=False, **kwargs)
