"""One normalisation of patient and study identifiers across datasets and stages.

The same study is spelled differently along the pipeline: MIMIC-CXR writes subject
``10000032`` as ``p10000032`` in paths and study ``50414267`` as ``s50414267``;
CheXpert Plus names patient ``patient00003`` (``deid_patient_id``) while the curated
pair keeps the folder number ``00003``, and its study ``study2`` / order ``2`` becomes
``0002``. :func:`study_key` maps every spelling to one key, so the synthetic world's
ground truth (written with the datasets' own ids) and curated pairs meet.
"""
from __future__ import annotations

import re

__all__ = ["subject_key", "study_number", "study_key"]

_SUBJECT = re.compile(r"^(?:patient|pat|p)?0*(\d+)$", re.IGNORECASE)
_STUDY = re.compile(r"^(?:study|s)?0*(\d+)$", re.IGNORECASE)


def subject_key(subject_id: object) -> str:
    """``"p10000032"`` / ``"10000032"`` -> ``"10000032"``; ``"patient00003"`` / ``"00003"`` -> ``"3"``.
    Identifiers that are not a (prefixed) number are returned stripped, unchanged."""
    text = str(subject_id).strip()
    match = _SUBJECT.match(text)
    return str(int(match.group(1))) if match else text


def study_number(study_id: object) -> str:
    """``"s50414267"`` -> ``"50414267"``; ``"study2"`` / ``"0002"`` / ``2`` -> ``"2"``."""
    text = str(study_id).strip()
    match = _STUDY.match(text)
    return str(int(match.group(1))) if match else text


def study_key(subject_id: object, study_id: object) -> tuple[str, str]:
    """The one key of a study: ``(subject_key(subject), study_number(study))``."""
    return subject_key(subject_id), study_number(study_id)
