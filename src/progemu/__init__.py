"""progemu: interpretable counterfactual generation for chest X-rays (ProgEmu).

Importing this package is cheap: heavy modules (torch, transformers) load lazily
when a public name that needs them is first used.
"""
from __future__ import annotations

__version__ = "0.1.0"
