"""``ConvertConfig``: the settings of one ``progemu convert`` run (saved as ``convert.json`` in the output).

The command-line flags are derived from the fields (:func:`progemu.convert.cli.build_parser`):
field ``vision_tokenizer`` is ``--vision-tokenizer``, a ``bool`` field is a switch.

Sampling presets (``sampling``) are written into the output's ``progemu.json`` ``"sampling"``
object, so ``progemu generate`` / ``serve`` / ``ProgEmuPipeline.from_pretrained`` start from them
(see :mod:`progemu.generate.model_defaults`); flags still override them one by one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ConvertConfig", "SAMPLING_PRESETS", "FIELD_HELP"]

#: name -> (SamplingSettings fields, where they come from)
SAMPLING_PRESETS: dict[str, tuple[dict[str, Any], str | None]] = {
    "official": (
        {"temperature": 1.0, "top_k": 2048, "top_p": 1.0, "cfg_scale": 1.0},
        "preset 'official': the official ProgEmu inference settings (Masaaki-75/progemu, scripts/infer.sh running "
        "inference/infer_progemu.py with --do_sample --use_pc_proc: sampling at temperature 1 with top_k=2048, the "
        "image grid forced by a prefix-constrained processor, no classifier-free guidance; its --use_cfg_proc option "
        "uses scale 3, i.e. --cfg 3 here); images 512x512 px = 64x64 codes",
    ),
    "emu3-gen": (
        {"temperature": 1.0, "top_k": 2048, "top_p": 1.0, "cfg_scale": 3.0},
        "preset 'emu3-gen': BAAI's Emu3-Gen example (baaivision/Emu3 image_generation.py): top_k=2048, "
        "classifier-free guidance scale 3",
    ),
    "none": ({}, None),
}

FIELD_HELP = {
    "model": "folder of the language model: BAAI's format (BAAI/Emu3-Gen, the official ProgEmu checkpoint) or "
             "transformers' (Emu3-community/Emu3-Gen-hf)",
    "out": "output folder: a progemu checkpoint (generate, evaluate, serve, train --init load it as it is)",
    "vision_tokenizer": "folder of the vision tokenizer (BAAI/Emu3-VisionTokenizer); not needed when --model holds one "
                        "(transformers' Emu3 format). Without one the output serves only `progemu train --init`",
    "tokenizer": "folder with the text tokenizer (emu3.tiktoken + emu3_vision_tokens.txt, or tokenizer.json), when --model "
                 "has none (checkpoints saved by the official ProgEmu training code: use BAAI/Emu3-Gen)",
    "image_size": "native image size in px of the converted model (the official ProgEmu: 512 = 64x64 codes)",
    "sampling": "sampling settings saved with the model as its defaults: " + ", ".join(SAMPLING_PRESETS)
                + " (default: official)",
    "max_shard_gb": "largest output weight file in GB (bigger models are split into shards)",
    "hash_sources": "record the SHA-256 of every source file (read in the same pass as the copy)",
    "overwrite": "replace a checkpoint already in --out",
}


@dataclasses.dataclass
class ConvertConfig:
    """What to convert and where (paths as given; ``None`` = not given)."""

    model: str = ""
    out: str = ""
    vision_tokenizer: str | None = None
    tokenizer: str | None = None
    image_size: int = 512
    sampling: str = "official"
    max_shard_gb: float = 5.0
    hash_sources: bool = True
    overwrite: bool = False

    def validate(self) -> "ConvertConfig":
        if not self.model or not self.out:
            raise ValueError("ConvertConfig: model and out are required")
        if self.sampling not in SAMPLING_PRESETS:
            raise ValueError(f"sampling must be one of {sorted(SAMPLING_PRESETS)}, got {self.sampling!r}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 px, got {self.image_size}")
        if not self.max_shard_gb > 0:
            raise ValueError(f"max_shard_gb must be > 0, got {self.max_shard_gb}")
        return self
