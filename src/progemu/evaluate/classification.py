"""AUROC and F1 of the pathology classifier on counterfactuals vs the follow-up study's labels.

Definition used throughout progemu (the paper does not spell it out):

- targets are the follow-up study's CheXpert labels: 1.0 positive, 0.0 negative;
  uncertain (-1.0) and missing (``None`` / NaN / -100) are **excluded** per label;
- per label, AUROC (``torchmetrics`` ``binary_auroc``) and F1 of the positive class
  at ``threshold`` (``binary_f1_score``; 0.5, the operating point of the calibrated
  torchxrayvision "all" outputs and of a sigmoid classifier);
- a label whose kept targets hold only one class has no AUROC and is **skipped**
  (for F1 too, so both averages run over the same labels);
- ``AUROC`` / ``F1`` are the unweighted (macro) means over the labels left.

:func:`pooled_scores` is the micro variant (all kept (pair, label) entries in one
binary problem); the "changed findings" numbers use it because, per label, the
few pairs whose label changed rarely hold both classes. :func:`averaged_scores`
gives all three averagings (``AVERAGES``), as scikit-learn names them: macro
(unweighted mean over the labels left), micro (pooled entries, every label) and
weighted (mean over the labels left, weighted by their positives). The paper does
not say which it used; Table 1's columns are macro and the table names it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["label_matrix", "per_label_scores", "macro_scores", "pooled_scores", "weighted_scores", "averaged_scores",
           "AVERAGES"]

AVERAGES = ("macro", "micro", "weighted")


def label_matrix(label_dicts: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    """``float64 [N, L]`` targets from per-pair label dicts; NaN for missing/uncertain/-100."""
    out = np.full((len(label_dicts), len(names)), np.nan)
    for i, labels in enumerate(label_dicts):
        for j, name in enumerate(names):
            value = (labels or {}).get(name)
            if value is None:
                continue
            value = float(value)
            if value in (0.0, 1.0):
                out[i, j] = value
    return out


def _binary(scores: np.ndarray, targets: np.ndarray, threshold: float) -> tuple[float, float]:
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_f1_score

    preds = torch.as_tensor(scores, dtype=torch.float32)
    target = torch.as_tensor(targets, dtype=torch.long)
    auroc = float(binary_auroc(preds, target))
    f1 = float(binary_f1_score(preds, target, threshold=threshold))
    return auroc, f1


def per_label_scores(scores: np.ndarray, targets: np.ndarray, names: Sequence[str],
                     threshold: float = 0.5) -> dict[str, dict]:
    """``{label: {"AUROC", "F1", "n", "positives"}}``; AUROC/F1 are ``None`` for a skipped label.

    ``scores``: ``[N, L]`` probabilities in [0, 1]; ``targets``: ``[N, L]`` from :func:`label_matrix`.
    """
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets, np.float64)
    if scores.shape != targets.shape or scores.shape[1] != len(names):
        raise ValueError(f"scores {scores.shape}, targets {targets.shape} and {len(names)} label names disagree")
    result: dict[str, dict] = {}
    for j, name in enumerate(names):
        keep = ~np.isnan(targets[:, j]) & ~np.isnan(scores[:, j])
        kept_targets = targets[keep, j]
        positives = int(kept_targets.sum())
        entry = {"AUROC": None, "F1": None, "n": int(keep.sum()), "positives": positives}
        if 0 < positives < keep.sum():
            entry["AUROC"], entry["F1"] = _binary(scores[keep, j], kept_targets, threshold)
        result[name] = entry
    return result


def macro_scores(per_label: dict[str, dict]) -> dict[str, float | None]:
    """Macro means ``{"AUROC", "F1", "labels"}`` over the labels that were not skipped."""
    kept = [entry for entry in per_label.values() if entry["AUROC"] is not None]
    if not kept:
        return {"AUROC": None, "F1": None, "labels": 0}
    return {"AUROC": float(np.mean([e["AUROC"] for e in kept])),
            "F1": float(np.mean([e["F1"] for e in kept])), "labels": len(kept)}


def weighted_scores(per_label: dict[str, dict]) -> dict[str, float | None]:
    """Means ``{"AUROC", "F1", "labels"}`` over the labels that were not skipped, weighted by their positives."""
    kept = [entry for entry in per_label.values() if entry["AUROC"] is not None]
    if not kept:
        return {"AUROC": None, "F1": None, "labels": 0}
    weights = np.array([e["positives"] for e in kept], np.float64)
    return {"AUROC": float(np.average([e["AUROC"] for e in kept], weights=weights)),
            "F1": float(np.average([e["F1"] for e in kept], weights=weights)), "labels": len(kept)}


def averaged_scores(scores: np.ndarray, targets: np.ndarray, names: Sequence[str], threshold: float = 0.5,
                    per_label: dict[str, dict] | None = None) -> dict:
    """``{"macro", "micro", "weighted": {"AUROC", "F1", ...}, "threshold"}`` for ``[N, L]`` scores and targets."""
    per_label = per_label if per_label is not None else per_label_scores(scores, targets, names, threshold)
    micro = pooled_scores(scores, targets, threshold=threshold)
    return {"macro": macro_scores(per_label), "micro": {"AUROC": micro["AUROC"], "F1": micro["F1"], "entries": micro["n"]},
            "weighted": weighted_scores(per_label), "threshold": threshold}


def pooled_scores(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                  threshold: float = 0.5) -> dict[str, float | int | None]:
    """Micro AUROC/F1 over every kept (pair, label) entry, optionally restricted by ``mask`` ``[N, L]``."""
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets, np.float64)
    keep = ~np.isnan(targets) & ~np.isnan(scores)
    if mask is not None:
        keep &= np.asarray(mask, bool)
    kept_targets = targets[keep]
    entry: dict[str, float | int | None] = {"AUROC": None, "F1": None, "n": int(keep.sum())}
    if 0 < kept_targets.sum() < kept_targets.size:
        entry["AUROC"], entry["F1"] = _binary(scores[keep], kept_targets, threshold)
    return entry


def finite_or_none(value) -> float | None:
    """JSON-safe float: ``None`` for None / NaN / inf."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
