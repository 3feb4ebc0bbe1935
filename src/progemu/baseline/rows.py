"""Baselines and external methods as rows of ``progemu evaluate``.

- :func:`baseline_row` (``progemu evaluate --baseline NAME=DIR``): generates a trained baseline's
  counterfactuals for the evaluated pairs into the evaluation's generation cache (the format of
  ``progemu.evaluate.generations``, keyed by the model's content hash, the sampling settings, the
  seed and the masks, so a re-run generates only what is missing and a changed model is refused).
  A PIE baseline edits inside a region mask: on the synthetic world the region of the findings whose
  true state changes comes from the ground truth (``ground_truth.jsonl``), and the row's name then
  says ``(oracle mask)``.
- :func:`read_external` (``progemu evaluate --generations NAME=DIR``): scores any method's outputs
  written in this folder format, so CXR-IRGen or a user's own method sits in the same table::

      DIR/<pair folder>.png    the counterfactual of one pair (8/16-bit greyscale or RGB PNG, any size)
      DIR/<pair folder>.txt    its interpretation (optional; UTF-8)

  ``<pair folder>`` is the pair id with ``/`` replaced by ``__`` (e.g.
  ``mimic_cxr__p10000032__i01s50414267-i02s53189527``). Every evaluated pair needs a PNG (a missing
  one is named); interpretations are scored only when every pair has one (none: the text metrics
  show '–', as for the image-only methods of the paper's Table 1).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["baseline_row", "read_external", "check_external", "oracle_masks", "row_name", "parse_named_dirs"]

log = logging.getLogger(__name__)


def parse_named_dirs(values: Sequence[str], flag: str) -> dict[str, str]:
    """``["NAME=DIR", ...]`` -> ``{NAME: DIR}``; raises ``ValueError`` naming ``flag`` on a malformed or repeated name."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        name = name.strip()
        if not sep or not name or not directory or "/" in name:
            raise ValueError(f"{flag} {value!r}: expected NAME=DIR (a row name without '/', then its folder)")
        if name in named:
            raise ValueError(f"{flag}: the row name {name!r} is given twice")
        named[name] = directory
    return named


def row_name(name: str, method: str, masks: str) -> str:
    """The table's name of a baseline row: a PIE row edited inside ground-truth regions says so."""
    if method == "pie" and masks == "ground truth" and "oracle" not in name.lower():
        return f"{name} (oracle mask)"
    if method == "pie" and masks == "none" and "mask" not in name.lower():
        return f"{name} (no mask)"
    return name


def oracle_masks(pairs: Sequence, ground_truth: str | Path, size: int) -> list[np.ndarray | None]:
    """Per pair, ``float32 [size, size]`` in {0, 1}: the union of the boxes (follow-up frame) of every
    finding whose true severity changes between prior and follow-up; ``None`` for a pair whose studies
    are not in the ground truth; an all-zero mask when nothing changes."""
    from progemu.evaluate.fidelity import _normalised, _study
    from progemu.synth import truth as synth_truth

    studies = _normalised(synth_truth.load_ground_truth(Path(ground_truth).parent))
    centres = (np.arange(size) + 0.5) / size
    xs, ys = np.meshgrid(centres, centres)
    masks: list[np.ndarray | None] = []
    for pair in pairs:
        prior = _study(studies, pair.subject_id, pair.prior_study_id, pair.prior_order)
        followup = _study(studies, pair.subject_id, pair.followup_study_id, pair.followup_order)
        if prior is None or followup is None:
            masks.append(None)
            continue
        mask = np.zeros((size, size), np.float32)
        boxes = synth_truth.finding_regions(followup, prior)
        for key, finding in followup.state.findings.items():
            if finding.severity != prior.state[key].severity:
                x0, y0, x1, y1 = boxes[key]
                mask[(xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)] = 1.0
        masks.append(mask)
    return masks


