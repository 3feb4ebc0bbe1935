"""Fidelity: does the counterfactual show the change the prompt asked for?

For each pair and each finding whose state differs between the prior and the
follow-up study (the change the prompt describes), the counterfactual must move
*in the direction of the true change* relative to the registered prior:

    correct  <=>  sign(m(counterfactual) - m(prior)) == sign(true follow-up - true prior)

and the fidelity of a row is the fraction of such changes that are correct, in
[0, 1] (copy-prior scores 0 by construction: nothing moves). Two measurements m:

- ``classifier``: the evaluators' pathology classifier probability for the CheXpert
  label (works on any dataset; true states are the pair's CheXpert labels, positive
  vs negative, uncertain/missing excluded);
- ``direct`` (synthetic world only, preferred): the synthetic world's own measurement
  of the rendered finding, ``progemu.synth.truth.measure_finding``, inside
  ``finding_regions``, against the hidden true states of ``ground_truth.jsonl``.

A difference of magnitude below ``tolerance`` (0.01: probability, or image brightness in [0, 1])
counts as "no change" (wrong), so noise alone does not score.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["classifier_fidelity", "find_ground_truth", "direct_fidelity", "changed_regions"]

log = logging.getLogger(__name__)


def classifier_fidelity(prior_probs: np.ndarray, counterfactual_probs: np.ndarray, prior_targets: np.ndarray,
                        followup_targets: np.ndarray, tolerance: float = 0.01) -> dict:
    """Classifier-measured fidelity over every (pair, label) whose known label changed.

    All arrays ``[N, L]``: probabilities in [0, 1] (NaN: no output), targets 0/1 (NaN: excluded).
    Returns ``{"score": fraction correct | None, "n": changes counted}``.
    """
    prior_probs, counterfactual_probs = np.asarray(prior_probs, float), np.asarray(counterfactual_probs, float)
    prior_targets, followup_targets = np.asarray(prior_targets, float), np.asarray(followup_targets, float)
    changed = (~np.isnan(prior_targets) & ~np.isnan(followup_targets) & (prior_targets != followup_targets)
               & ~np.isnan(prior_probs) & ~np.isnan(counterfactual_probs))
    if not changed.any():
        return {"score": None, "n": 0}
    moved = counterfactual_probs[changed] - prior_probs[changed]
    wanted = np.sign(followup_targets[changed] - prior_targets[changed])
    correct = (np.abs(moved) >= tolerance) & (np.sign(moved) == wanted)
    return {"score": float(correct.mean()), "n": int(changed.sum())}


def find_ground_truth(data_dir: str | Path, explicit: str | Path | None = None) -> Path | None:
    """``ground_truth.jsonl`` of the synthetic world a curated dataset was made from, or ``None``.

    ``explicit`` (``--ground-truth FILE``) wins; otherwise every path named in
    ``DATA/curate_config.json`` is tried, with its parents (the world directory
    holds ``mimic-cxr-jpg/`` and ``ground_truth.jsonl`` side by side).
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"--ground-truth {path}: file not found")
        return path
    config = Path(data_dir) / "curate_config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; fidelity by direct measurement skipped", config)
        return None

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from strings(item)

    for text in strings(data):
        if "/" not in text and "\\" not in text:
            continue
        for path in (Path(text), Path(data_dir) / text):  # absolute, or relative to the dataset
            for folder in (path, *list(path.parents)[:3]):
                candidate = folder / "ground_truth.jsonl"
                if candidate.is_file():
                    return candidate
    return None


def _normalised(studies: dict) -> dict:
    """The ground truth re-keyed by :func:`progemu.utils.ids.study_key` (one spelling of every id)."""
    from progemu.utils.ids import study_key

    return {study_key(truth.subject_id, truth.study_id): truth for truth in studies.values()}


def _study(studies: dict, subject: str, study_id: str, order: int):
    """A pair's study in the (normalised) ground truth: MIMIC by (subject, study id); CheXpert Plus
    studies are numbered by their order, so (patient, order) is tried next."""
    from progemu.utils.ids import study_key

    for key in (study_key(subject, study_id), study_key(subject, order)):
        if key in studies:
            return studies[key]
    return None


