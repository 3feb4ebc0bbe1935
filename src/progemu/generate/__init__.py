"""Generation and interpretation: constrained batched sampling, CFG, KV cache, attention maps.

Modules: :mod:`~progemu.generate.sampler` (the engine, ids only), :mod:`~progemu.generate.reference`
(transformers' ``generate()`` with a prefix constraint, the yardstick), :mod:`~progemu.generate.attention`
(interpretation maps), :mod:`~progemu.generate.pipeline` (``ProgEmuPipeline``, ``CascadePipeline``,
``GenerationResult``), :mod:`~progemu.generate.cli` (``progemu generate``). Importing this package
imports nothing heavy; names below load their module on first access.
"""
from __future__ import annotations

__all__ = ["ProgEmuPipeline", "CascadePipeline", "GenerationResult", "ConstrainedSampler", "SamplingSettings",
           "AttentionSettings", "load_prior"]

_LAZY = {
    "ProgEmuPipeline": "progemu.generate.pipeline",
    "CascadePipeline": "progemu.generate.pipeline",
    "GenerationResult": "progemu.generate.result",
    "load_prior": "progemu.generate.inputs",
    "ConstrainedSampler": "progemu.generate.sampler",
    "SamplingSettings": "progemu.generate.sampler",
    "AttentionSettings": "progemu.generate.attention",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'progemu.generate' has no attribute {name!r}")
