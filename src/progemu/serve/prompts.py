"""Composing a hypothesis (prompt) from finding x side x change, for users who prefer choices to typing.

The sentences follow the ICG-CXR prompt style ("Mild pleural effusion has developed in the left
lower lung."): one finding, its side, and its change since the prior.
"""
from __future__ import annotations

__all__ = ["FINDINGS", "SIDES", "CHANGES", "UNLATERALISED", "compose_prompt"]

#: findings offered in the composer: CheXpert findings that can progress between two studies, the
#: synthetic world's vocabulary (progemu.synth.findings) first
FINDINGS: tuple[str, ...] = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "atelectasis",
    "lung lesion",
    "pneumonia",
    "pulmonary edema",
    "cardiomegaly",
)
#: findings that have no side (the side choice is ignored for them)
UNLATERALISED: frozenset[str] = frozenset({"pulmonary edema", "cardiomegaly"})
SIDES: tuple[str, ...] = ("left", "right", "bilateral", "unspecified")
CHANGES: tuple[str, ...] = ("new", "increased", "decreased", "resolved")


def compose_prompt(finding: str, side: str, change: str) -> str:
    """One hypothesis sentence, e.g. ``compose_prompt("pleural effusion", "left", "new")`` ->
    ``"New left pleural effusion has developed."``.

    Raises ``ValueError`` naming the allowed values if a choice is unknown.
    """
    for value, allowed, what in ((finding, FINDINGS, "finding"), (side, SIDES, "side"), (change, CHANGES, "change")):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    subject = finding if (side == "unspecified" or finding in UNLATERALISED) else f"{side} {finding}"
    if change == "new":
        return f"New {subject} has developed."
    return f"The {subject} has {change}."
