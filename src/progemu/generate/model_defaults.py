"""Where a model comes from and how it samples by default.

**Sampling settings travel with the weights.** A checkpoint's ``progemu.json`` may hold a
``"sampling"`` object: the :class:`~progemu.generate.sampler.SamplingSettings` fields the model
was evaluated with (the committed demo model: ``{"cfg_scale": 3.0, "temperature": 0.7,
"top_k": 64, "text_temperature": 0.0, "anchor": 0.0}``) and, under ``"sampling_note"``, where they come from.
``ProgEmuPipeline.from_pretrained``, ``progemu generate`` and ``progemu serve`` start from these
values; keywords and flags override them one by one; every ``result.json`` records the
settings actually used. Fields missing from ``"sampling"`` keep the official inference
defaults of :class:`SamplingSettings` (temperature 1, top-k 2048, no guidance).

**The packaged demo model.** ``--model demo`` (or ``ProgEmuPipeline.from_pretrained("demo")``)
means the small demo weights shipped inside the progemu package (:data:`DEMO_MODEL_DIR`) unless
a folder named ``demo`` exists in the working directory.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["DEMO_MODEL_DIR", "resolve_model_dir", "read_sampling_defaults", "write_sampling_defaults",
           "SAMPLING_KEY", "SAMPLING_NOTE_KEY"]

log = logging.getLogger(__name__)

#: the small demo model committed with progemu (``progemu demo`` evaluates it)
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo" / "model"
SAMPLING_KEY = "sampling"
SAMPLING_NOTE_KEY = "sampling_note"
_META = "progemu.json"


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """``model`` as a directory; the name ``demo`` (when no such folder exists here) is the packaged demo model."""
    path = Path(model)
    if str(model) == "demo" and not path.exists():
        log.info("using the packaged demo model in %s", DEMO_MODEL_DIR)
        return DEMO_MODEL_DIR
    return path


def _field_names() -> list[str]:
    from .sampler import SamplingSettings

    return [f.name for f in dataclasses.fields(SamplingSettings)]


def read_sampling_defaults(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``"sampling"`` settings saved in ``directory/progemu.json`` (``{}`` when there are none).

    Raises ``ValueError`` naming the file when the object holds unknown fields or invalid values.
    """
    from .sampler import SamplingSettings

    path = Path(directory) / _META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); the checkpoint is damaged") from None
    stored = meta.get(SAMPLING_KEY) or {}
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: \"{SAMPLING_KEY}\" must be an object of sampling settings, got {type(stored).__name__}")
    names = _field_names()
    unknown = sorted(set(stored) - set(names))
    if unknown:
        raise ValueError(f"{path}: unknown sampling setting(s) {unknown} under \"{SAMPLING_KEY}\"; known: {names}. "
                         "Remove them, or use the progemu version that wrote this checkpoint")
    try:
        SamplingSettings(**stored).validate()
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid \"{SAMPLING_KEY}\" settings: {error}") from None
    return dict(stored)


def write_sampling_defaults(directory: str | os.PathLike, settings: dict[str, Any], note: str | None = None) -> Path:
    """Save ``settings`` (SamplingSettings fields) as the defaults of the checkpoint in ``directory``.

    Rewrites ``progemu.json`` atomically, keeping every other key. Returns its path.
    """
    from progemu.utils.atomic import atomic_write_json

    from .sampler import SamplingSettings

    path = Path(directory) / _META
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {_META}; not a progemu checkpoint (train one with `progemu train`)")
    names = _field_names()
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {unknown}; known: {names}")
    SamplingSettings(**settings).validate()
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta[SAMPLING_KEY] = dict(settings)
    if note:
        meta[SAMPLING_NOTE_KEY] = note
    else:
        meta.pop(SAMPLING_NOTE_KEY, None)
    return atomic_write_json(path, meta)