def baseline_row(name: str, model_dir: str | Path, pairs: Sequence, cache_root: str | Path, *, data: str,
                 ground_truth: str | Path | None, seed: int = 0, samples: int = 1, batch_size: int = 8,
                 overwrite: bool = False, progress: bool = True, device: str | None = None,
                 settings: dict | None = None) -> tuple[str, dict, dict]:
    """Generate (or read cached) counterfactuals of one trained baseline for ``pairs``.

    Returns ``(row name, {pair_id: Generation}, generation key)``; pair ``i`` uses seed ``seed + i``.
    """
    import json
    import time

    from tqdm.auto import tqdm

    from progemu.evaluate.generations import Generation, GenerationCache
    from progemu.evaluate.images import load_image
    from progemu.utils.identity import checkpoint_identity, dataset_identity

    from .model import BASELINE_META, is_baseline

    model_dir = Path(model_dir)
    if not is_baseline(model_dir):
        raise FileNotFoundError(f"--baseline {name}={model_dir}: not a trained baseline ({BASELINE_META} missing); "
                                "train one with `progemu baseline train`")
    method = json.loads((model_dir / BASELINE_META).read_text(encoding="utf-8"))["method"]
    masks_from = "ground truth" if method == "pie" and ground_truth is not None else "none"
    row = row_name(name, method, masks_from)
    key = {"models": {"baseline": checkpoint_identity(model_dir)}, "method": method, "samples": samples, "seed": seed,
           "generate_kwargs": dict(sorted((settings or {}).items())), "masks": masks_from, "data": dataset_identity(data)}
    cache = GenerationCache(cache_root, row, key=key)
    cache.claim(overwrite=overwrite, names={"models.baseline": f"--baseline {name}", "seed": "--seed",
                                            "samples": "--samples", "data": "--data (its manifest.jsonl)"})
    done = cache.records()
    todo = [(i, p) for i, p in enumerate(pairs) if p.pair_id not in done]
    if todo:
        from .sample import BaselinePipeline

        pipeline = BaselinePipeline.from_pretrained(model_dir, device=device)
        bar = tqdm(total=len(todo), desc=f"generate {row}", disable=not progress)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            priors = [load_image(p.prior_image) for _, p in batch]
            masks = None
            if method == "pie" and ground_truth is not None:
                masks = oracle_masks([p for _, p in batch], ground_truth, priors[0].shape[0])
            began = time.perf_counter()
            results = pipeline.generate_batch(priors, [p.prompt for _, p in batch], samples=samples,
                                              seed=[seed + i for i, _ in batch], masks=masks, **(settings or {}))
            seconds = (time.perf_counter() - began) / len(batch)
            for (_, pair), result in zip(batch, results):
                cache.write(Generation(pair_id=pair.pair_id, counterfactuals=result.counterfactuals,
                                       interpretation=None, seconds=seconds))
            bar.update(len(batch))
        bar.close()
    records = cache.records()
    return row, {p.pair_id: cache.read(p.pair_id, records[p.pair_id]) for p in pairs}, cache.recorded_key()


def check_external(name: str, folder: str | Path, pairs: Sequence) -> None:
    """Raise ``FileNotFoundError`` naming the folder and the first pair without a counterfactual PNG."""
    from progemu.evaluate.generations import pair_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--generations {name}={folder}: folder not found")
    missing = [p.pair_id for p in pairs if not (folder / f"{pair_folder(p.pair_id)}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"--generations {name}={folder}: {len(missing)} of {len(pairs)} pairs have no "
                                f"counterfactual, first: pair {missing[0]} (expected {folder / (pair_folder(missing[0]) + '.png')})")


def read_external(name: str, folder: str | Path, pairs: Sequence) -> tuple[list[np.ndarray], list[str] | None]:
    """One external method's counterfactuals (``float32 [H, W]``) and interpretations (or ``None``) for
    ``pairs``, from the folder format of the module docstring."""
    from progemu.evaluate.generations import pair_folder
    from progemu.evaluate.images import load_image

    check_external(name, folder, pairs)
    folder = Path(folder)
    images = [load_image(folder / f"{pair_folder(p.pair_id)}.png") for p in pairs]
    texts = [folder / f"{pair_folder(p.pair_id)}.txt" for p in pairs]
    present = [t.is_file() for t in texts]
    if not any(present):
        return images, None
    if not all(present):
        first = pairs[present.index(False)].pair_id
        log.warning("--generations %s=%s: %d of %d pairs have no interpretation (first: %s); text metrics left out",
                    name, folder, present.count(False), len(pairs), first)
        return images, None
    return images, [t.read_text(encoding="utf-8").strip() for t in texts]
