"""progemu: interpretable counterfactual generation for chest X-rays (ProgEmu).

Importing this package is cheap: heavy modules (torch, transformers) load lazily
when a public name that needs them is first used.
"""
from __future__ import annotations

__version__ = "0.1.0"

#: public name -> module that defines it (loaded on first access, PEP 562)
_LAZY_EXPORTS = {
    "ProgEmuPipeline": "progemu.generate.pipeline",
    "CascadePipeline": "progemu.generate.pipeline",
    "GenerationResult": "progemu.generate.pipeline",
}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'progemu' has no attribute {name!r}")