def direct_fidelity(pairs: Sequence, counterfactuals: Sequence[np.ndarray], ground_truth: str | Path,
                    tolerance: float = 0.01, unchanged_tolerance: float = 0.02) -> dict:
    """Fidelity measured on the rendered findings of the synthetic world (see the module docstring).

    ``counterfactuals[i]``: ``float32 [H, W]`` in [0, 1], in the frame of ``pairs[i]``'s follow-up
    (registered priors are). The measurement is ``progemu.synth.truth.measure_finding`` (a
    brightness difference, image units) with the follow-up study's pose and the prior study
    as reference for locating findings absent at follow-up; ``tolerance`` is in the same
    units (0.01 = 2.5 grey levels). Because direction alone rewards an image that brightens
    everything, ``unchanged_stable`` reports the other side: the fraction of findings whose
    true state did NOT change that moved by less than ``unchanged_tolerance`` (the oracle's
    value shows the natural variation between two real studies). Returns ``{"score", "n",
    "unchanged_stable", "n_unchanged", "pairs_matched", "per_finding": {key: {"score", "n"}}}``;
    raises ``ImportError`` when ``progemu.synth.truth`` is absent.
    """
    from progemu.synth import truth as synth_truth

    from .images import load_image, resize

    studies = _normalised(synth_truth.load_ground_truth(Path(ground_truth).parent))
    per_key: dict[str, list[bool]] = {}
    stable: list[bool] = []
    matched = 0
    for pair, counterfactual in zip(pairs, counterfactuals):
        prior_truth = _study(studies, pair.subject_id, pair.prior_study_id, pair.prior_order)
        followup_truth = _study(studies, pair.subject_id, pair.followup_study_id, pair.followup_order)
        if prior_truth is None or followup_truth is None:
            continue
        matched += 1
        prior_image = load_image(pair.prior_image)
        counterfactual = resize(np.asarray(counterfactual, np.float32), prior_image.shape[0])
        for key, finding in followup_truth.state.findings.items():
            before, after = prior_truth.state[key].severity, finding.severity
            try:
                m_prior = synth_truth.measure_finding(prior_image, followup_truth, key, reference=prior_truth)
                m_counterfactual = synth_truth.measure_finding(counterfactual, followup_truth, key, reference=prior_truth)
            except ValueError as error:  # region outside the image: not measurable, not counted
                log.debug("pair %s, %s: %s", pair.pair_id, key, error)
                continue
            moved = m_counterfactual - m_prior
            if before == after:
                stable.append(abs(moved) < unchanged_tolerance)
                continue
            per_key.setdefault(key, []).append(bool(abs(moved) >= tolerance and np.sign(moved) == np.sign(after - before)))
    if pairs and not matched:
        log.warning("%s: none of the %d pairs' studies are in the ground truth; direct fidelity not measured",
                    ground_truth, len(pairs))
    elif matched < len(pairs):
        log.warning("%s: %d of %d pairs' studies are not in the ground truth; direct fidelity covers %d pairs",
                    ground_truth, len(pairs) - matched, len(pairs), matched)
    flat = [ok for values in per_key.values() for ok in values]
    return {"score": float(np.mean(flat)) if flat else None, "n": len(flat),
            "unchanged_stable": float(np.mean(stable)) if stable else None, "n_unchanged": len(stable),
            "pairs_matched": matched, "pairs_total": len(pairs),
            "per_finding": {k: {"score": float(np.mean(v)), "n": len(v)} for k, v in sorted(per_key.items())}}


def changed_regions(pairs: Sequence, ground_truth: str | Path) -> list[tuple[float, float, float, float] | None]:
    """Per pair, the normalised box ``(x0, y0, x1, y1)`` of the first finding whose true state changed
    (``progemu.synth.truth.finding_regions``, follow-up frame), or ``None``; for the figures' zoom."""
    from progemu.synth import truth as synth_truth

    studies = _normalised(synth_truth.load_ground_truth(Path(ground_truth).parent))
    boxes = []
    for pair in pairs:
        prior = _study(studies, pair.subject_id, pair.prior_study_id, pair.prior_order)
        followup = _study(studies, pair.subject_id, pair.followup_study_id, pair.followup_order)
        box = None
        if prior is not None and followup is not None:
            changed = [k for k, f in followup.state.findings.items() if f.severity != prior.state[k].severity]
            if changed:
                box = synth_truth.finding_regions(followup, prior)[changed[0]]
        boxes.append(box)
    return boxes
