"""Image tokenizer: the Emu3 VQ-VAE wrapper, domain training, the code cache, evaluation.

``from progemu.tokenizer import ImageTokenizer`` loads torch/transformers only on first
access (PEP 562 ``__getattr__``), so importing the package has no heavy side effects.
"""
from __future__ import annotations

__all__ = ["ImageTokenizer", "TokenizerConfig", "CodeCache", "ensure_codes", "get_preset", "PRESETS"]

_LAZY = {
    "ImageTokenizer": "progemu.tokenizer.vqvae",
    "TokenizerConfig": "progemu.tokenizer.presets",
    "get_preset": "progemu.tokenizer.presets",
    "PRESETS": "progemu.tokenizer.presets",
    "CodeCache": "progemu.tokenizer.cache",
    "ensure_codes": "progemu.tokenizer.cache",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'progemu.tokenizer' has no attribute {name!r}")
