"""``GenerationResult``: one request's outputs, and how they are written to disk (the output contract).

``GenerationResult.save(out_dir)`` writes::

    counterfactual.png            (counterfactual_K.png, K = 0..N-1, when N samples were drawn)
    interpretation.txt            the interpretation of sample 0
    difference.png                mean counterfactual - prior, mapped to [0, 1] (0.5 = no change)
    spread.png                    per-pixel standard deviation across samples x 2 (only when N > 1)
    attention/NN_<phrase>.png     one overlay per phrase of the interpretation (sample 0)
    result.json                   prompt, interpretation(s), phrases, maps, settings, seed, timings
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .attention import overlay_map, upsample_map

__all__ = ["GenerationResult", "RESULT_SCHEMA"]

RESULT_SCHEMA = 1


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "phrase"


@dataclasses.dataclass
class GenerationResult:
    """One request's outputs.

    ``prior``: float32 [H, W] in [0, 1] (as given). ``counterfactuals``: N arrays float32 [H, W]
    in [0, 1] at the prior's size (empty for nothing generated). ``interpretation``: text of sample
    0 (``""`` for an image-only model); ``interpretations``: one per sample. ``phrases``: sentences
    (or clauses) of the interpretation. ``attention``: phrase -> float32 [h, w] map (sums to 1) on
    counterfactual 0's code grid; ``attention_mass``: phrase -> mean attention mass on the image
    tokens. ``difference``: float32 [H, W] in [-1, 1], mean counterfactual - prior. ``spread``:
    float32 [H, W] per-pixel std across samples (``None`` when N == 1). ``codes``: int64 [h, w]
    per sample; ``token_ids``: the generated continuation per sample. ``settings``: every setting
    (JSON-ready); ``seed``; ``timings``: seconds.
    """

    prompt: str
    prior: np.ndarray
    counterfactuals: list[np.ndarray]
    interpretation: str
    interpretations: list[str]
    phrases: list[str]
    attention: dict[str, np.ndarray]
    attention_mass: dict[str, float]
    difference: np.ndarray | None
    spread: np.ndarray | None
    codes: list[np.ndarray]
    token_ids: list[list[int]]
    settings: dict[str, Any]
    seed: int
    timings: dict[str, float]

    @property
    def counterfactual(self) -> np.ndarray:
        """The first counterfactual, float32 [H, W]."""
        return self.counterfactuals[0]

    def to_json(self) -> dict[str, Any]:
        """The ``result.json`` document (maps as nested lists, images referenced by file name)."""
        n = len(self.counterfactuals)
        files = ["counterfactual.png"] if n == 1 else [f"counterfactual_{k}.png" for k in range(n)]
        attention = {}
        for index, (phrase, grid_map) in enumerate(self.attention.items()):
            attention[phrase] = {"png": f"attention/{index:02d}_{_slug(phrase)}.png",
                                 "image_mass": self.attention_mass.get(phrase), "map": np.round(grid_map, 6).tolist()}
        from progemu import __version__

        return {
            "schema": RESULT_SCHEMA, "progemu_version": __version__,
            "prompt": self.prompt, "interpretation": self.interpretation, "interpretations": self.interpretations,
            "phrases": self.phrases, "attention": attention,
            "counterfactuals": files, "difference": "difference.png" if self.difference is not None else None,
            "spread": "spread.png" if self.spread is not None else None,
            "prior_size": list(self.prior.shape),
            "difference_mean_abs": None if self.difference is None else float(np.abs(self.difference).mean()),
            "spread_mean": None if self.spread is None else float(self.spread.mean()),
            "generated_tokens": [len(t) for t in self.token_ids],
            "settings": self.settings, "seed": self.seed, "timings": self.timings,
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the output contract (module docstring) into ``out_dir``; every file atomically, result.json last."""
        from PIL import Image

        from progemu.utils.atomic import atomic_save_png, atomic_write_json, atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        document = self.to_json()
        for name, image in zip(document["counterfactuals"], self.counterfactuals):
            atomic_save_png(out / name, image)
        atomic_write_text(out / "interpretation.txt", self.interpretation + ("\n" if self.interpretation else ""))
        if self.difference is not None:
            atomic_save_png(out / "difference.png", np.clip(0.5 + self.difference / 2.0, 0.0, 1.0))
        if self.spread is not None:
            atomic_save_png(out / "spread.png", np.clip(2.0 * self.spread, 0.0, 1.0))
        (out / "attention").mkdir(exist_ok=True)
        for phrase, grid_map in self.attention.items():
            heat = upsample_map(grid_map, self.counterfactuals[0].shape)
            atomic_save_png(out / document["attention"][phrase]["png"], Image.fromarray(overlay_map(self.counterfactuals[0], heat)))
        atomic_write_json(out / "result.json", document)
        return out
