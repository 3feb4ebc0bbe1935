"""The annotation interface of ``progemu curate``: two reports in, prompt + interpretation out.

The paper's GPT-4 step compares the *impressions* of a prior and a follow-up report to
summarise the disease progression (the **prompt**, ICG-CXR key ``progression-description``)
and the *findings* to describe the visual change (the **interpretation**, key
``changes-of-findings``), and rates its confidence 1..5 by the clarity and completeness of
the reports (key ``comment: {confidence, reason}``).

Two annotators implement :class:`Annotator`:

- ``"rules"`` (:mod:`progemu.curate.annotate_rules`): offline, deterministic mention parser;
- ``"llm"`` (:mod:`progemu.curate.annotate_llm`): any OpenAI-compatible endpoint.

Usage (the curation pipeline calls ``annotate`` from a thread pool; both are thread-safe)::

    annotator = make_annotator("rules")
    ann = annotator.annotate(ReportText(f0, i0), ReportText(f1, i1), record_id="p10/s1-s2")
    pair_json["progression-description"] = ann.prompt
    pair_json["changes-of-findings"] = ann.interpretation
    pair_json["comment"] = ann.to_comment()
    card["annotator"] = f"{annotator.name} {annotator.version}"

This module imports nothing heavy; the annotator modules are imported by
:func:`make_annotator` only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ReportText",
    "Annotation",
    "AnnotationError",
    "Annotator",
    "ANNOTATOR_KINDS",
    "make_annotator",
    "report_pair_hash",
]

#: the values ``make_annotator(kind=...)`` accepts
ANNOTATOR_KINDS = ("rules", "llm")
MIN_CONFIDENCE, MAX_CONFIDENCE = 1, 5


class AnnotationError(Exception):
    """An annotator could not produce a valid annotation for a record.

    The message names the record and says why (the curation pipeline records it as the
    skip reason). Never contains report text.
    """


@dataclasses.dataclass(frozen=True)
class ReportText:
    """The two sections of one radiology report that annotation uses (plain text, may be "")."""

    findings: str
    impression: str

    def __post_init__(self) -> None:
        for name in ("findings", "impression"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, "")
            elif not isinstance(value, str):
                raise TypeError(f"ReportText.{name} must be str, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One annotated pair.

    ``prompt``: progression summary (one or a few short sentences, e.g. "New small left
    pleural effusion."); ``interpretation``: the visual change between prior and follow-up
    images; ``confidence``: int in 1..5 (5 = reports clear and complete); ``reason``: why.
    """

    prompt: str
    interpretation: str
    confidence: int
    reason: str

    def __post_init__(self) -> None:
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, int):
            raise ValueError(f"Annotation.confidence must be an int in 1..5, got {self.confidence!r}")
        if not MIN_CONFIDENCE <= self.confidence <= MAX_CONFIDENCE:
            raise ValueError(f"Annotation.confidence must be in 1..5, got {self.confidence}")
        for name in ("prompt", "interpretation", "reason"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"Annotation.{name} must be str")

    def to_comment(self) -> dict[str, Any]:
        """The official ICG-CXR ``comment`` value: ``{"confidence": int, "reason": str}``."""
        return {"confidence": self.confidence, "reason": self.reason}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Annotation":
        return cls(
            prompt=data["prompt"],
            interpretation=data["interpretation"],
            confidence=int(data["confidence"]),
            reason=data["reason"],
        )


@runtime_checkable
class Annotator(Protocol):
    """What the curation pipeline needs from an annotator.

    ``name`` and ``version`` are recorded in the dataset card (a change of instructions or
    rules bumps ``version``). ``annotate`` is thread-safe and raises :class:`AnnotationError`
    (naming ``record_id``) when it cannot annotate the pair.
    """

    name: str
    version: str

    def annotate(self, prior: ReportText, followup: ReportText, record_id: str) -> Annotation: ...


def report_pair_hash(prior: ReportText, followup: ReportText) -> str:
    """SHA-256 hex digest of the four texts of a report pair (order-sensitive, unambiguous)."""
    payload = json.dumps(
        [prior.findings, prior.impression, followup.findings, followup.impression], ensure_ascii=False
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def make_annotator(kind: str, **options: Any) -> Annotator:
    """Build an annotator.

    ``kind="rules"``: no options needed (see :class:`progemu.curate.annotate_rules.RulesAnnotator`).
    ``kind="llm"``: ``base_url``, ``model``, ``api_key_env`` (default ``OPENAI_API_KEY``),
    ``api_version`` (Azure OpenAI when given), ``concurrency``, ``allow_public_api_with_dua``,
    ``cache_dir``, ``credentialed``, ``timeout_s``, ``max_retries`` (see
    :class:`progemu.curate.annotate_llm.LLMConfig`).
    """
    if kind == "rules":
        from progemu.curate.annotate_rules import RulesAnnotator

        return RulesAnnotator(**options)
    if kind == "llm":
        from progemu.curate.annotate_llm import LLMAnnotator, LLMConfig

        known = {field.name for field in dataclasses.fields(LLMConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"make_annotator('llm'): unknown options {unknown}; known: {sorted(known)}")
        return LLMAnnotator(LLMConfig(**options))
    raise ValueError(f"unknown annotator kind {kind!r}; choose one of {list(ANNOTATOR_KINDS)}")
