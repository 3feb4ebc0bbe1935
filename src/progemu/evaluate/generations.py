"""Generations cached on disk, one folder per row, resumable.

Format (``GEN`` = ``--generations DIR``, default ``OUT/generations``)::

    GEN/<row>/index.jsonl                       # one line per finished pair (fsync'ed, append-only)
    GEN/<row>/<pair folder>/counterfactual_<k>.png   # k = 0 .. samples-1, 8-bit greyscale
    GEN/<row>/<pair folder>/attention.npy       # float32 [P, h, w], one map per attention phrase (optional)

An ``index.jsonl`` line: ``{"pair_id", "folder", "samples", "interpretation", "phrases",
"attention": "attention.npy" | null, "attention_phrases": [phrases of the maps, in stack
order], "seconds", "key"}``. ``<pair folder>`` is the pair id
with ``/`` replaced by ``__``. PNGs are written before the index line, so a line
on disk means a complete generation; a re-run generates only the pairs without a
line. Anything (another model, a baseline) can be evaluated by writing this format.

Generations are keyed by what made them: ``GEN/<row>/generation_key.json`` records the
model identity (content hash of the checkpoint), the sampling settings (samples, seed,
guidance, temperatures...) and the dataset's manifest hash, and every index line carries
that key's fingerprint (``"key"``). A run with another model or other settings is refused
(:class:`~progemu.utils.identity.StaleOutputError`, naming what differs) instead of
reusing generations it did not make; ``overwrite=True`` discards them. A cache written by
hand (no key file) is read as it is when no model is given.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from progemu.utils.atomic import append_jsonl, atomic_save_png, atomic_write_bytes, read_jsonl
from progemu.utils.identity import StaleOutputError, check_same, fingerprint, read_identity, write_identity

__all__ = ["Generation", "GenerationCache", "pair_folder", "generate_missing"]

log = logging.getLogger(__name__)


def pair_folder(pair_id: str) -> str:
    return pair_id.replace("/", "__")


@dataclasses.dataclass
class Generation:
    """One cached generation: counterfactual images ``float32 [H, W]`` in [0, 1] and text."""

    pair_id: str
    counterfactuals: list[np.ndarray]
    interpretation: str | None
    phrases: list[str] = dataclasses.field(default_factory=list)
    attention: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # phrase -> float [h, w]
    seconds: float | None = None


KEY_NAME = "generation_key.json"


class GenerationCache:
    """The cached generations of one row (e.g. ``GEN/progemu``).

    ``key``: what makes this row's generations (model identity, sampling settings, data);
    ``None`` reads whatever is cached (hand-written caches). Call :meth:`claim` before
    generating into a keyed cache.
    """

    def __init__(self, root: str | Path, row: str, key: dict | None = None):
        self.directory = Path(root) / row
        self.index_path = self.directory / "index.jsonl"
        self.key_path = self.directory / KEY_NAME
        self.key = key
        self.key_id = None if key is None else fingerprint(key)

    def claim(self, *, overwrite: bool = False, names: dict | None = None, fresh: str | None = None) -> None:
        """Make this cache hold generations of ``self.key``: refuse (or, with ``overwrite``, discard)
        generations made by another model or with other settings, then record the key."""
        if self.key is None:
            return
        fresh = fresh or "pass --overwrite to discard them and generate again, or choose a new --out / --generations"
        try:
            if check_same(self.key_path, self.key, what=f"{self.directory} (cached generations)", fresh=fresh,
                          names=names):
                return
            if self.index_path.exists() and read_jsonl(self.index_path):
                raise StaleOutputError(f"{self.directory}: cached generations without a record of the model and "
                                       f"settings that made them ({self.key_path.name} missing); {fresh}")
        except StaleOutputError:
            if not overwrite:
                raise
            log.warning("--overwrite: discarding the cached generations in %s", self.directory)
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_identity(self.key_path, self.key)

    def recorded_key(self) -> dict | None:
        """The key recorded on disk (``None`` for a hand-written cache)."""
        return read_identity(self.key_path)

    def records(self) -> dict[str, dict]:
        """pair id -> index record (the last line wins if a pair was written twice); with a key,
        only lines made under that key count."""
        return {record["pair_id"]: record for record in read_jsonl(self.index_path)
                if self.key_id is None or record.get("key") == self.key_id}

    def write(self, generation: Generation) -> None:
        folder = self.directory / pair_folder(generation.pair_id)
        for k, image in enumerate(generation.counterfactuals):
            atomic_save_png(folder / f"counterfactual_{k}.png", np.clip(np.asarray(image, np.float32), 0, 1))
        # attention maps in the order of the phrases that have one (a phrase may have none)
        attention_phrases = [p for p in generation.phrases if p in generation.attention] or \
            [p for p in generation.attention if p not in generation.phrases]
        attention_name = None
        if attention_phrases:
            buffer = io.BytesIO()
            np.save(buffer, np.stack([np.asarray(generation.attention[p], np.float32) for p in attention_phrases]))
            atomic_write_bytes(folder / "attention.npy", buffer.getvalue())
            attention_name = "attention.npy"
        append_jsonl(self.index_path, {
            "pair_id": generation.pair_id, "folder": pair_folder(generation.pair_id),
            "samples": len(generation.counterfactuals), "interpretation": generation.interpretation,
            "phrases": list(generation.phrases), "attention": attention_name,
            "attention_phrases": attention_phrases if attention_name else [], "seconds": generation.seconds,
            "key": self.key_id})

    def read(self, pair_id: str, record: dict | None = None) -> Generation:
        from .images import load_image

        record = record or self.records().get(pair_id)
        if record is None:
            raise KeyError(f"{self.index_path}: no generation for pair {pair_id}")
        folder = self.directory / record["folder"]
        images = []
        for k in range(int(record.get("samples", 1))):
            path = folder / f"counterfactual_{k}.png"
            if not path.exists():
                raise ValueError(f"{path}: listed in {self.index_path} but missing; delete that line to regenerate")
            images.append(load_image(path))
        attention = {}
        if record.get("attention"):
            stack = np.load(folder / record["attention"])
            names = record.get("attention_phrases") or record.get("phrases", [])
            attention = {phrase: stack[i] for i, phrase in enumerate(names) if i < len(stack)}
        return Generation(pair_id=pair_id, counterfactuals=images, interpretation=record.get("interpretation"),
                          phrases=list(record.get("phrases", [])), attention=attention, seconds=record.get("seconds"))


def _as_generation(pair_id: str, result, seconds: float | None) -> Generation:
    """Adapt a ``progemu.generate`` ``GenerationResult`` (architecture contract) to a :class:`Generation`."""
    attention = getattr(result, "attention", None) or {}
    return Generation(pair_id=pair_id, counterfactuals=[np.asarray(c, np.float32) for c in result.counterfactuals],
                      interpretation=getattr(result, "interpretation", None),
                      phrases=list(getattr(result, "phrases", None) or []),
                      attention={k: np.asarray(v, np.float32) for k, v in attention.items()}, seconds=seconds)


def generate_missing(cache: GenerationCache, pairs: Sequence, make_pipeline: Callable[[], object], *,
                     samples: int = 1, seed: int = 0, batch_size: int = 4, progress: bool = True,
                     attention_pairs: int = 0, generate_kwargs: dict | None = None) -> int:
    """Generate (and cache) every pair of ``pairs`` that has no cached generation; returns how many.

    ``make_pipeline()`` is called only when something is missing (loading a model is slow).
    The pipeline's ``generate_batch(priors, prompts, samples=, seed=[...], attention=)`` gets
    priors as ``float32 [H, W]`` arrays in [0, 1] and one seed per request: ``seed + i`` for
    pair ``i`` of ``pairs``, so a resumed run gives every pair the seed it would have had.
    Attention maps (extra cost) are asked for the first ``attention_pairs`` pairs only (the
    ones shown in the report's figures).
    """
    from tqdm import tqdm

    from .images import load_image

    done = cache.records()
    todo = [(i, p) for i, p in enumerate(pairs) if p.pair_id not in done]
    if not todo:
        return 0
    pipeline = make_pipeline()
    bar = tqdm(total=len(todo), desc=f"generate {cache.directory.name}", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        priors = [load_image(p.prior_image) for _, p in batch]
        prompts = [p.prompt for _, p in batch]
        began = time.perf_counter()
        results = pipeline.generate_batch(priors, prompts, samples=samples, seed=[seed + i for i, _ in batch],
                                          attention=any(i < attention_pairs for i, _ in batch),
                                          **(generate_kwargs or {}))
        seconds = (time.perf_counter() - began) / max(len(batch), 1)
        if len(results) != len(batch):
            raise RuntimeError(f"generate_batch returned {len(results)} results for {len(batch)} inputs")
        for (_, pair), result in zip(batch, results):
            cache.write(_as_generation(pair.pair_id, result, seconds))
        bar.update(len(batch))
    bar.close()
    return len(todo)
